// How tabs reach the shared hub. Both ways use Web Locks to learn, without heartbeats, that
// the other side is gone: every tab holds `c10m-tab:<key>:<tab>` for its whole life, and the
// hub side waits on each tab's lock, which it is granted only when that tab has closed or
// crashed. The worker (or leader) likewise holds a lock that tabs wait on.

import { Hub } from './hub.js';

/** @param {string} key @param {string} tab */
export const tabLock = (key, tab) => `c10m-tab:${key}:${tab}`;
/** @param {string} key */
export const leaderLock = (key) => `c10m-leader:${key}`;
/** @param {string} key */
export const workerLock = (key) => `c10m-worker:${key}`;

/** A promise that never settles: a lock held with it is held until the context ends. */
const forever = () => new Promise(() => {});

/**
 * Options that can cross a MessagePort: no functions, no constructors.
 * @param {import('./c10m.js').C10mOptions} o
 */
export function portable(o) {
  const out = {};
  for (const [k, v] of Object.entries(o)) {
    if (typeof v === 'function' || k === 'io' || k === 'WebSocket' || k === 'fetch') continue;
    out[k] = v instanceof URL ? String(v) : v; // a URL (workerUrl) cannot be cloned
  }
  out.tokenFromTab = typeof o.token === 'function';
  return out;
}

/**
 * Holds this tab's life lock, then calls `then` (so the hub never sees a tab whose lock
 * is not held yet, and never mistakes it for a closed one).
 * @param {string} name @param {() => void} then @returns {() => void} releases it
 */
function holdForLife(name, then) {
  let release = () => {};
  const held = new Promise((ok) => (release = ok));
  navigator.locks.request(name, () => {
    then();
    return held;
  });
  return () => release();
}

/**
 * One SharedWorker per origin and key holds the connection.
 * @param {{key: string, tab: string, options: any, workerUrl: string | URL,
 *   hello: () => object, receive: (msg: any) => void, token: () => Promise<string>,
 *   failed: () => void}} t
 */
export function joinWorker(t) {
  let closed = false;
  /** @type {MessagePort | null} */
  let port = null;
  let spawns = 0;
  const spawn = () => {
    // Bounded: a worker that keeps dying is given up on, and the tab falls back.
    if (closed || ++spawns > 8) return t.failed();
    const w = new SharedWorker(t.workerUrl, { type: 'module', name: `c10m:${t.key}` });
    let heard = false;
    w.onerror = () => {
      if (!heard) t.failed();
    };
    port = w.port;
    port.onmessage = async (e) => {
      heard = true;
      const msg = e.data;
      if (msg.op === 'ready') {
        // The worker holds its lock now; being granted it means the worker died.
        navigator.locks.request(workerLock(t.key), () => {
          if (!closed) queueMicrotask(spawn);
        });
      } else if (msg.op === 'token-request') {
        port?.postMessage({ op: 'token-reply', rid: msg.rid, value: await t.token() });
      } else {
        t.receive(msg);
      }
    };
    port.start();
    port.postMessage({ op: 'hello', options: t.options, ...t.hello() });
  };
  const release = holdForLife(tabLock(t.key, t.tab), spawn);
  return {
    /** @param {object} msg */
    send(msg) {
      port?.postMessage(msg);
    },
    close() {
      closed = true;
      port?.postMessage({ op: 'bye', tab: t.tab });
      port?.close();
      release();
    },
  };
}

/**
 * The leader tab (the holder of the leader lock) runs the hub; the others follow through a
 * BroadcastChannel. When the leader closes, the lock passes to the next tab in line, which
 * starts a hub from the newest position it saw and calls the followers back.
 * @param {{key: string, tab: string, options: any, hello: () => object,
 *   receive: (msg: any) => void, leading: (yes: boolean) => void}} t
 */
export function joinLeader(t) {
  const bc = new BroadcastChannel(`c10m:${t.key}`);
  let closed = false;
  /** @type {Hub | null} */
  let hub = null;
  let stopLeading = () => {};
  const watched = new Set();
  const broadcast = (msg) => {
    bc.postMessage(msg);
    t.receive(msg);
  };
  /** @param {string} tab */
  const watch = (tab) => {
    if (watched.has(tab)) return;
    watched.add(tab);
    navigator.locks.request(tabLock(t.key, tab), () => {
      watched.delete(tab);
      hub?.leave(tab);
    });
  };
  bc.onmessage = (e) => {
    const msg = e.data;
    if (closed) return;
    if (hub) {
      if (msg.op === 'hello') {
        watch(msg.tab);
        hub.join(msg.tab, msg.topics, msg.position);
      } else if (msg.op === 'topics') {
        hub.topics(msg.tab, msg.topics);
      } else if (msg.op === 'bye') {
        hub.leave(msg.tab);
      }
    } else if (msg.op === 'leader') {
      bc.postMessage({ op: 'hello', ...t.hello() });
    } else if (msg.op !== 'hello' && msg.op !== 'topics' && msg.op !== 'bye') {
      t.receive(msg);
    }
  };
  const release = holdForLife(tabLock(t.key, t.tab), () => {
    bc.postMessage({ op: 'hello', ...t.hello() });
    navigator.locks.request(leaderLock(t.key), () => {
      if (closed) return undefined;
      hub = new Hub(t.options, broadcast);
      const me = /** @type {any} */ (t.hello());
      hub.join(t.tab, me.topics, me.position);
      t.leading(true);
      bc.postMessage({ op: 'leader', tab: t.tab });
      return new Promise((ok) => (stopLeading = ok));
    });
  });
  return {
    /** @param {any} msg */
    send(msg) {
      if (hub) {
        if (msg.op === 'topics') hub.topics(t.tab, msg.topics);
      } else {
        bc.postMessage(msg);
      }
    },
    close() {
      closed = true;
      hub?.close();
      hub = null;
      bc.postMessage({ op: 'bye', tab: t.tab });
      stopLeading();
      release();
      bc.close();
    },
  };
}
