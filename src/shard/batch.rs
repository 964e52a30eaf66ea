//! `POST /publish/batch`: many publishes in one request, and batching of the mesh traffic
//! they cause.
//!
//! The body is newline-delimited JSON, one message per line:
//! `{"user":"u1","data":…}`, `{"topic":"t","data":…}` or `{"all":true,"data":…}`. `data` is
//! any JSON value: a string is published as its text, anything else as its compact JSON;
//! `"b64":"…"` (or `"data_b64"`, as the JSON envelope writes it) instead publishes bytes.
//! The answer lists, in line order, `{"id":N}` or `{"error":"…"}` for each line.
//!
//! While a batch is routed, and while a shard handles a [`Msg::Batch`] from another, every
//! message for another shard is collected ([`Shard::batched`]) and sent as one
//! [`Msg::Batch`] per destination: a batch of 1,000 personal notifications costs one mesh
//! message per shard, not one per line.

use base64::Engine as _;

use super::admin::Target;
use super::client::NAME_BYTES_MAX;
use super::Shard;
use crate::metrics::bump;
use crate::push::Msg;

/// One line's outcome.
pub(super) enum Line {
    Publish(Target, Vec<u8>),
    Bad(String),
    /// A blank line: skipped, no entry in the answer.
    Blank,
}

/// Parses one line of a batch body.
pub(super) fn parse_line(line: &[u8]) -> Line {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Line::Blank;
    }
    let v: serde_json::Value = match serde_json::from_slice(line) {
        Ok(serde_json::Value::Object(m)) => serde_json::Value::Object(m),
        Ok(_) => return Line::Bad("a line must be a JSON object".into()),
        Err(e) => return Line::Bad(format!("invalid JSON: {e}")),
    };
    let name = |key: &str| -> Result<Option<String>, String> {
        match v.get(key) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= NAME_BYTES_MAX => {
                Ok(Some(s.clone()))
            }
            Some(_) => Err(format!("\"{key}\" must be a string of 1..=256 bytes")),
        }
    };
    let target = match (name("user"), name("topic"), v.get("all")) {
        (Err(e), _, _) | (_, Err(e), _) => return Line::Bad(e),
        (Ok(Some(u)), Ok(None), None) => Target::User(u),
        (Ok(None), Ok(Some(t)), None) => Target::Topic(t),
        (Ok(None), Ok(None), Some(serde_json::Value::Bool(true))) => Target::All,
        _ => return Line::Bad("give exactly one of \"user\", \"topic\" or \"all\":true".into()),
    };
    let b64 = v.get("b64").or_else(|| v.get("data_b64"));
    let payload = match (v.get("data"), b64) {
        (Some(serde_json::Value::String(s)), None) => s.clone().into_bytes(),
        (Some(other), None) => other.to_string().into_bytes(),
        (None, Some(serde_json::Value::String(s))) => {
            match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(bytes) => bytes,
                Err(_) => return Line::Bad("\"b64\" is not valid base64".into()),
            }
        }
        (None, Some(_)) => return Line::Bad("\"b64\" must be a string".into()),
        (None, None) => return Line::Bad("missing \"data\" (or \"b64\")".into()),
        (Some(_), Some(_)) => return Line::Bad("give \"data\" or \"b64\", not both".into()),
    };
    Line::Publish(target, payload)
}

impl Shard {
    /// Runs `f` with mesh sends collected per destination, then sends each destination's
    /// share as one [`Msg::Batch`] (a lone message as itself). Nested calls join the outer
    /// batch.
    pub(super) fn batched(&mut self, f: impl FnOnce(&mut Shard)) {
        if self.batch.is_some() {
            return f(self);
        }
        let destinations = self.mesh.destinations();
        self.batch = Some((0..destinations).map(|_| Vec::new()).collect());
        f(self);
        let Some(batch) = self.batch.take() else { return };
        for (to, mut msgs) in batch.into_iter().enumerate() {
            match msgs.len() {
                0 => {}
                1 => self.send_mesh(to, msgs.pop().expect("one")),
                n => {
                    bump(&self.stats().mesh_batches, 1);
                    bump(&self.stats().mesh_batched, n as u64);
                    self.send_mesh(to, Msg::Batch(Box::new(msgs)))
                }
            }
        }
    }

    /// Publishes every line of a batch body; returns the answer's JSON and its status: 200
    /// with a result per non-blank line (errors carry the 1-based line number), or 413 when
    /// the batch holds more than `batch_lines_max` lines.
    pub(super) fn publish_batch(&mut self, body: &[u8]) -> (u16, String) {
        let max = self.shared.cfg.limits.batch_lines_max as usize;
        let lines = || body.split(|&b| b == b'\n').enumerate();
        let count = lines().filter(|(_, l)| !l.trim_ascii().is_empty()).count();
        if count > max {
            let why = format!("{count} lines: at most batch_lines_max = {max} per batch");
            return (413, serde_json::json!({ "error": why }).to_string());
        }
        let mut results = Vec::with_capacity(count);
        let mut published = 0u64;
        self.batched(|shard| {
            for (n, line) in lines() {
                match parse_line(line) {
                    Line::Publish(target, payload) => {
                        published += 1;
                        results.push(serde_json::json!({ "id": shard.route(target, payload) }));
                    }
                    Line::Bad(why) => {
                        results.push(serde_json::json!({ "error": why, "line": n + 1 }))
                    }
                    Line::Blank => {}
                }
            }
        });
        let failed = results.len() as u64 - published;
        let answer = serde_json::json!({
            "published": published,
            "failed": failed,
            "results": results,
        });
        (200, answer.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(line: &str) -> Result<(String, Vec<u8>), String> {
        match parse_line(line.as_bytes()) {
            Line::Publish(Target::User(u), p) => Ok((format!("user:{u}"), p)),
            Line::Publish(Target::Topic(t), p) => Ok((format!("topic:{t}"), p)),
            Line::Publish(Target::All, p) => Ok(("all".into(), p)),
            Line::Bad(why) => Err(why),
            Line::Blank => Err("blank".into()),
        }
    }

    #[test]
    fn lines_name_a_target_and_data() {
        assert_eq!(
            target(r#"{"user":"u1","data":"hi"}"#).unwrap(),
            ("user:u1".into(), b"hi".to_vec())
        );
        assert_eq!(
            target(r#"{"topic":"news","data":{"a":[1,2]}}"#).unwrap(),
            ("topic:news".into(), br#"{"a":[1,2]}"#.to_vec())
        );
        assert_eq!(target(r#"{"all":true,"data":7}"#).unwrap(), ("all".into(), b"7".to_vec()));
        assert_eq!(
            target(r#"{"user":"u","b64":"/wCA"}"#).unwrap(),
            ("user:u".into(), vec![0xff, 0x00, 0x80])
        );
        assert_eq!(target("   ").unwrap_err(), "blank");
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        for (line, says) in [
            ("{nope", "invalid JSON"),
            ("[1]", "a line must be a JSON object"),
            (r#"{"data":1}"#, "exactly one of"),
            (r#"{"user":"a","topic":"b","data":1}"#, "exactly one of"),
            (r#"{"all":false,"data":1}"#, "exactly one of"),
            (r#"{"user":"","data":1}"#, "\"user\" must be a string"),
            (r#"{"topic":5,"data":1}"#, "\"topic\" must be a string"),
            (r#"{"user":"u"}"#, "missing \"data\""),
            (r#"{"user":"u","b64":"***"}"#, "not valid base64"),
            (r#"{"user":"u","data":1,"b64":"AA=="}"#, "not both"),
        ] {
            let why = target(line).unwrap_err();
            assert!(why.contains(says), "{line}: {why}");
        }
        let long = format!(r#"{{"user":"{}","data":1}}"#, "u".repeat(257));
        assert!(target(&long).unwrap_err().contains("1..=256 bytes"));
    }
}
