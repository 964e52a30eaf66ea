//! Unit tests of [`super`]: defaults, validation messages, flag and file merging.
use super::*;

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn outbox_smaller_than_message_is_rejected_with_advice() {
    let mut cfg = Config::default();
    cfg.limits.outbox_bytes_max = 1000;
    let e = cfg.validate().unwrap_err();
    assert!(e.0.contains("outbox_bytes_max"), "{e}");
}

#[test]
fn a_mesh_spin_of_milliseconds_is_rejected_with_advice() {
    let mut cfg = Config::default();
    cfg.limits.mesh_spin_us = 1000;
    cfg.validate().unwrap();
    cfg.limits.mesh_spin_us = 5000;
    let e = cfg.validate().unwrap_err();
    assert!(e.0.contains("mesh_spin_us = 5000") && e.0.contains("microseconds"), "{e}");
}

#[test]
fn history_topics_are_prefix_count_pairs_longest_first() {
    let mut cfg = Config {
        history_topics: vec!["a=1".into(), "abc.=0".into(), "x=y=2".into()],
        ..Config::default()
    };
    let limits = cfg.history_topic_limits().unwrap();
    assert_eq!(limits[0], ("abc.".to_owned(), 0));
    assert!(limits.contains(&("x=y".to_owned(), 2)));
    for bad in ["nocount", "=3", "a=-1", "a=lots"] {
        cfg.history_topics = vec![bad.into()];
        let e = cfg.validate().unwrap_err();
        assert!(e.0.contains("history_topics") && e.0.contains("PREFIX=COUNT"), "{e}");
    }
}

#[test]
fn exposed_listeners_need_an_explicit_auth_choice() {
    let mut cfg = Config { listen: vec!["0.0.0.0:8080".parse().unwrap()], ..Config::default() };
    assert!(cfg.validate().unwrap_err().0.contains("--auth"));
    cfg.auth = Some("none".into());
    cfg.validate().unwrap();
    cfg.admin = vec!["10.0.0.1:8081".parse().unwrap()];
    assert!(cfg.validate().unwrap_err().0.contains("--admin-key-file"));
    cfg.admin_key_file = Some("/k".into());
    cfg.validate().unwrap();
    cfg.auth = Some("jwt".into());
    assert!(cfg.validate().unwrap_err().0.contains("--jwt-key"));
}

#[test]
fn toml_overrides_and_rejects_unknown_keys() {
    let cfg: Config = toml::from_str(
        "shards = 2\nlisten = [\"127.0.0.1:9000\"]\n[limits]\nping_interval_ms = 5000\n",
    )
    .unwrap();
    assert_eq!(cfg.shards, 2);
    assert_eq!(cfg.limits.ping_interval_ms, 5000);
    assert_eq!(cfg.limits.pong_timeout_ms, Limits::default().pong_timeout_ms);
    assert!(toml::from_str::<Config>("shardz = 2").is_err());
    let tls: Config = toml::from_str("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"").unwrap();
    assert_eq!(tls.tls_cert.as_deref(), Some(std::path::Path::new("c.pem")));
    assert!(tls.validate().is_ok());
    let half: Config = toml::from_str("tls_cert = \"c.pem\"").unwrap();
    assert!(half.validate().unwrap_err().0.contains("--tls-key"));
}

/// The example file in the repository root states exactly the embedded defaults.
#[test]
fn example_file_is_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("c10m.example.toml");
    assert_eq!(Config::from_file(&path).unwrap(), Config::default());
}

#[test]
fn cluster_flags_go_together() {
    let args = ServeArgs { node_id: Some("n1".into()), ..Default::default() };
    let e = args.resolve().unwrap_err().0;
    assert!(e.contains("--registry") && e.contains("--bus"), "{e}");
    let args = ServeArgs {
        node_id: Some("n1".into()),
        registry: Some("redis://127.0.0.1:6379".into()),
        bus: Some("nats://127.0.0.1:4222".into()),
        ..Default::default()
    };
    assert!(args.resolve().unwrap().cluster.enabled());
    let bad = ServeArgs { node_id: Some("a.b".into()), ..args };
    assert!(bad.resolve().unwrap_err().0.contains("node_id"));
}

#[test]
fn flags_override_file_defaults() {
    let args = ServeArgs { shards: Some(3), ping_interval_ms: Some(1000), ..Default::default() };
    let cfg = args.resolve().unwrap();
    assert_eq!(cfg.shards, 3);
    assert_eq!(cfg.limits.ping_interval_ms, 1000);
}
