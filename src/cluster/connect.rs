//! The bridge's NATS connection, and the one thing a live upgrade adds to it: the new
//! process connects to the same server of a NATS cluster as the old one.
//!
//! Why: a command from another node (`c10m.cmd`) reaches both processes of an upgrading
//! node, and the old one's fence waits for its own marker to come back from the bus
//! (`super::upgrade`), so that every command the new process received before the last
//! connection moved has reached the old shards too. That holds when one server delivers to
//! both: it queues each command for both at once, before any later marker. Two servers of a
//! cluster each get the command over their own route, and the new process's server may
//! deliver it long before the old process's server does. So the old process says which
//! server it is on (its id, in the takeover's welcome), and the new one, when `--bus` led it
//! elsewhere, tries the cluster's client URLs (`connect_urls` of the server's INFO) until it
//! finds that server, within [`FOLLOW_WAIT`]; failing that it stays where it is and says so.
#![forbid(unsafe_code)]

use std::io;
use std::time::{Duration, Instant};

/// How long the new process looks for its predecessor's server, all candidates together
/// (inside the 10 s the takeover gives the bus: `server::bus_answers`).
pub const FOLLOW_WAIT: Duration = Duration::from_secs(5);

/// Connects node `node_id`'s bridge to `url`; with `follow` (the id of the server a live
/// upgrade's old process is on), to that server of the cluster if it can be reached.
pub async fn connect(
    url: &str,
    node_id: &str,
    follow: Option<&str>,
) -> io::Result<async_nats::Client> {
    let options = || async_nats::ConnectOptions::new().name(format!("c10m-{node_id}"));
    let nats = options()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .map_err(|e| io::Error::other(format!("--bus {url}: {e}")))?;
    let Some(want) = follow.filter(|id| !id.is_empty()) else {
        return Ok(nats);
    };
    let deadline = Instant::now() + FOLLOW_WAIT;
    // The first connection is made in the background: its server is known once it answers.
    if tokio::time::timeout(FOLLOW_WAIT, nats.flush()).await.map_or(true, |r| r.is_err()) {
        tracing::warn!(
            "handover: the bus did not answer in {} s; not looking for the old process's \
             server {want}",
            FOLLOW_WAIT.as_secs()
        );
        return Ok(nats);
    }
    let info = nats.server_info();
    if info.server_id == want {
        tracing::info!("handover: on the old process's bus server ({want})");
        return Ok(nats);
    }
    for addr in &info.connect_urls {
        let candidate = candidate_url(url, addr);
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Ok(other)) = tokio::time::timeout(left, options().connect(&candidate)).await else {
            continue;
        };
        if other.server_info().server_id == want {
            tracing::info!(
                "handover: --bus led to server {}; connected to the old process's server \
                 {want} instead, at {addr}",
                info.server_id
            );
            close(nats).await;
            return Ok(other);
        }
        close(other).await;
    }
    tracing::warn!(
        "handover: this process's bus server {} is not the old process's {want}, and no \
         client URL of the cluster ({:?}) reached it; commands from other nodes may reach \
         the two processes in different orders (docs/handover.md)",
        info.server_id,
        info.connect_urls
    );
    Ok(nats)
}

/// Closes a connection the bridge does not keep (bounded: it has nothing to flush).
async fn close(nats: async_nats::Client) {
    let _ = tokio::time::timeout(Duration::from_secs(1), nats.drain()).await;
}

/// A `connect_urls` entry (`host:port`, or already a URL) as a URL like `bus`: its scheme
/// (`nats`, `tls`) and its credentials, if it has any.
fn candidate_url(bus: &str, addr: &str) -> String {
    if addr.contains("://") {
        return addr.to_owned();
    }
    let (scheme, rest) = bus.split_once("://").unwrap_or(("nats", bus));
    match rest.rsplit_once('@') {
        Some((auth, _)) => format!("{scheme}://{auth}@{addr}"),
        None => format!("{scheme}://{addr}"),
    }
}

#[cfg(test)]
mod tests {
    use super::candidate_url;

    #[test]
    fn a_candidate_keeps_the_scheme_and_credentials_of_the_bus_url() {
        assert_eq!(candidate_url("nats://10.0.0.1:4222", "10.0.0.2:4222"), "nats://10.0.0.2:4222");
        assert_eq!(candidate_url("tls://n1:4222", "n2:4222"), "tls://n2:4222");
        assert_eq!(candidate_url("nats://u:p@n1:4222", "n2:4222"), "nats://u:p@n2:4222");
        assert_eq!(candidate_url("n1:4222", "n2:4222"), "nats://n2:4222");
        assert_eq!(candidate_url("nats://n1", "nats://n2:4222"), "nats://n2:4222");
    }
}
