//! The TLS record layer after the handshake, from the traffic secrets rustls hands over.
//!
//! This is what kernel TLS does with the same secrets (rustls's `dangerous_extract_secrets`
//! exists for it); this kernel has no `tls` ULP, so the shard does it. An idle connection then
//! keeps two keys, two IVs and two sequence numbers (~130 bytes) instead of a rustls
//! connection with expanded AEAD keys (~2.3 KB). Keys are expanded per batch of records, which
//! costs far less than the system call that carries them.
//!
//! Framing only: the AEADs are ring's, the handshake and key schedule are rustls's.
//! TLS 1.3: RFC 8446 §5.2 (inner content type, nonce = iv ⊕ seq, the header is the AAD).
//! TLS 1.2: RFC 5288 (AES-GCM: 4-byte salt + 8-byte explicit nonce, seq ‖ type ‖ version ‖
//! length as AAD) and RFC 7905 (ChaCha20-Poly1305: nonce = iv ⊕ seq, no explicit nonce).
//! Post-handshake handshake messages (a TLS 1.3 KeyUpdate, a TLS 1.2 renegotiation) need the
//! handshake state this layer dropped: such a connection is closed, and the client reconnects.
#![forbid(unsafe_code)]

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

/// Records sealed with one key before the connection is closed: the AES-GCM limit of RFC 8446
/// §5.5 is 2^24.5 full records; a client reconnects long before a push stream gets there.
pub const RECORDS_PER_KEY_MAX: u64 = 1 << 24;
const CONTENT_APPLICATION_DATA: u8 = 23;
const CONTENT_ALERT: u8 = 21;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_USER_CANCELED: u8 = 90;
const HEADER_BYTES: usize = 5;
const TAG_BYTES: usize = 16;
const EXPLICIT_NONCE_BYTES: usize = 8;
/// Largest plaintext fragment (2^14).
pub const FRAGMENT_BYTES_MAX: usize = 16_384;
/// Largest ciphertext a record may carry: TLS 1.3 allows 2^14 + 256, TLS 1.2 2^14 + 2048.
pub const CIPHERTEXT_BYTES_MAX: usize = FRAGMENT_BYTES_MAX + 2048;

/// Why the record layer gave up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// A record failed to decrypt or was malformed.
    Bad,
    /// A fatal alert, or a handshake message this layer cannot follow.
    Unsupported,
    /// The sequence number reached [`RECORDS_PER_KEY_MAX`].
    KeyExhausted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Alg {
    fn ring(self) -> &'static aead::Algorithm {
        match self {
            Alg::Aes128Gcm => &aead::AES_128_GCM,
            Alg::Aes256Gcm => &aead::AES_256_GCM,
            Alg::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// TLS 1.2 AES-GCM carries an explicit nonce in every record.
    fn explicit_nonce(self, tls13: bool) -> bool {
        !tls13 && self != Alg::Chacha20Poly1305
    }
}

/// One direction's key, IV and next sequence number.
struct Direction {
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn key(&self, alg: Alg) -> LessSafeKey {
        let len = alg.ring().key_len();
        let unbound = UnboundKey::new(alg.ring(), &self.key[..len]).expect("key length by suite");
        LessSafeKey::new(unbound)
    }

    /// iv ⊕ seq (the sequence number as a 96-bit big-endian integer).
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.key = [0; 32];
        self.iv = [0; 12];
    }
}

/// The record layer of an established connection.
pub struct Records {
    alg: Alg,
    tls13: bool,
    tx: Direction,
    rx: Direction,
}

/// What [`Records::open`] found besides application data.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Bytes of `buf` consumed (whole records); the rest is an incomplete record.
    pub used: usize,
    /// The peer sent close_notify.
    pub peer_closed: bool,
}

fn direction(seq: u64, secrets: ConnectionTrafficSecrets) -> Option<(Alg, Direction)> {
    let (alg, key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Alg::Aes128Gcm, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Alg::Aes256Gcm, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (Alg::Chacha20Poly1305, key, iv),
        _ => return None,
    };
    let (key, iv) = (key.as_ref(), iv.as_ref());
    if key.len() != alg.ring().key_len() || iv.len() != 12 {
        return None;
    }
    let mut d = Direction { key: [0; 32], iv: [0; 12], seq };
    d.key[..key.len()].copy_from_slice(key);
    d.iv.copy_from_slice(iv);
    Some((alg, d))
}

/// Bytes of [`Records::export`]: suite, version, and per direction key, IV and sequence number.
pub const EXPORT_BYTES: usize = 2 + 2 * (32 + 12 + 8);

impl Direction {
    fn export(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.iv);
        out.extend_from_slice(&self.seq.to_le_bytes());
    }

    fn import(b: &[u8]) -> Direction {
        let mut d = Direction { key: [0; 32], iv: [0; 12], seq: 0 };
        d.key.copy_from_slice(&b[..32]);
        d.iv.copy_from_slice(&b[32..44]);
        d.seq = u64::from_le_bytes(b[44..52].try_into().expect("8 bytes"));
        d
    }
}

impl Records {
    /// The record state a live upgrade carries to the new process ([`EXPORT_BYTES`]): what
    /// kernel TLS would be given, the same two keys, IVs and sequence numbers.
    pub fn export(&self, out: &mut Vec<u8>) {
        let alg = match self.alg {
            Alg::Aes128Gcm => 1,
            Alg::Aes256Gcm => 2,
            Alg::Chacha20Poly1305 => 3,
        };
        out.extend_from_slice(&[alg, self.tls13 as u8]);
        self.tx.export(out);
        self.rx.export(out);
    }

    /// The state [`Records::export`] wrote; None if it is not one.
    pub fn import(b: &[u8]) -> Option<Records> {
        if b.len() != EXPORT_BYTES || b[1] > 1 {
            return None;
        }
        let alg = match b[0] {
            1 => Alg::Aes128Gcm,
            2 => Alg::Aes256Gcm,
            3 => Alg::Chacha20Poly1305,
            _ => return None,
        };
        let (tx, rx) = (Direction::import(&b[2..54]), Direction::import(&b[54..106]));
        Some(Records { alg, tls13: b[1] == 1, tx, rx })
    }

    /// From the secrets rustls extracted after the handshake; None for a suite or version
    /// this layer does not frame (rustls's defaults are all covered).
    pub fn new(version: ProtocolVersion, secrets: rustls::ExtractedSecrets) -> Option<Records> {
        let tls13 = match version {
            ProtocolVersion::TLSv1_3 => true,
            ProtocolVersion::TLSv1_2 => false,
            _ => return None,
        };
        let (alg, tx) = direction(secrets.tx.0, secrets.tx.1)?;
        let (rx_alg, rx) = direction(secrets.rx.0, secrets.rx.1)?;
        (alg == rx_alg).then_some(Records { alg, tls13, tx, rx })
    }

    /// Seals `data` into records appended to `out`.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        let key = self.tx.key(self.alg);
        for fragment in data.chunks(FRAGMENT_BYTES_MAX) {
            self.seal_one(&key, CONTENT_APPLICATION_DATA, fragment, out)?;
        }
        Ok(())
    }

    /// Appends a close_notify alert.
    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        let key = self.tx.key(self.alg);
        self.seal_one(&key, CONTENT_ALERT, &[1, 0], out)
    }

    fn seal_one(
        &mut self,
        key: &LessSafeKey,
        content: u8,
        fragment: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if self.tx.seq >= RECORDS_PER_KEY_MAX {
            return Err(RecordError::KeyExhausted);
        }
        let nonce = self.tx.nonce();
        let start = out.len();
        let explicit = self.alg.explicit_nonce(self.tls13);
        let inner = fragment.len() + usize::from(self.tls13);
        let body = inner + TAG_BYTES + if explicit { EXPLICIT_NONCE_BYTES } else { 0 };
        let outer = if self.tls13 { CONTENT_APPLICATION_DATA } else { content };
        out.extend_from_slice(&[outer, 3, 3]);
        out.extend_from_slice(&(body as u16).to_be_bytes());
        if explicit {
            out.extend_from_slice(&nonce[4..]);
        }
        let payload = out.len();
        out.extend_from_slice(fragment);
        if self.tls13 {
            out.push(content);
        }
        let aad = if self.tls13 {
            let mut h = [0u8; 13];
            h[..HEADER_BYTES].copy_from_slice(&out[start..start + HEADER_BYTES]);
            (h, HEADER_BYTES)
        } else {
            (aad12(self.tx.seq, content, fragment.len()), 13)
        };
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad.0[..aad.1]),
                &mut out[payload..],
            )
            .map_err(|_| RecordError::Bad)?;
        out.extend_from_slice(tag.as_ref());
        self.tx.seq += 1;
        Ok(())
    }

    /// Opens the whole records at the front of `buf` in place, appending application data to
    /// `plain`; stops at an incomplete record or after close_notify.
    pub fn open(&mut self, buf: &mut [u8], plain: &mut Vec<u8>) -> Result<Opened, RecordError> {
        let mut opened = Opened::default();
        let mut key = None;
        while buf.len() - opened.used >= HEADER_BYTES && !opened.peer_closed {
            let rec = &mut buf[opened.used..];
            let outer = rec[0];
            let len = u16::from_be_bytes([rec[3], rec[4]]) as usize;
            if rec[1] != 3 || !(TAG_BYTES..=CIPHERTEXT_BYTES_MAX).contains(&len) {
                return Err(RecordError::Bad);
            }
            if rec.len() < HEADER_BYTES + len {
                break;
            }
            if self.rx.seq >= RECORDS_PER_KEY_MAX {
                return Err(RecordError::KeyExhausted);
            }
            let header: [u8; HEADER_BYTES] = rec[..HEADER_BYTES].try_into().expect("5 bytes");
            let key = key.get_or_insert_with(|| self.rx.key(self.alg));
            let body = &mut rec[HEADER_BYTES..HEADER_BYTES + len];
            let (content, data) = if self.tls13 {
                if outer != CONTENT_APPLICATION_DATA {
                    return Err(RecordError::Bad);
                }
                let nonce = Nonce::assume_unique_for_key(self.rx.nonce());
                let inner = key
                    .open_in_place(nonce, Aad::from(header), body)
                    .map_err(|_| RecordError::Bad)?;
                // Strip the zero padding; the last non-zero byte is the real content type.
                let end = inner.iter().rposition(|&b| b != 0).ok_or(RecordError::Bad)?;
                (inner[end], &inner[..end])
            } else {
                let (nonce, sealed) = if self.alg.explicit_nonce(false) {
                    if body.len() < EXPLICIT_NONCE_BYTES + TAG_BYTES {
                        return Err(RecordError::Bad);
                    }
                    let mut n = [0u8; 12];
                    n[..4].copy_from_slice(&self.rx.iv[..4]);
                    n[4..].copy_from_slice(&body[..EXPLICIT_NONCE_BYTES]);
                    (n, &mut body[EXPLICIT_NONCE_BYTES..])
                } else {
                    (self.rx.nonce(), body)
                };
                let aad = aad12(self.rx.seq, outer, sealed.len() - TAG_BYTES);
                let nonce = Nonce::assume_unique_for_key(nonce);
                let data = key
                    .open_in_place(nonce, Aad::from(aad), sealed)
                    .map_err(|_| RecordError::Bad)?;
                (outer, &*data)
            };
            self.rx.seq += 1;
            match content {
                CONTENT_APPLICATION_DATA => plain.extend_from_slice(data),
                // close_notify (warning or fatal level, description 0) ends the stream.
                CONTENT_ALERT if data.len() == 2 && data[1] == ALERT_CLOSE_NOTIFY => {
                    opened.peer_closed = true
                }
                // user_canceled precedes a close_notify; it ends nothing by itself.
                CONTENT_ALERT if data.len() == 2 && data[1] == ALERT_USER_CANCELED => {}
                _ => return Err(RecordError::Unsupported),
            }
            opened.used += HEADER_BYTES + len;
        }
        Ok(opened)
    }
}

/// TLS 1.2 additional data: seq ‖ type ‖ version ‖ plaintext length.
fn aad12(seq: u64, content: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8..11].copy_from_slice(&[content, 3, 3]);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}
