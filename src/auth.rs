//! Authentication of client connections (JWT) and of the admin API (a bearer key), and the
//! browser-origin policy.
//!
//! A client token is read from `Authorization: Bearer`, a `token` cookie, or `?token=`. Its
//! `sub` is the user; its optional `topics` claim lists the topics the client may subscribe
//! to (exact names, or prefixes ending in `*`; no claim: no topics); its `exp` is enforced at
//! the handshake and while connected. The accepted algorithm follows the key: an HMAC secret
//! means HS256, a PEM public key RS256, ES256 or EdDSA.
#![forbid(unsafe_code)]

use std::path::Path;

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::ConfigError;
use crate::proto::http1::Request;

/// How client connections are authenticated.
pub enum ClientAuth {
    /// Anyone may connect, with the user id from `?user=`.
    None,
    /// Boxed: the key and its validation rules are large and read once per handshake.
    Jwt(Box<Jwt>),
}

/// A JWT key and the rules a token must meet.
pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user: String,
    /// Seconds since the Unix epoch.
    pub expires_unix_s: u64,
    /// Topic names and `prefix*` patterns; empty: none.
    pub topics: Vec<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    topics: Vec<String>,
}

/// Why a client was refused: the answer is 401 for all of them, the reason goes to the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Expired,
    Invalid(String),
}

impl AuthError {
    pub fn reason(&self) -> String {
        match self {
            AuthError::Missing => {
                "token required: Authorization: Bearer, token cookie, or ?token=".into()
            }
            AuthError::Expired => "token expired".into(),
            AuthError::Invalid(why) => format!("invalid token: {why}"),
        }
    }
}

impl ClientAuth {
    /// Loads the key named by `--jwt-key`: PEM (RSA, EC P-256 or Ed25519 public key) or, for
    /// anything else, the bytes of an HMAC secret (a trailing newline is dropped).
    pub fn jwt_from_file(path: &Path) -> Result<ClientAuth, ConfigError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ConfigError(format!("cannot read --jwt-key {}: {e}", path.display())))?;
        let (key, alg) = if bytes.starts_with(b"-----BEGIN") {
            if let Ok(k) = DecodingKey::from_ed_pem(&bytes) {
                (k, Algorithm::EdDSA)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&bytes) {
                (k, Algorithm::ES256)
            } else if let Ok(k) = DecodingKey::from_rsa_pem(&bytes) {
                (k, Algorithm::RS256)
            } else {
                return Err(ConfigError(format!(
                    "--jwt-key {}: a PEM file, but not an RSA, EC P-256 or Ed25519 public key",
                    path.display()
                )));
            }
        } else {
            let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            if secret.len() < 32 {
                return Err(ConfigError(format!(
                    "--jwt-key {}: an HMAC secret of {} bytes is too short; use at least 32",
                    path.display(),
                    secret.len()
                )));
            }
            (DecodingKey::from_secret(secret), Algorithm::HS256)
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(ClientAuth::Jwt(Box::new(Jwt { key, validation })))
    }

    /// Checks a token; `now_unix_s` is passed in so the check is testable.
    pub fn verify(&self, token: Option<&str>, now_unix_s: u64) -> Result<Option<Grant>, AuthError> {
        let ClientAuth::Jwt(jwt) = self else { return Ok(None) };
        let (key, validation) = (&jwt.key, &jwt.validation);
        let token = token.ok_or(AuthError::Missing)?;
        let data = decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            kind => AuthError::Invalid(format!("{kind:?}")),
        })?;
        let c = data.claims;
        if c.exp <= now_unix_s {
            return Err(AuthError::Expired);
        }
        if c.sub.is_empty() || c.sub.len() > 256 || c.sub.contains('\0') {
            return Err(AuthError::Invalid("sub must be 1..=256 bytes without NUL".into()));
        }
        Ok(Some(Grant { user: c.sub, expires_unix_s: c.exp, topics: c.topics }))
    }
}

impl Grant {
    /// Whether the token lets its holder subscribe to `topic`.
    pub fn allows(&self, topic: &str) -> bool {
        topic_allowed(&self.topics, topic)
    }
}

/// Whether `patterns` (names, or prefixes ending in `*`) let a client subscribe to `topic`.
pub fn topic_allowed(patterns: &[String], topic: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => p == topic,
    })
}

/// Seconds since the Unix epoch, for token expiry.
pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The client's token, from the Authorization header, a `token` cookie, or `?token=`.
pub fn token_of(req: &Request) -> Option<String> {
    if let Some(h) = req.header("Authorization") {
        let h = std::str::from_utf8(h).ok()?.trim();
        if let Some(t) = h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")) {
            return Some(t.trim().to_owned());
        }
    }
    for (name, value) in &req.headers {
        if !name.eq_ignore_ascii_case("cookie") {
            continue;
        }
        let Ok(v) = std::str::from_utf8(value) else { continue };
        for pair in v.split(';') {
            if let Some(t) = pair.trim().strip_prefix("token=") {
                return Some(t.to_owned());
            }
        }
    }
    req.query_param("token")
}

/// Whether `Origin` (when a browser sends one) is allowed; an empty list allows any.
pub fn origin_allowed(allowed: &[String], origin: Option<&[u8]>) -> bool {
    match origin {
        None => true,
        Some(o) => allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == o),
    }
}

/// Compares a presented admin key with the configured one in time independent of where
/// they differ.
pub fn admin_key_matches(expected: &[u8], req: &Request) -> bool {
    let Some(h) = req.header("Authorization") else { return false };
    let Some(given) = h.strip_prefix(b"Bearer ") else { return false };
    constant_time_eq(given, expected)
}

/// Whether two secrets are equal, in time independent of where they differ (their lengths
/// are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the admin key file: its first line, at least 16 bytes.
pub fn admin_key_from_file(path: &Path) -> Result<Box<[u8]>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!("cannot read --admin-key-file {}: {e}", path.display()))
    })?;
    let key = text.lines().next().unwrap_or("").trim();
    if key.len() < 16 {
        return Err(ConfigError(format!(
            "--admin-key-file {}: the key must be at least 16 characters on its first line",
            path.display()
        )));
    }
    Ok(key.as_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn hs256() -> ClientAuth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        ClientAuth::Jwt(Box::new(Jwt { key: DecodingKey::from_secret(SECRET), validation }))
    }

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    const NOW: u64 = 2_000_000_000;

    #[test]
    fn valid_expired_and_wrongly_signed_tokens() {
        let auth = hs256();
        let good = token(
            serde_json::json!({"sub": "alice", "exp": NOW + 60, "topics": ["news", "px.*"]}),
            SECRET,
        );
        let grant = auth.verify(Some(&good), NOW).unwrap().unwrap();
        assert_eq!(grant.user, "alice");
        assert!(grant.allows("news") && grant.allows("px.eur") && !grant.allows("sports"));
        let expired = token(serde_json::json!({"sub": "alice", "exp": NOW - 1}), SECRET);
        assert_eq!(auth.verify(Some(&expired), NOW), Err(AuthError::Expired));
        let forged = token(
            serde_json::json!({"sub": "alice", "exp": NOW + 60}),
            b"another secret of 32 bytes......",
        );
        assert!(matches!(auth.verify(Some(&forged), NOW), Err(AuthError::Invalid(_))));
        assert_eq!(auth.verify(None, NOW), Err(AuthError::Missing));
        assert!(matches!(auth.verify(Some("not.a.jwt"), NOW), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn no_topics_claim_allows_no_topic() {
        let auth = hs256();
        let t = token(serde_json::json!({"sub": "bob", "exp": NOW + 60}), SECRET);
        let grant = auth.verify(Some(&t), NOW).unwrap().unwrap();
        assert!(!grant.allows("news"));
    }

    #[test]
    fn origins() {
        let list = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(&list, None));
        assert!(origin_allowed(&list, Some(b"https://app.example")));
        assert!(!origin_allowed(&list, Some(b"https://evil.example")));
        assert!(origin_allowed(&[], Some(b"https://any.example")));
    }

    #[test]
    fn short_secrets_are_refused_with_advice() {
        let dir = std::env::temp_dir().join(format!("c10m-auth-{}", std::process::id()));
        std::fs::write(&dir, "short\n").unwrap();
        let e = ClientAuth::jwt_from_file(&dir).err().unwrap();
        assert!(e.0.contains("at least 32"), "{e}");
        std::fs::remove_file(&dir).unwrap();
    }
}
