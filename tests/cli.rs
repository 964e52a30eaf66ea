//! The binary's command line: configuration mistakes are refused with a message that says
//! what to change, and a taken address is an error, not a hang.

mod common;

#[test]
fn bad_limits_are_refused_naming_the_limit() {
    let base = ["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--shards", "1"];
    for (flag, value, name) in [
        ("--outbox-bytes-max", "1000", "outbox_bytes_max"),
        ("--recv-buffers", "100", "recv_buffers"),
        ("--ping-interval-ms", "0", "ping_interval_ms"),
        ("--head-bytes-max", "10", "head_bytes_max"),
        ("--idle-timeout-ms", "3000000000", "idle_timeout_ms"),
    ] {
        let mut args = base.to_vec();
        args.extend([flag, value]);
        let (code, err) = common::run_to_exit(&args);
        assert_eq!(code, 1, "{flag} {value}: {err}");
        assert!(err.contains(name), "{flag} {value}: message should name {name}: {err}");
    }
}

#[test]
fn an_address_in_use_is_an_error() {
    // A plain listener (no SO_REUSEPORT) holds a port the server then cannot bind.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap().to_string();
    let (code, err) = common::run_to_exit(&["serve", "--listen", &held, "--admin", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&held), "the message names the address: {err}");
}

#[test]
fn exposed_listeners_need_an_explicit_auth_choice() {
    let (code, err) =
        common::run_to_exit(&["serve", "--listen", "0.0.0.0:0", "--admin", "127.0.0.1:0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--auth jwt") && err.contains("--auth none"), "{err}");
    let (code, err) =
        common::run_to_exit(&["serve", "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--admin-key-file"), "{err}");
    let (code, err) = common::run_to_exit(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--auth",
        "jwt",
        "--jwt-key",
        "/nonexistent/key",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read --jwt-key"), "{err}");
}
