//! Server-Sent Events: a blocking reader of the event stream, and position tokens.

use super::*;

/// One blank-line-terminated block of an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// An event: its `id:` and its `data:` lines joined with `\n`.
    Event {
        id: Option<String>,
        data: Vec<u8>,
    },
    /// A block of comment lines only (`: hb`), without the leading colon and space.
    Comment(String),
    Retry(u32),
    /// An event with an `event:` name (the server's `goaway`, `expired`, `error`, `c10m-gap`).
    Named {
        event: String,
        data: Vec<u8>,
    },
    /// A block with only an `id:`: the server moving the client's position (no event fires).
    Position(String),
}

/// An SSE client over a raw TCP stream.
pub struct Sse {
    pub reader: BufReader<TcpStream>,
    pub headers: Vec<(String, String)>,
    pub retry_ms: Option<u32>,
    /// The last `id:` seen in any block, as a browser's `EventSource.lastEventId`.
    pub last_id: Option<String>,
}

impl Sse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The next block but position blocks (whose id lands in `last_id`); `Ok(None)` at a
    /// clean EOF between blocks.
    pub fn next_item(&mut self) -> io::Result<Option<SseItem>> {
        loop {
            match self.next_block()? {
                Some(SseItem::Position(_)) => continue,
                other => return Ok(other),
            }
        }
    }

    /// The next block of any kind.
    pub fn next_block(&mut self) -> io::Result<Option<SseItem>> {
        let mut id = None;
        let mut data: Option<Vec<Vec<u8>>> = None;
        let mut comments: Vec<String> = Vec::new();
        let mut retry = None;
        let mut event: Option<String> = None;
        let mut started = false;
        loop {
            let mut line = Vec::new();
            let n = self.reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                if started {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream ended inside a block",
                    ));
                }
                return Ok(None);
            }
            assert!(line.ends_with(b"\n"), "line without LF: {:?}", lossy(&line));
            line.pop();
            if line.is_empty() {
                if !started {
                    continue;
                }
                if id.is_some() {
                    self.last_id.clone_from(&id);
                }
                if let Some(lines) = data {
                    let data = lines.join(&b'\n');
                    if let Some(event) = event {
                        return Ok(Some(SseItem::Named { event, data }));
                    }
                    return Ok(Some(SseItem::Event { id, data }));
                }
                if let Some(ms) = retry {
                    return Ok(Some(SseItem::Retry(ms)));
                }
                if let (Some(id), true) = (id, comments.is_empty()) {
                    return Ok(Some(SseItem::Position(id)));
                }
                return Ok(Some(SseItem::Comment(comments.join("\n"))));
            }
            started = true;
            if let Some(c) = line.strip_prefix(b":") {
                comments.push(lossy(c.strip_prefix(b" ").unwrap_or(c)));
                continue;
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (&line[..], &b""[..]),
            };
            match field {
                b"id" => id = Some(lossy(value)),
                b"data" => data.get_or_insert_with(Vec::new).push(value.to_vec()),
                b"retry" => retry = lossy(value).parse().ok(),
                b"event" => event = Some(lossy(value)),
                other => panic!("unexpected SSE field {:?}", lossy(other)),
            }
        }
    }

    /// The next event, skipping heartbeat comments; fails on EOF or timeout.
    pub fn next_event(&mut self) -> (Option<String>, Vec<u8>) {
        loop {
            match self.next_item() {
                Ok(Some(SseItem::Event { id, data })) => return (id, data),
                Ok(Some(SseItem::Comment(_))) => continue,
                other => panic!("expected an SSE event, got {other:?}"),
            }
        }
    }

    /// The next event's data as text.
    pub fn next_text(&mut self) -> String {
        lossy(&self.next_event().1)
    }

    /// Expects the stream to end (EOF), skipping heartbeats.
    pub fn expect_eof(&mut self) {
        loop {
            match self.next_item() {
                Ok(None) => return,
                Ok(Some(SseItem::Comment(_) | SseItem::Retry(_))) => continue,
                // A server ending the stream on purpose says when to come back first.
                Ok(Some(SseItem::Named { event, .. })) if event == "goaway" => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                other => panic!("expected the SSE stream to end, got {other:?}"),
            }
        }
    }
}

/// A position token (`epoch-topics[-user]`, base 36) as SSE ids and JSON envelopes carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub epoch: u64,
    pub topics: u64,
    pub user: Option<u64>,
}

/// Parses a position token; panics on anything else.
pub fn position(id: &str) -> Position {
    let n = |s: &str| u64::from_str_radix(s, 36).unwrap_or_else(|_| panic!("bad token {id:?}"));
    let parts: Vec<&str> = id.split('-').collect();
    assert!((2..=3).contains(&parts.len()), "bad token {id:?}");
    Position { epoch: n(parts[0]), topics: n(parts[1]), user: parts.get(2).map(|p| n(p)) }
}
