//! The client side of Server-Sent Events: the request, and a line reader that turns the
//! event stream into messages and heartbeats.
//!
//! Only a partial line is ever buffered (by the caller); the reader's own state is one
//! flag, so an idle SSE connection holds no buffer.

#![forbid(unsafe_code)]

/// Longest line accepted from the server.
pub const LINE_BYTES_MAX: usize = (1 << 20) + 4096;

/// Appends the event-stream request for `path_and_query`.
pub fn request(out: &mut Vec<u8>, host: &str, path_and_query: &str) {
    out.extend_from_slice(
        format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
             Cache-Control: no-cache\r\n\r\n"
        )
        .as_bytes(),
    );
}

/// What one line of the stream meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The first `data:` line of an event: the message.
    Message(&'a [u8]),
    /// A comment line (`:` first): a heartbeat.
    Heartbeat,
    /// Anything else (`id:`, `retry:`, further data lines, the blank line).
    Other,
}

/// Per-connection reader state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reader {
    /// The current event already produced its message.
    in_event: bool,
}

impl Reader {
    /// Interprets one line (without its line ending).
    pub fn line<'a>(&mut self, line: &'a [u8]) -> Line<'a> {
        if line.is_empty() {
            self.in_event = false;
            return Line::Other;
        }
        if line[0] == b':' {
            return Line::Heartbeat;
        }
        if let Some(rest) = line.strip_prefix(b"data") {
            if rest.is_empty() || rest[0] == b':' {
                let value = rest.get(1..).unwrap_or(&[]);
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if !self.in_event {
                    self.in_event = true;
                    return Line::Message(value);
                }
            }
        }
        Line::Other
    }
}

/// The first complete line of `bytes` (without its LF or CR LF ending) and the bytes it
/// used; `None` when no line is complete yet.
pub fn next_line(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let end = bytes.iter().position(|b| *b == b'\n')?;
    let line = &bytes[..end];
    Some((line.strip_suffix(b"\r").unwrap_or(line), end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events() {
        let stream =
            b"retry: 1000\n: hb\nid: 1\ndata: s=1 t=2\n\nid: 2\r\ndata:x\r\ndata: y\r\n\r\n";
        let mut reader = Reader::default();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        while let Some((line, used)) = next_line(rest) {
            rest = &rest[used..];
            match reader.line(line) {
                Line::Message(m) => got.push(m.to_vec()),
                Line::Heartbeat => got.push(b"HB".to_vec()),
                Line::Other => {}
            }
        }
        assert!(rest.is_empty());
        assert_eq!(got, vec![b"HB".to_vec(), b"s=1 t=2".to_vec(), b"x".to_vec()]);
    }

    #[test]
    fn partial_line_left() {
        assert_eq!(next_line(b"data: a\ndata: b"), Some((&b"data: a"[..], 8)));
        assert_eq!(next_line(b"data: b"), None);
    }
}
