//! The status page on the admin listener: `GET /` serves it, `GET /status/events` feeds it a
//! snapshot a second, and with an admin key a browser gets in through `POST /login`'s cookie,
//! which opens these two read-only GETs and nothing else. (The page itself runs in headless
//! Chromium in clients/js/test/status_page.test.js.)

mod common;

use std::io::Write;
use std::time::Duration;

use common::{next_status, status_stream, temp_file, Server};

const KEY: &str = "status-test-admin-key-0123456789";

#[test]
fn the_stream_follows_connections_and_publishes() {
    let server = Server::start(&[]);
    let page = server.admin_conn().request("GET", "/", b"");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert!(page.text().contains("/status/events"), "the page reads the stream");

    let (mut stream, first) = status_stream(server.admin, "");
    assert_eq!(first["connections"], 0);
    assert_eq!(first["shards"].as_array().map(Vec::len), Some(2));
    assert!(first["rss_bytes"].as_u64().unwrap() > 0);

    let _ws: Vec<_> = (0..2).map(|i| server.ws_connect(&format!("/ws?user=u{i}"))).collect();
    let _sse = server.sse_connect("user=s");
    // Bounded: a snapshot a second, at most ten of them.
    let mut seen = None;
    for _ in 0..10 {
        let s = next_status(&mut stream).expect("the stream goes on");
        if s["connections"] == 3 {
            seen = Some(s);
            break;
        }
    }
    let s = seen.expect("the stream showed the 3 connections");
    assert_eq!((s["ws"].as_u64(), s["sse"].as_u64()), (Some(2), Some(1)));

    // Bytes sent on a stream are dropped; it keeps going.
    stream.get_mut().write_all(b"junk that is not a request\r\n\r\n").unwrap();
    let published = s["published"].as_u64().unwrap();
    server.publish("all", "hello");
    let moved = (0..10)
        .filter_map(|_| next_status(&mut stream))
        .find(|s| s["published"].as_u64() > Some(published) && s["delivered"].as_u64() >= Some(3));
    assert!(moved.is_some(), "the publish and its 3 deliveries showed in the stream");
}

#[test]
fn with_an_admin_key_the_cookie_opens_the_page_and_its_stream_only() {
    let key = temp_file("status", "admin.key", &format!("{KEY}\n"));
    let server = Server::start(&["--admin-key-file", key.to_str().unwrap()]);
    let mut admin = server.admin_conn();

    let login_page = admin.request("GET", "/", b"");
    assert_eq!(login_page.status, 401);
    assert!(login_page.text().contains("/login"), "the answer is a form for the key");
    assert_eq!(admin.request("GET", "/status/events", b"").status, 401);
    assert_eq!(admin.request("POST", "/login", b"not the key").status, 401);
    assert_eq!(admin.request("GET", "/login", b"").status, 405);

    let ok = admin.request("POST", "/login", KEY);
    assert_eq!(ok.status, 204, "{}", ok.text());
    let set = ok.header("Set-Cookie").expect("a cookie").to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    assert!(!set.contains(KEY), "the cookie does not hold the key: {set}");
    let cookie = format!("Cookie: {}\r\n", set.split(';').next().unwrap());

    let page = admin.request_with("GET", "/", &cookie, b"");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/status/events"));
    let (_stream, first) = status_stream(server.admin, &cookie);
    assert!(first["shards"].is_array());
    // The cookie opens nothing else: publishing and the other endpoints need the bearer key.
    assert_eq!(admin.request_with("GET", "/stats", &cookie, b"").status, 401);
    assert_eq!(admin.request_with("POST", "/publish?all", &cookie, b"x").status, 401);
    let bearer = format!("Authorization: Bearer {KEY}\r\n");
    assert_eq!(admin.request_with("GET", "/stats", &bearer, b"").status, 200);
    let (_s2, _) = status_stream(server.admin, &bearer);
}

#[test]
fn a_stream_ends_at_shutdown() {
    let mut server = Server::start(&[]);
    let (mut stream, _) = status_stream(server.admin, "");
    server.signal(libc::SIGTERM);
    common::wait_until("the stream ends", Duration::from_secs(10), || {
        next_status(&mut stream).is_none().then_some(())
    });
    assert!(server.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
}
