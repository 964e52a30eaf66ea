//! TLS on the client listeners: rustls's unbuffered API for the handshake, then a record
//! layer of our own over the traffic secrets rustls hands over ([`record`]).
//!
//! The shard keeps its I/O: a receive copies ciphertext out of the provided-buffer ring, a
//! [`Session`] decrypts it in that copy and hands back plaintext, which goes to the protocol
//! code exactly as plain bytes do; plaintext queued for a connection is encrypted when it is
//! queued, per connection, into an owned chunk freed when its send completes. rustls's
//! unbuffered connection owns no I/O buffer, and it lives only until the handshake completes:
//! an idle TLS connection then keeps two keys, two IVs and two sequence numbers, plus the
//! bytes of an incomplete record while one is pending.
//!
//! One [`TlsServer`] is built at start from the PEM files of `--tls-cert` and `--tls-key` and
//! shared by every shard. [`TlsServer::reload`] (SIGHUP) re-reads both files and swaps the
//! certificate that new handshakes present; connections already up keep their keys. A reload
//! that fails keeps the certificate in use.
#![forbid(unsafe_code)]

pub mod record;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{AlertDescription, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The only application protocol offered: WebSocket and SSE both start as HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Most ciphertext an incomplete record may hold back: one record of the largest size TLS
/// allows, with its header. Larger records are refused; this bounds what a connection keeps
/// between receives.
pub const PENDING_BYTES_MAX: usize = record::CIPHERTEXT_BYTES_MAX + 5;

/// Why a TLS connection failed, one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The bytes were not TLS (a plain HTTP request on a TLS listener, noise).
    NotTls,
    /// The client refused our certificate (it does not trust it, or it names another host).
    CertRejected,
    /// The client speaks TLS, but nothing we accept (versions, suites, ALPN), or broke the
    /// protocol; or any other alert it sent.
    Handshake,
    /// After the handshake: a record that does not decrypt, a fatal alert, or a message the
    /// record layer does not follow (a TLS 1.3 KeyUpdate, a TLS 1.2 renegotiation).
    Record,
}

impl Failure {
    pub const ALL: [Failure; 4] =
        [Failure::NotTls, Failure::CertRejected, Failure::Handshake, Failure::Record];

    pub fn name(self) -> &'static str {
        match self {
            Failure::NotTls => "not_tls",
            Failure::CertRejected => "cert_rejected",
            Failure::Handshake => "handshake",
            Failure::Record => "record",
        }
    }

    fn of(e: &rustls::Error) -> Failure {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(_) => Failure::NotTls,
            E::AlertReceived(
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied,
            ) => Failure::CertRejected,
            _ => Failure::Handshake,
        }
    }
}

/// An operator's TLS configuration mistake, naming the flag to fix.
#[derive(Debug)]
pub struct TlsConfigError(pub String);

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsConfigError {}

/// Presents whichever certificate was loaded last.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner)))
    }
}

/// The TLS configuration every shard shares: built once, its certificate swappable.
pub struct TlsServer {
    config: Arc<ServerConfig>,
    resolver: Arc<Resolver>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish()
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Reads and checks a certificate chain and its key; errors name the flag at fault.
fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsConfigError> {
    let bad = |flag: &str, path: &Path, why: String| {
        TlsConfigError(format!("{flag} {}: {why}", path.display()))
    };
    let cert_text = std::fs::read(cert).map_err(|e| bad("--tls-cert", cert, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("--tls-cert", cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        let why = "no CERTIFICATE section: give the server certificate (then its \
                   intermediates) in PEM";
        return Err(bad("--tls-cert", cert, why.into()));
    }
    let key_text = std::fs::read(key).map_err(|e| bad("--tls-key", key, e.to_string()))?;
    let der = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| {
        let why = format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}");
        bad("--tls-key", key, why)
    })?;
    let ck = CertifiedKey::from_der(chain, der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => bad(
            "--tls-key",
            key,
            format!("does not match the certificate of --tls-cert {}", cert.display()),
        ),
        other => bad("--tls-key", key, format!("unusable key: {other}")),
    })?;
    // The chain must parse as X.509 for clients to accept it; check now, not per handshake.
    ck.end_entity_cert()
        .ok()
        .and_then(|c| rustls::server::ParsedCertificate::try_from(c).ok())
        .ok_or_else(|| {
            bad("--tls-cert", cert, "the first certificate is not valid X.509".into())
        })?;
    Ok(ck)
}

impl TlsServer {
    /// Loads the PEM files and builds the configuration: TLS 1.3 and 1.2, rustls's default
    /// cipher suites, ALPN `http/1.1`, no client certificates.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsServer, TlsConfigError> {
        let ck = load_certified_key(cert, key)?;
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(ck))));
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError(format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        // The server's order (rustls's: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305; forward
        // secret suites only) decides, not the client's.
        config.ignore_client_order = true;
        // The record layer takes over from rustls after the handshake (see `record`).
        config.enable_secret_extraction = true;
        // Resumption tickets are sealed by the server instead of stored in it: a reconnect
        // wave resumes cheaply and no per-session state is kept.
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsConfigError(format!("TLS ticket key: {e}")))?;
        Ok(TlsServer {
            config: Arc::new(config),
            resolver,
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
        })
    }

    /// Re-reads the PEM files; new handshakes present the new certificate. On error the
    /// certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        let ck = load_certified_key(&self.cert_path, &self.key_path)?;
        *self.resolver.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ck);
        Ok(())
    }

    /// A server session for a newly accepted connection.
    pub fn session(&self) -> Result<Session, rustls::Error> {
        let conn = UnbufferedServerConnection::new(Arc::clone(&self.config))?;
        Ok(Session { state: State::Handshake(Box::new(conn)), pending: Vec::new() })
    }
}

/// What one batch of received ciphertext produced, besides plaintext and bytes to send.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The handshake completed during this batch.
    pub established: bool,
    /// The peer sent close_notify: it will send nothing more.
    pub peer_closed: bool,
}

/// One connection's TLS state: rustls while the handshake runs, then only the record keys.
pub struct Session {
    state: State,
    /// Ciphertext of an incomplete record, kept between receives; empty (no allocation) when
    /// every record received was whole. len <= PENDING_BYTES_MAX.
    pending: Vec<u8>,
}

enum State {
    Handshake(Box<UnbufferedServerConnection>),
    /// The handshake is done: rustls's connection is dropped, its traffic secrets kept.
    Traffic(record::Records),
    /// A fatal error was seen: everything further is discarded.
    Failed,
}

impl Session {
    /// The handshake is complete: application data may flow.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Traffic(_))
    }

    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// An established session's state for a live upgrade: the record state, then the
    /// ciphertext of an incomplete record. None during the handshake or after a failure.
    pub fn export(&self) -> Option<Vec<u8>> {
        let State::Traffic(records) = &self.state else { return None };
        let mut out = Vec::with_capacity(record::EXPORT_BYTES + self.pending.len());
        records.export(&mut out);
        out.extend_from_slice(&self.pending);
        Some(out)
    }

    /// The session [`Session::export`] wrote, in the new process.
    pub fn import(b: &[u8]) -> Option<Session> {
        if b.len() < record::EXPORT_BYTES || b.len() > record::EXPORT_BYTES + PENDING_BYTES_MAX {
            return None;
        }
        let (state, pending) = b.split_at(record::EXPORT_BYTES);
        let records = record::Records::import(state)?;
        Some(Session { state: State::Traffic(records), pending: pending.to_vec() })
    }

    /// Bytes held for an incomplete record.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Feeds ciphertext just received: appends the plaintext it carried to `plain` and any TLS
    /// bytes to send (handshake flights, alerts) to `out`. On failure `out` may hold an alert
    /// to send before closing; the session then ignores all further input.
    pub fn receive(
        &mut self,
        rx: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Progress, Failure> {
        if self.is_failed() {
            return Err(Failure::Record);
        }
        let result = if self.pending.is_empty() {
            let r = self.process(rx, plain, out);
            if let Ok((used, _)) = r {
                self.pending.extend_from_slice(&rx[used..]);
            }
            r
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(rx);
            let r = self.process(&mut buf, plain, out);
            if let Ok((used, _)) = r {
                buf.drain(..used);
                self.pending = buf;
            }
            r
        };
        match result {
            Ok((_, progress)) => {
                if self.pending.len() > PENDING_BYTES_MAX {
                    self.state = State::Failed;
                    self.pending = Vec::new();
                    return Err(Failure::NotTls);
                }
                if self.pending.is_empty() {
                    // Idle connections hold no input buffer.
                    self.pending = Vec::new();
                } else {
                    self.pending.shrink_to_fit();
                }
                Ok(progress)
            }
            Err(why) => {
                if let State::Handshake(conn) = &mut self.state {
                    flush_alert(conn, out);
                }
                self.state = State::Failed;
                self.pending = Vec::new();
                Err(why)
            }
        }
    }

    /// Runs the handshake and then the record layer over `buf`; returns how many bytes whole
    /// records took.
    fn process(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(usize, Progress), Failure> {
        let mut used = 0;
        let mut progress = Progress::default();
        if let State::Handshake(conn) = &mut self.state {
            used = handshake(conn, buf, plain, out, &mut progress).map_err(|e| Failure::of(&e))?;
            if !conn.is_handshaking() {
                self.enter_traffic()?;
                progress.established = true;
            }
        }
        if let State::Traffic(records) = &mut self.state {
            if !progress.peer_closed {
                let opened = records.open(&mut buf[used..], plain).map_err(|_| Failure::Record)?;
                used += opened.used;
                progress.peer_closed = opened.peer_closed;
            }
        }
        Ok((used, progress))
    }

    /// Swaps the finished rustls connection for its traffic secrets.
    fn enter_traffic(&mut self) -> Result<(), Failure> {
        let State::Handshake(conn) = std::mem::replace(&mut self.state, State::Failed) else {
            return Err(Failure::Handshake);
        };
        let version = conn.protocol_version().ok_or(Failure::Handshake)?;
        // The kernel-connection half (for key updates) is dropped: see `record`.
        let (secrets, _) =
            conn.dangerous_into_kernel_connection().map_err(|_| Failure::Handshake)?;
        self.state =
            State::Traffic(record::Records::new(version, secrets).ok_or(Failure::Handshake)?);
        Ok(())
    }

    /// Encrypts application data for sending; appends the ciphertext to `out`. Fails when the
    /// handshake is not complete or the session is closing (the data is then dropped).
    pub fn encrypt(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        match &mut self.state {
            State::Traffic(r) => r.seal(data, out).map_err(|_| Failure::Record),
            _ => Err(Failure::Handshake),
        }
    }

    /// Appends a close_notify alert to `out`, when the handshake is complete.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), Failure> {
        match &mut self.state {
            State::Traffic(r) => r.seal_close_notify(out).map_err(|_| Failure::Record),
            _ => Err(Failure::Handshake),
        }
    }
}

/// Runs rustls over `buf` until it needs more bytes or the handshake is done; returns how
/// many bytes it consumed. Plaintext that came with the handshake goes to `plain`.
fn handshake(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
    progress: &mut Progress,
) -> Result<usize, rustls::Error> {
    let mut used = 0;
    // Each turn consumes a record or emits one; the bound only guards against a state
    // machine that stops making progress.
    for _ in 0..buf.len() + 64 {
        let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut buf[used..]);
        let mut stop = false;
        match state? {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(record) = r.next_record() {
                    plain.extend_from_slice(record?.payload);
                }
            }
            ConnectionState::EncodeTlsData(mut e) => encode_into(out, |o| e.encode(o))?,
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::PeerClosed => progress.peer_closed = true,
            // Also reached in TLS 1.3 before the client's Finished (0.5-RTT data): the
            // handshake is complete only once rustls says so.
            ConnectionState::WriteTraffic(_)
            | ConnectionState::BlockedHandshake
            | ConnectionState::Closed => stop = true,
            // Early data is not enabled; any future state is not understood.
            _ => return Err(rustls::Error::General("unexpected TLS state".into())),
        }
        used += discard;
        if stop {
            return Ok(used);
        }
    }
    Err(rustls::Error::General("TLS state machine made no progress".into()))
}

/// After a fatal error rustls queues an alert for the peer; collect it.
fn flush_alert(conn: &mut UnbufferedServerConnection, out: &mut Vec<u8>) {
    for _ in 0..4 {
        let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
        match state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                if encode_into(out, |o| e.encode(o)).is_err() {
                    return;
                }
            }
            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
            _ => return,
        }
    }
}

/// Appends what `encode` writes to `out`, growing it to the size rustls asks for.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let mut want = 512;
    for _ in 0..2 {
        out.resize(start + want, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(s)) => want = s.required_size,
            Err(e) => {
                out.truncate(start);
                return Err(rustls::Error::General(e.to_string()));
            }
        }
    }
    out.truncate(start);
    Err(rustls::Error::General("TLS record does not fit".into()))
}

#[cfg(test)]
mod tests;
