//! WebSocket with tungstenite: reading data and control messages, subscribing.

use std::net::TcpStream;

use tungstenite::Message;

pub type Ws = tungstenite::WebSocket<TcpStream>;

/// The next data or close message, skipping pings and pongs (tungstenite answers pings).
pub fn ws_next(ws: &mut Ws) -> Message {
    loop {
        match ws.read() {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(m) => return m,
            Err(e) => panic!("WebSocket read: {e}"),
        }
    }
}

/// The next text message; fails on anything else.
pub fn ws_text(ws: &mut Ws) -> String {
    match ws_next(ws) {
        Message::Text(t) => t,
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Sends a JSON control message and returns the server's JSON reply.
pub fn ws_control(ws: &mut Ws, msg: serde_json::Value) -> serde_json::Value {
    ws.send(Message::text(msg.to_string())).expect("send control");
    let reply = ws_text(ws);
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?} not JSON: {e}"))
}

/// Subscribes to `topic` and waits for `{"subscribed":topic}`.
pub fn ws_subscribe(ws: &mut Ws, topic: &str) {
    let reply = ws_control(ws, serde_json::json!({ "subscribe": topic }));
    assert_eq!(reply, serde_json::json!({ "subscribed": topic }));
}

pub fn ws_unsubscribe(ws: &mut Ws, topic: &str) {
    let reply = ws_control(ws, serde_json::json!({ "unsubscribe": topic }));
    assert_eq!(reply, serde_json::json!({ "unsubscribed": topic }));
}

/// The close frame a WebSocket gets next: its code and its reason read as JSON.
pub fn ws_close_json(ws: &mut Ws) -> (u16, serde_json::Value) {
    match ws_next(ws) {
        Message::Close(Some(f)) => {
            (u16::from(f.code), serde_json::from_str(&f.reason).expect("a JSON close reason"))
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}
