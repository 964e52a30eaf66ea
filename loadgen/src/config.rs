//! Parsing of the command-line value languages: durations, address ranges and the
//! user/topic patterns. Pure functions; errors say what to write instead.

#![forbid(unsafe_code)]

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Most source addresses one run may fan out over (a /16 is far more than any box needs).
pub const SOURCES_MAX: usize = 65_536;

/// Parses `500ms`, `40s`, `2m`, `1h`, or a bare number of seconds (`30`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration `{text}`: write e.g. 500ms, 40s, 2m, 1h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("bad duration unit in `{text}`: use ms, s, m or h")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("bad duration `{text}`"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a list of IPv4 source addresses: `127.0.0.2-127.0.0.40`, `127.0.0.5`, or a
/// comma-separated mix of both.
pub fn parse_sources(text: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (parse_ipv4(a)?, parse_ipv4(b)?),
            None => (parse_ipv4(part)?, parse_ipv4(part)?),
        };
        let (lo, hi) = (u32::from(first), u32::from(last));
        if lo > hi {
            return Err(format!("source range `{part}` runs backwards"));
        }
        if out.len() + (hi - lo) as usize + 1 > SOURCES_MAX {
            return Err(format!("more than {SOURCES_MAX} source addresses"));
        }
        out.extend((lo..=hi).map(Ipv4Addr::from));
    }
    if out.is_empty() {
        return Err("empty --sources: write e.g. 127.0.0.2-127.0.0.40".into());
    }
    Ok(out)
}

fn parse_ipv4(text: &str) -> Result<Ipv4Addr, String> {
    text.trim().parse().map_err(|_| format!("bad IPv4 source address `{text}`"))
}

/// Resolves `HOST:PORT` to one IPv4 socket address.
pub fn parse_target(text: &str) -> Result<SocketAddr, String> {
    let addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("bad target `{text}` ({e}): write HOST:PORT"))?;
    let mut found = None;
    for addr in addrs {
        if addr.is_ipv4() {
            found = Some(addr);
            break;
        }
    }
    found.ok_or_else(|| format!("target `{text}` has no IPv4 address (IPv6 is not supported)"))
}

/// Reads an admin bearer key the way the server does: the first line, trimmed; it must be
/// a visible-ASCII token (it goes into a header line).
pub fn read_admin_key(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --admin-key-file {}: {e}", path.display()))?;
    let key = text.lines().next().unwrap_or("").trim();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--admin-key-file {}: write the key as one line of visible ASCII characters",
            path.display()
        ));
    }
    Ok(key.to_string())
}

/// One piece of a [`Pattern`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// `{n}`: the connection index.
    Index,
    /// `{n%K}`: the connection index modulo K.
    IndexMod(u64),
}

/// A user id or topic name derived from the connection index `n`.
///
/// `u{n}` gives every connection its own user; `u{n%1000}` spreads connections over 1000
/// users (connections 5, 1005, 2005 … share user `u5`); `news` is the same for everyone.
/// The values a pattern can produce are its *buckets*: bucket `b` is what connection `b`
/// renders, and connection `n` falls in bucket `n % buckets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    pieces: Vec<Piece>,
    modulus: Option<u64>,
    has_index: bool,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("empty pattern".into());
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut modulus = None;
        let mut has_index = false;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in pattern `{text}`"))?
                + open;
            let inner = &rest[open + 1..close];
            let piece = if inner == "n" {
                Piece::Index
            } else if let Some(k) = inner.strip_prefix("n%") {
                let k: u64 = k
                    .parse()
                    .ok()
                    .filter(|k| *k > 0)
                    .ok_or_else(|| format!("bad modulus in `{{{inner}}}`: write {{n%1000}}"))?;
                Piece::IndexMod(k)
            } else {
                return Err(format!("unknown placeholder `{{{inner}}}`: use {{n}} or {{n%K}}"));
            };
            match (&piece, modulus, has_index) {
                (Piece::Index, Some(_), _) | (Piece::IndexMod(_), _, true) => {
                    return Err(format!("pattern `{text}` mixes {{n}} and {{n%K}}"));
                }
                (Piece::IndexMod(k), Some(m), _) if *k != m => {
                    return Err(format!("pattern `{text}` uses two different moduli"));
                }
                (Piece::IndexMod(k), _, _) => modulus = Some(*k),
                (Piece::Index, _, _) => has_index = true,
                _ => {}
            }
            pieces.push(piece);
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_string()));
        }
        let pattern = Pattern { pieces, modulus, has_index };
        let sample = pattern.render(0);
        if !sample.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:~".contains(&b)) {
            return Err(format!(
                "pattern `{text}` renders `{sample}`: only letters, digits and -_.:~ are allowed"
            ));
        }
        Ok(pattern)
    }

    /// How many distinct values the pattern yields over `conns` connections.
    pub fn buckets(&self, conns: u64) -> u64 {
        match (self.modulus, self.has_index) {
            (Some(k), _) => k.min(conns.max(1)),
            (None, true) => conns.max(1),
            (None, false) => 1,
        }
    }

    pub fn bucket_of(&self, n: u64, conns: u64) -> u64 {
        n % self.buckets(conns)
    }

    pub fn render(&self, n: u64) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Index => out.push_str(&n.to_string()),
                Piece::IndexMod(k) => out.push_str(&(n % k).to_string()),
            }
        }
        out
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => f.write_str(s)?,
                Piece::Index => f.write_str("{n}")?,
                Piece::IndexMod(k) => write!(f, "{{n%{k}}}")?,
            }
        }
        Ok(())
    }
}

/// Parses the comma-separated topic patterns every connection subscribes to.
pub fn parse_topics(text: &str) -> Result<Vec<Pattern>, String> {
    text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(Pattern::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("40s").unwrap(), Duration::from_secs(40));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sources() {
        let s = parse_sources("127.0.0.2-127.0.0.4,127.0.0.9").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[3], Ipv4Addr::new(127, 0, 0, 9));
        assert!(parse_sources("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_sources("nope").is_err());
        assert_eq!(parse_sources("127.0.0.255-127.0.1.1").unwrap().len(), 3);
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("u{n}").unwrap();
        assert_eq!(p.render(42), "u42");
        assert_eq!(p.buckets(100), 100);
        let p = Pattern::parse("t{n%10}x").unwrap();
        assert_eq!(p.render(42), "t2x");
        assert_eq!(p.buckets(100), 10);
        assert_eq!(p.buckets(3), 3);
        assert_eq!(p.bucket_of(42, 100), 2);
        assert_eq!(p.to_string(), "t{n%10}x");
        let p = Pattern::parse("news").unwrap();
        assert_eq!(p.buckets(100), 1);
        assert!(Pattern::parse("a{n}{n%3}").is_err());
        assert!(Pattern::parse("a{x}").is_err());
        assert!(Pattern::parse("a b").is_err());
        assert!(Pattern::parse("a{n%0}").is_err());
        assert_eq!(parse_topics("a, b{n%2}").unwrap().len(), 2);
    }
}
