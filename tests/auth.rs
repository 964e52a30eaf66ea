//! Authentication against the real server: JWT on the client listener (valid, expired,
//! wrongly signed, topic-forbidden, expiring while connected, PEM keys), allowed origins
//! with CORS for SSE, and the admin API's bearer key.

mod common;

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::time::Duration;

use common::{read_response, wait_until, Server};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";

fn now_s() -> u64 {
    c10m::auth::unix_now_s()
}

/// A file under the target directory, unique to this test process.
fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("c10m-auth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn hs256(claims: serde_json::Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

fn jwt_server(extra: &[&str]) -> Server {
    let key = temp_file("hs256.key", &format!("{SECRET}\n"));
    let mut args = vec!["--auth", "jwt", "--jwt-key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Sends a raw request to the client listener and reads the response head (an SSE stream
/// has no length, so its body is not read).
fn status_of(server: &Server, raw: String) -> Head {
    let mut s = server.client_tcp();
    s.write_all(raw.as_bytes()).unwrap();
    let (status, headers) = common::read_head(&mut BufReader::new(s)).expect("a response head");
    Head { status, headers }
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[test]
fn a_valid_token_connects_and_receives_as_its_subject() {
    let server = jwt_server(&[]);
    let token = hs256(serde_json::json!({"sub": "alice", "exp": now_s() + 600}));
    let mut ws = server.ws_connect(&format!("/ws?token={token}"));
    server.wait_connections(1);
    // The user is the token's subject, not anything the client claims.
    let (status, _) = server.publish("user=alice", "for alice");
    assert_eq!(status, 202);
    assert_eq!(common::ws_text(&mut ws), "for alice");
    // The same token in the Authorization header opens an SSE stream.
    let r = status_of(
        &server,
        format!("GET /sse HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
    // And in a cookie.
    let r = status_of(
        &server,
        format!("GET /sse HTTP/1.1\r\nHost: h\r\nCookie: a=b; token={token}\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn missing_expired_and_wrongly_signed_tokens_get_401() {
    let server = jwt_server(&[]);
    let expired = hs256(serde_json::json!({"sub": "alice", "exp": now_s() - 10}));
    let wrong_key = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes");
    let claims = serde_json::json!({"sub": "alice", "exp": now_s() + 600});
    let forged = encode(&Header::new(Algorithm::HS256), &claims, &wrong_key).unwrap();
    for (what, query) in [
        ("missing", String::new()),
        ("expired", format!("token={expired}")),
        ("wrongly signed", format!("token={forged}")),
        ("garbage", "token=abc.def.ghi".to_owned()),
    ] {
        let r = status_of(&server, format!("GET /sse?{query} HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert_eq!(r.status, 401, "{what} token");
        assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"), "{what} token");
        assert!(server.try_ws_connect(&format!("/ws?{query}")).is_err(), "{what} token on /ws");
    }
    assert!(server.wait_metric("c10m_auth_refused_total", &[], 8.0) >= 8.0);
}

#[test]
fn topics_outside_the_claim_are_forbidden() {
    let server = jwt_server(&[]);
    let claims =
        serde_json::json!({"sub": "bob", "exp": now_s() + 600, "topics": ["news", "px.*"]});
    let token = hs256(claims);
    let r = status_of(
        &server,
        format!("GET /sse?token={token}&topics=news,sports HTTP/1.1\r\nHost: h\r\n\r\n"),
    );
    assert_eq!(r.status, 403, "sports is not in the claim");
    let r =
        status_of(&server, format!("GET /sse?token={token}&user=eve HTTP/1.1\r\nHost: h\r\n\r\n"));
    assert_eq!(r.status, 403, "a user other than the token's subject");
    let mut ws = server.ws_connect(&format!("/ws?token={token}&topics=news,px.eur"));
    let denied = common::ws_control(&mut ws, serde_json::json!({"subscribe": "sports"}));
    assert!(denied.get("error").is_some(), "{denied}");
    let granted = common::ws_control(&mut ws, serde_json::json!({"subscribe": "px.usd"}));
    assert_eq!(granted["subscribed"], "px.usd");
    assert_eq!(server.publish("topic=sports", "no").0, 202);
    assert_eq!(server.publish("topic=px.usd", "yes").0, 202);
    assert_eq!(common::ws_text(&mut ws), "yes", "the forbidden topic delivered nothing");
}

#[test]
fn a_token_that_expires_while_connected_closes_the_connection() {
    let server = jwt_server(&[]);
    let token = hs256(serde_json::json!({"sub": "carol", "exp": now_s() + 2}));
    let mut ws = server.raw_ws(&format!("/ws?token={token}"));
    let mut sse = server.client_tcp();
    write!(sse, "GET /sse?token={token} HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let frame = wait_until("the expiry close", Duration::from_secs(6), || ws.recv());
    assert_eq!(frame.close_code(), Some(4001));
    // The stream ends (EOF within the harness's read timeout) after naming the expiry.
    let stream = common::lossy(&common::read_to_eof(&mut sse));
    assert!(stream.contains("event: expired\ndata: token expired\n\n"), "{stream}");
    server.wait_metric("c10m_closes_total", &["reason=\"token_expired\""], 2.0);
}

#[test]
fn pem_keys_choose_their_algorithm() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (public, private, alg) in [
        ("ed25519-public.pem", "ed25519-private.pem", Algorithm::EdDSA),
        ("p256-public.pem", "p256-private.pem", Algorithm::ES256),
    ] {
        let key = fixtures.join(public);
        let server = Server::start(&["--auth", "jwt", "--jwt-key", key.to_str().unwrap()]);
        let pem = std::fs::read(fixtures.join(private)).unwrap();
        let enc = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let claims = serde_json::json!({"sub": "dave", "exp": now_s() + 600});
        let token = encode(&Header::new(alg), &claims, &enc).unwrap();
        let r = status_of(&server, format!("GET /sse?token={token} HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert_eq!(r.status, 200, "{alg:?}");
        // An HS256 token signed with the public key's bytes must not pass (algorithm confusion).
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&std::fs::read(&key).unwrap()),
        )
        .unwrap();
        let r =
            status_of(&server, format!("GET /sse?token={confused} HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert_eq!(r.status, 401, "{alg:?} server took an HS256 token");
    }
}

#[test]
fn origins_are_checked_and_sse_answers_cors() {
    let server = Server::start(&["--allowed-origin", "https://app.example"]);
    let r = status_of(
        &server,
        "GET /sse?user=o HTTP/1.1\r\nHost: h\r\nOrigin: https://evil.example\r\n\r\n".into(),
    );
    assert_eq!(r.status, 403);
    let r = status_of(
        &server,
        "GET /sse?user=o HTTP/1.1\r\nHost: h\r\nOrigin: https://app.example\r\n\r\n".into(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("https://app.example"));
    let r = status_of(
        &server,
        "OPTIONS /sse HTTP/1.1\r\nHost: h\r\nOrigin: https://app.example\r\n\
         Access-Control-Request-Method: GET\r\n\r\n"
            .into(),
    );
    assert_eq!(r.status, 204);
    assert!(r.header("Access-Control-Allow-Headers").unwrap().contains("Authorization"));
    // A WebSocket from a foreign origin is refused too; one without Origin (not a browser)
    // is let in.
    let mut s = server.client_tcp();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Origin: https://evil.example\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut BufReader::new(s)).unwrap().status, 403);
    server.ws_connect("/ws?user=o");
}

#[test]
fn the_admin_key_guards_publish_but_not_healthz() {
    let key = temp_file("admin.key", "admin-key-0123456789\n");
    let server = Server::start(&["--admin-key-file", key.to_str().unwrap()]);
    let mut admin = server.admin_conn();
    let r = admin.request("POST", "/publish?all", "x");
    assert_eq!(r.status, 401);
    let mut s = server.admin_tcp();
    s.write_all(
        b"POST /publish?all HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer admin-key-0123456789\r\n\
          Content-Length: 1\r\n\r\nx",
    )
    .unwrap();
    assert_eq!(read_response(&mut BufReader::new(s)).unwrap().status, 202);
    let mut s = server.admin_tcp();
    s.write_all(
        b"POST /publish?all HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer admin-key-wrong-6789\r\n\
          Content-Length: 1\r\n\r\nx",
    )
    .unwrap();
    assert_eq!(read_response(&mut BufReader::new(s)).unwrap().status, 401);
    assert_eq!(admin.request("GET", "/healthz", "").status, 200);
}
