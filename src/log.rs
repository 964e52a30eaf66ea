//! Logs: `tracing` events to stderr, as text or JSON lines (`--log-format`), filtered by
//! `RUST_LOG` (default `info`). Nothing is logged per connection at `info`; events a peer can
//! cause go through [`Limited`], one line per interval with a count of what it held back.
//!
//! The ready line (`c10m listening clients=… admin=…`) stays on stdout whatever the format:
//! scripts and supervisors wait for it.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `2026-12-03T05:40:00.123456Z  INFO c10m: message key=value`
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`.
    Json,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("--log-format: text or json, not {s:?}")),
        }
    }
}

/// Installs the process's subscriber. `RUST_LOG` filters (`info` when unset); a filter that
/// does not parse is an error that names it.
pub fn init(format: Format) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => EnvFilter::try_new(&s)
            .map_err(|e| format!("RUST_LOG={s:?} is not a filter ({e}); try RUST_LOG=info"))?,
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().flatten_event(false).try_init(),
    };
    // A second init (tests that start servers in-process) keeps the first subscriber.
    let _ = result;
    Ok(())
}

/// At most one line per `every_ms` for an event a peer can cause: the first is logged, the
/// rest are counted and reported with the next line that gets through.
#[derive(Debug)]
pub struct Limited {
    every_ms: u64,
    next_ms: u64,
    held: u64,
}

impl Limited {
    pub const fn new(every_ms: u64) -> Self {
        Limited { every_ms, next_ms: 0, held: 0 }
    }

    /// `Some(held back since the last line)` when a line may be written at `now_ms`.
    pub fn allow(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms < self.next_ms {
            self.held += 1;
            return None;
        }
        self.next_ms = now_ms + self.every_ms;
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_lets_one_line_through_per_interval_and_counts_the_rest() {
        let mut l = Limited::new(1000);
        assert_eq!(l.allow(5), Some(0));
        assert_eq!(l.allow(6), None);
        assert_eq!(l.allow(1004), None);
        assert_eq!(l.allow(1005), Some(2));
        assert_eq!(l.allow(1006), None);
    }

    #[test]
    fn format_names_the_choices() {
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert!("yaml".parse::<Format>().unwrap_err().contains("text or json"));
    }
}
