//! Server-Sent Events encoding (the WHATWG `text/event-stream` format).
//!
//! The stream is an HTTP/1.1 200 response without `Content-Length` or chunked coding: it is
//! delimited by the connection's close, which keeps each event's bytes exactly what a shared
//! broadcast buffer holds.

use super::push_decimal;

/// A comment line that carries no event; proxies and clients see traffic on an idle stream.
pub const HEARTBEAT: &[u8] = b": hb\n\n";

/// Writes the response head of an accepted stream and a first `retry:` block, which tells
/// the client how long to wait before reconnecting.
pub fn write_stream_head(out: &mut Vec<u8>, retry_ms: u32) {
    write_stream_head_with(out, retry_ms, &[]);
}

/// [`write_stream_head`] with extra header lines (CORS for browsers on other origins).
pub fn write_stream_head_with(out: &mut Vec<u8>, retry_ms: u32, headers: &[(&str, &str)]) {
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\n\
          Content-Type: text/event-stream\r\n\
          Cache-Control: no-cache\r\n\
          Connection: keep-alive\r\n\
          X-Accel-Buffering: no\r\n",
    );
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    write_retry(out, retry_ms);
}

/// Writes one event: `id:`, an optional `event:` name, the payload as `data:` lines, then
/// the blank line that dispatches it. The payload is split at `\n`, `\r\n` and `\r`, the
/// line ends a client recognizes, so each line becomes one `data:` field and the client
/// joins them back with `\n`; an empty payload is a single empty `data:` field. CR and LF
/// in the event name would end its field early, so they are left out. Non-UTF-8 payload
/// bytes are written as given: what to publish over SSE is the engine's decision.
pub fn write_event(out: &mut Vec<u8>, id: u64, event: Option<&str>, data: &[u8]) {
    let mut digits = Vec::with_capacity(20);
    push_decimal(&mut digits, id);
    write_event_with_id(out, &digits, event, data);
}

/// [`write_event`] with an id of any bytes (a position token); it must hold no CR, LF or NUL.
pub fn write_event_with_id(out: &mut Vec<u8>, id: &[u8], event: Option<&str>, data: &[u8]) {
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id);
    out.push(b'\n');
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend(name.bytes().filter(|&b| b != b'\r' && b != b'\n'));
        out.push(b'\n');
    }
    let mut rest = data;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        let (line, after) = rest.split_at(end.unwrap_or(rest.len()));
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
        rest = match after {
            [b'\r', b'\n', tail @ ..] | [_, tail @ ..] => tail,
            [] => break,
        };
    }
    out.push(b'\n');
}

/// Writes a `retry:` block that changes the client's reconnection delay.
pub fn write_retry(out: &mut Vec<u8>, retry_ms: u32) {
    out.extend_from_slice(b"retry: ");
    push_decimal(out, u64::from(retry_ms));
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, name: Option<&str>, data: &[u8]) -> String {
        let mut out = Vec::new();
        write_event(&mut out, id, name, data);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn stream_head_opens_with_retry() {
        let mut out = Vec::new();
        write_stream_head(&mut out, 3000);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
        assert!(text.contains("Cache-Control: no-cache\r\n"));
        assert!(text.contains("Connection: keep-alive\r\n"));
        assert!(text.contains("X-Accel-Buffering: no\r\n"));
        assert!(!text.contains("Content-Length"));
        assert!(text.ends_with("\r\n\r\nretry: 3000\n\n"));
    }

    #[test]
    fn events_split_data_at_every_line_end() {
        assert_eq!(event(7, None, b"hi"), "id: 7\ndata: hi\n\n");
        assert_eq!(event(0, None, b""), "id: 0\ndata: \n\n");
        assert_eq!(
            event(u64::MAX, Some("news"), b"a\nb\r\nc\rd"),
            "id: 18446744073709551615\nevent: news\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        // Trailing and repeated line ends keep their empty lines, so the client rebuilds
        // the payload exactly (up to CR and CRLF becoming LF).
        assert_eq!(event(1, None, b"a\n"), "id: 1\ndata: a\ndata: \n\n");
        assert_eq!(event(1, None, b"\r\r\n"), "id: 1\ndata: \ndata: \ndata: \n\n");
    }

    #[test]
    fn event_names_cannot_break_the_frame() {
        assert_eq!(event(2, Some("a\r\nb"), b"x"), "id: 2\nevent: ab\ndata: x\n\n");
    }

    #[test]
    fn non_utf8_payloads_pass_through() {
        let mut out = Vec::new();
        write_event(&mut out, 1, None, b"\xff\x00");
        assert_eq!(out, b"id: 1\ndata: \xff\x00\n\n");
    }

    #[test]
    fn retry_and_heartbeat() {
        let mut out = Vec::new();
        write_retry(&mut out, 0);
        assert_eq!(out, b"retry: 0\n\n");
        assert!(HEARTBEAT.starts_with(b":") && HEARTBEAT.ends_with(b"\n\n"));
    }
}
