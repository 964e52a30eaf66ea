//! A rustls client and a [`Session`] talking in memory: no sockets, no ring.

use super::*;
use std::io::{Read, Write};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn server() -> TlsServer {
    TlsServer::load(&fixture("server.pem"), &fixture("server.key")).expect("fixtures load")
}

fn client(versions: &[&'static rustls::SupportedProtocolVersion]) -> rustls::ClientConnection {
    client_with(provider(), versions)
}

fn client_with(
    provider: rustls::crypto::CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(fixture("ca.pem")).unwrap();
    roots.add(ca).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap()
}

/// Moves bytes both ways until neither side has anything to send; returns the plaintext
/// the server received. Bytes reach the server in `chunk`-sized pieces, to exercise records
/// split across receives.
fn pump(c: &mut rustls::ClientConnection, s: &mut Session, chunk: usize) -> Vec<u8> {
    let mut plain = Vec::new();
    for _ in 0..32 {
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        let mut out = Vec::new();
        for piece in wire.chunks_mut(chunk.max(1)) {
            s.receive(piece, &mut plain, &mut out).expect("server accepts client bytes");
        }
        if wire.is_empty() && out.is_empty() {
            return plain;
        }
        let mut rd = &out[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets().expect("client accepts server bytes");
    }
    panic!("no quiescence after 32 rounds");
}

fn round_trip(mut c: rustls::ClientConnection, chunk: usize) {
    let tls = server();
    let mut s = tls.session().unwrap();
    c.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let got = pump(&mut c, &mut s, chunk);
    assert!(s.is_established());
    assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(c.alpn_protocol(), Some(ALPN_HTTP11));
    assert_eq!(s.pending_bytes(), 0, "whole records leave nothing behind");
    // A message bigger than one record, then a close_notify.
    let msg: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let mut out = Vec::new();
    s.encrypt(&msg, &mut out).unwrap();
    s.close_notify(&mut out).unwrap();
    let mut rd = &out[..];
    let mut back = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        if rd.is_empty() {
            break;
        }
        c.read_tls(&mut rd).unwrap();
        c.process_new_packets().unwrap();
        while let Ok(n @ 1..) = c.reader().read(&mut buf) {
            back.extend_from_slice(&buf[..n]);
        }
    }
    assert!(rd.is_empty());
    assert_eq!(back, msg);
    let mut end = [0u8; 1];
    assert_eq!(c.reader().read(&mut end).unwrap(), 0, "close_notify reads as a clean end");
}

/// Every suite rustls offers, both versions, records whole and split: the rustls client
/// checks the records the server's record layer seals, and the reverse.
#[test]
fn every_suite_round_trips_whole_and_split() {
    let suites = provider().cipher_suites;
    assert_eq!(suites.len(), 9);
    for suite in suites {
        let mut p = provider();
        p.cipher_suites = vec![suite];
        let version = match suite {
            rustls::SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
            rustls::SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
        };
        let name = format!("{:?}", suite.suite());
        if name.contains("_RSA_") {
            continue; // the fixture certificate is ECDSA
        }
        for chunk in [usize::MAX, 7, 1] {
            round_trip(client_with(p.clone(), &[version]), chunk);
        }
        // Client to server after the handshake: many records, fed in odd pieces.
        let tls = server();
        let mut s = tls.session().unwrap();
        let mut c = client_with(p.clone(), &[version]);
        pump(&mut c, &mut s, usize::MAX);
        assert!(s.is_established(), "{name}");
        let msg: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
        c.writer().write_all(&msg).unwrap();
        let got = pump(&mut c, &mut s, 1000);
        assert_eq!(got, msg, "{name}");
        // close_notify from the client.
        c.send_close_notify();
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        let p = s.receive(&mut wire, &mut plain, &mut out).unwrap();
        assert!(p.peer_closed, "{name}");
    }
}

#[test]
fn a_tampered_record_fails_the_session() {
    let tls = server();
    let mut s = tls.session().unwrap();
    let mut c = client(&[&rustls::version::TLS13]);
    pump(&mut c, &mut s, usize::MAX);
    c.writer().write_all(b"hello").unwrap();
    let mut wire = Vec::new();
    c.write_tls(&mut wire).unwrap();
    let last = wire.len() - 1;
    wire[last] ^= 1;
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    assert_eq!(s.receive(&mut wire, &mut plain, &mut out), Err(Failure::Record));
    assert!(plain.is_empty());
}

/// A TLS 1.3 KeyUpdate needs the handshake state the record layer dropped: the connection
/// is closed rather than misread.
#[test]
fn a_key_update_closes_the_session() {
    let tls = server();
    let mut s = tls.session().unwrap();
    let mut c = client(&[&rustls::version::TLS13]);
    pump(&mut c, &mut s, usize::MAX);
    c.refresh_traffic_keys().unwrap();
    let mut wire = Vec::new();
    c.write_tls(&mut wire).unwrap();
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    assert_eq!(s.receive(&mut wire, &mut plain, &mut out), Err(Failure::Record));
}

#[test]
fn plain_http_is_not_tls() {
    let tls = server();
    let mut s = tls.session().unwrap();
    let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    assert_eq!(s.receive(&mut req, &mut plain, &mut out), Err(Failure::NotTls));
    assert!(plain.is_empty());
    assert!(s.is_failed());
    assert_eq!(s.receive(&mut [1, 2, 3], &mut plain, &mut out), Err(Failure::Record));
}

#[test]
fn encrypt_before_the_handshake_fails() {
    let mut s = server().session().unwrap();
    let mut out = Vec::new();
    assert!(s.encrypt(b"early", &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn bad_files_name_the_flag() {
    let e = TlsServer::load(&fixture("missing.pem"), &fixture("server.key")).unwrap_err();
    assert!(e.0.starts_with("--tls-cert "), "{e}");
    let e = TlsServer::load(&fixture("garbage.pem"), &fixture("server.key")).unwrap_err();
    assert!(e.0.starts_with("--tls-cert ") && e.0.contains("CERTIFICATE"), "{e}");
    let e = TlsServer::load(&fixture("server.pem"), &fixture("garbage.pem")).unwrap_err();
    assert!(e.0.starts_with("--tls-key "), "{e}");
    let e = TlsServer::load(&fixture("server.pem"), &fixture("server2.key")).unwrap_err();
    assert!(e.0.starts_with("--tls-key ") && e.0.contains("does not match"), "{e}");
}

/// The idle cost of a TLS connection is the session's inline size plus what it keeps on the
/// heap; the inline part is measured here, the whole in scripts/tls_idle.sh.
#[test]
fn session_inline_size_is_in_view() {
    let size = std::mem::size_of::<Session>();
    eprintln!("Session: {size} bytes inline");
    assert!(size <= 160, "Session grew to {size} bytes");
}

/// A live upgrade moves an established session: the imported copy reads what the client
/// sends next (here split so that half a record waits in the exported state) and seals what
/// the client accepts, on both versions.
#[test]
fn an_exported_session_carries_on_in_its_import() {
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
        let tls = server();
        let mut c = client(versions);
        let mut s = tls.session().unwrap();
        c.writer().write_all(b"hello").unwrap();
        assert_eq!(pump(&mut c, &mut s, 4096), b"hello");
        assert!(tls.session().unwrap().export().is_none(), "a handshake does not move");
        // Half a record arrives before the upgrade, the rest after it.
        c.writer().write_all(b"after the upgrade").unwrap();
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        let (first, rest) = wire.split_at_mut(9);
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        s.receive(first, &mut plain, &mut out).unwrap();
        assert!(plain.is_empty() && s.pending_bytes() == 9);
        let state = s.export().expect("established");
        drop(s);
        let mut moved = Session::import(&state).expect("imports");
        assert!(moved.is_established() && moved.pending_bytes() == 9);
        moved.receive(rest, &mut plain, &mut out).unwrap();
        assert_eq!(plain, b"after the upgrade");
        let mut sealed = Vec::new();
        moved.encrypt(b"from the new process", &mut sealed).unwrap();
        let mut rd = &sealed[..];
        c.read_tls(&mut rd).unwrap();
        c.process_new_packets().unwrap();
        let mut back = [0u8; 64];
        let n = c.reader().read(&mut back).unwrap();
        assert_eq!(&back[..n], b"from the new process");
        assert!(Session::import(&state[..50]).is_none(), "a cut state is refused");
    }
}
