//! Loss, duplicate and reorder counting, against a small in-test WebSocket server that
//! misbehaves on purpose: it drops every fourth message, sends message 3 twice and sends
//! message 6 after message 7.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use c10m_loadgen::payload;
use support::{accept_upgrade, read_head, run_loadgen};

type Clients = Arc<Mutex<Vec<TcpStream>>>;

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn serve_client(stream: TcpStream, clients: Clients) {
    let Some((mut reader, out)) = accept_upgrade(stream) else {
        return;
    };
    clients.lock().unwrap().push(out);
    // Swallow whatever the client sends (pongs) until it goes away.
    let mut sink = [0u8; 1024];
    while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
}

fn broadcast(clients: &Clients, payload: &[u8]) {
    let mut frame = vec![0x81, payload.len() as u8];
    frame.extend_from_slice(payload);
    for c in clients.lock().unwrap().iter_mut() {
        let _ = c.write_all(&frame);
    }
}

fn serve_admin(stream: TcpStream, clients: Clients, held: Arc<Mutex<Option<Vec<u8>>>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut out = stream;
    while let Some(head) = read_head(&mut reader) {
        let len: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if head.first().is_some_and(|l| l.starts_with("POST /publish")) {
            let seq = payload::parse(&body).map(|s| s.seq).unwrap_or(0);
            match seq {
                s if s % 4 == 0 => {}
                3 => {
                    broadcast(&clients, &body);
                    broadcast(&clients, &body);
                }
                6 => *held.lock().unwrap() = Some(body),
                7 => {
                    broadcast(&clients, &body);
                    if let Some(six) = held.lock().unwrap().take() {
                        broadcast(&clients, &six);
                    }
                }
                _ => broadcast(&clients, &body),
            }
        }
        let _ = out.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}");
    }
}

fn spawn_accept(listener: TcpListener, handle: impl Fn(TcpStream) + Send + 'static) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            stream.set_nodelay(true).ok();
            handle(stream);
        }
    });
}

#[test]
fn lost_duplicated_and_reordered_messages_are_counted() {
    let clients: Clients = Arc::default();
    let held = Arc::new(Mutex::new(None));
    let client_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client_addr = client_listener.local_addr().unwrap().to_string();
    let admin_addr = admin_listener.local_addr().unwrap().to_string();
    let c = clients.clone();
    spawn_accept(client_listener, move |s| {
        let c = c.clone();
        std::thread::spawn(move || serve_client(s, c));
    });
    let c = clients.clone();
    spawn_accept(admin_listener, move |s| {
        let (c, h) = (c.clone(), held.clone());
        std::thread::spawn(move || serve_admin(s, c, h));
    });

    let (report, stdout) = run_loadgen(
        "loss",
        &[
            "--target",
            &client_addr,
            "--admin",
            &admin_addr,
            "--conns",
            "10",
            "--rate",
            "0",
            "--hold",
            "2s",
            "--publish-rate",
            "20",
            "--publish-count",
            "12",
            "--drain",
            "1s",
        ],
    );
    let m = &report.messages;
    assert_eq!(report.connections.established, 10, "{stdout}");
    assert_eq!(m.accepted, 12, "{stdout}");
    assert_eq!(m.expected, 120, "{stdout}");
    // Messages 4, 8 and 12 never arrive.
    assert_eq!(m.lost, 30, "{stdout}");
    assert_eq!(m.delivered, 90, "{stdout}");
    assert_eq!(m.duplicated, 10, "{stdout}");
    assert_eq!(m.reordered, 10, "{stdout}");
    assert_eq!(m.received, 100, "{stdout}");
    assert!(stdout.contains("lost 30"), "{stdout}");
}
