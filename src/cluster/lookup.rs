//! User publishes looked up in the Redis registry, in pipelines, and forwarded to the nodes
//! that hold the user (`c10m.node.<id>`), or handed back to this node's shards when a
//! backend's publish from the bus names a user here.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use async_nats::HeaderMap;
use tokio::sync::mpsc;

use super::{bus, registry, ClusterDrop, ClusterStats, Out};
use crate::push::Message;

/// Users per lookup pipeline.
const LOOKUP_BATCH_MAX: usize = 512;

/// A user publish to look up in the registry. `from_bus`: a backend's publish taken from the
/// user queue (this node delivers too if the user is here); else accepted here (this node
/// has delivered it already).
pub(super) struct Lookup {
    pub(super) user: Box<str>,
    pub(super) msg: Arc<Message>,
    pub(super) from_bus: bool,
}

/// Looks users up in the registry, in pipelines, and forwards to their nodes.
pub(super) struct Lookups {
    pub(super) conn: redis::aio::ConnectionManager,
    pub(super) liveness: Rc<RefCell<registry::Liveness>>,
    pub(super) node: Rc<str>,
    pub(super) out: mpsc::Sender<Out>,
    pub(super) local: mpsc::Sender<(Box<str>, Arc<Message>)>,
    pub(super) stats: Arc<ClusterStats>,
}

impl Lookups {
    pub(super) async fn run(self, mut rx: mpsc::Receiver<Lookup>) {
        let mut batch = Vec::with_capacity(LOOKUP_BATCH_MAX);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < LOOKUP_BATCH_MAX {
                match rx.try_recv() {
                    Ok(l) => batch.push(l),
                    Err(_) => break,
                }
            }
            self.batch(&mut batch).await;
            batch.clear();
        }
    }

    async fn batch(&self, batch: &mut Vec<Lookup>) {
        let n = batch.len() as u64;
        let mut con = self.conn.clone();
        let now = registry::unix_ms();
        let mut pipe = redis::pipe();
        for l in batch.iter() {
            pipe.cmd("ZRANGEBYSCORE").arg(registry::key(&l.user)).arg(now).arg("+inf");
        }
        let found = match pipe.query_async::<Vec<Vec<String>>>(&mut con).await {
            Ok(found) => found,
            Err(_) => {
                ClusterStats::bump(&self.stats.registry_errors, 1);
                self.stats.set_registry_up(false);
                return self.stats.dropped(ClusterDrop::RegistryDown, n);
            }
        };
        self.stats.set_registry_up(true);
        ClusterStats::bump(&self.stats.lookups, n);
        ClusterStats::bump(&self.stats.lookup_batches, 1);
        let liveness = self.liveness.borrow();
        for (l, nodes) in batch.drain(..).zip(found) {
            let mut sent = false;
            for node in nodes {
                if !liveness.usable(&node, now) {
                    ClusterStats::bump(&self.stats.lookups_dead_node, 1);
                    continue;
                }
                if *node == *self.node {
                    if l.from_bus {
                        sent = true;
                        if self.local.try_send((l.user.clone(), Arc::clone(&l.msg))).is_err() {
                            self.stats.dropped(ClusterDrop::QueueFull, 1);
                        }
                    }
                    continue;
                }
                if !bus::valid_tail(&node) || node.contains('.') || !bus::valid_header(&l.user) {
                    self.stats.dropped(ClusterDrop::BadMessage, 1);
                    continue;
                }
                sent = true;
                let mut headers = HeaderMap::new();
                headers.insert(bus::H_ORIGIN, &*self.node);
                headers.insert(bus::H_ID, l.msg.id.to_string().as_str());
                headers.insert(bus::H_USER, &*l.user);
                let subject = bus::node_subject(&node);
                let out = Out { subject, reply: None, headers, msg: Arc::clone(&l.msg) };
                if self.out.try_send(out).is_err() {
                    self.stats.dropped(ClusterDrop::QueueFull, 1);
                }
            }
            if !sent {
                ClusterStats::bump(&self.stats.lookups_empty, 1);
            }
        }
    }
}
