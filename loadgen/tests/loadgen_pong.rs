//! Pings are answered and never dropped, against a small in-test WebSocket server: it sends
//! each client three pings in one write (so a pong is still in flight when the next ping is
//! read), then, later, one more. The newest ping of a burst must get an answer (RFC 6455
//! §5.5.3 lets one pong answer several pings), every answered ping is counted, and the loop
//! lag and pong times are in the report.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{accept_upgrade, run_loadgen};

const CONNS: usize = 20;

/// Pong payloads received, per connection (in accept order).
type Pongs = Arc<Mutex<Vec<Vec<Vec<u8>>>>>;

fn ping(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x89, payload.len() as u8];
    frame.extend_from_slice(payload);
    frame
}

/// Reads masked client frames until EOF, keeping the payloads of pongs.
fn read_pongs(mut reader: BufReader<TcpStream>, pongs: Pongs, slot: usize) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        while buf.len() >= 6 {
            let len = usize::from(buf[1] & 0x7f);
            assert!(buf[1] & 0x80 != 0 && len <= 125, "client frames are masked control frames");
            if buf.len() < 6 + len {
                break;
            }
            let mask = [buf[2], buf[3], buf[4], buf[5]];
            let payload: Vec<u8> =
                buf[6..6 + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            if buf[0] == 0x8A {
                pongs.lock().unwrap()[slot].push(payload);
            }
            buf.drain(..6 + len);
        }
        match reader.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
}

fn serve_client(stream: TcpStream, pongs: Pongs) {
    let Some((reader, mut out)) = accept_upgrade(stream) else {
        return;
    };
    let slot = {
        let mut p = pongs.lock().unwrap();
        p.push(Vec::new());
        p.len() - 1
    };
    let p = pongs.clone();
    let reading = std::thread::spawn(move || read_pongs(reader, p, slot));
    std::thread::sleep(Duration::from_millis(300));
    let mut burst = ping(b"p1");
    burst.extend(ping(b"p2"));
    burst.extend(ping(b"p3"));
    let _ = out.write_all(&burst);
    std::thread::sleep(Duration::from_millis(500));
    let _ = out.write_all(&ping(b"p4"));
    let _ = reading.join();
}

#[test]
fn pings_are_answered_and_never_dropped() {
    let pongs: Pongs = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let p = pongs.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            stream.set_nodelay(true).ok();
            let p = p.clone();
            std::thread::spawn(move || serve_client(stream, p));
        }
    });
    let (report, stdout) = run_loadgen(
        "pong",
        &["--target", &addr, "--conns", &CONNS.to_string(), "--rate", "0", "--hold", "2s"],
    );
    let m = &report.messages;
    assert_eq!(report.connections.established, CONNS as u64, "{stdout}");
    assert_eq!(m.pings, 4 * CONNS as u64, "{stdout}");
    let pongs = pongs.lock().unwrap();
    assert_eq!(pongs.len(), CONNS);
    let mut received = 0;
    for (i, p) in pongs.iter().enumerate() {
        received += p.len() as u64;
        // The burst's newest ping and the later one are answered, in order, and nothing
        // answers a ping twice.
        let i3 = p.iter().position(|x| x == b"p3");
        let i4 = p.iter().position(|x| x == b"p4");
        assert!(matches!((i3, i4), (Some(a), Some(b)) if a < b), "connection {i}: {p:?}");
        assert!(p.len() <= 4, "connection {i}: {p:?}");
    }
    assert_eq!(m.pongs, received, "every pong sent was counted\n{stdout}");
    eprintln!("pongs {} (deferred {}) for {} pings", m.pongs, m.pongs_deferred, m.pings);
    assert_eq!(report.pong_us.count, m.pongs);
    assert_eq!(report.pong_ready_us.count, m.pongs);
    assert!(report.pong_ready_us.max >= report.pong_us.max);
    // The probe ran (every 50 ms over a ~2.5 s run) and every turn was timed.
    assert!(report.loop_lag_us.count >= 10, "{:?}", report.loop_lag_us);
    assert!(report.loop_turn_us.count > 0);
    assert_eq!(report.loop_lag_max_us_by_shard.len(), report.shards as usize);
    assert!(stdout.contains("loop lag"), "{stdout}");
}
