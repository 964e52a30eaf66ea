// The SharedWorker that holds a browser's one connection for all tabs of an origin (one
// worker per key: its name). Tabs connect with {op:'hello'}; see share.js and hub.js.

import { Hub } from './hub.js';
import { tabLock, workerLock } from './share.js';

const key = String(self.name).replace(/^c10m:/, '');
/** @type {Map<string, MessagePort>} */
const ports = new Map();
/** @type {Hub | null} */
let hub = null;
let ready = false;
let rid = 0;
/** @type {Map<number, (v: string) => void>} */
const tokenWaits = new Map();

const broadcast = (msg) => {
  for (const p of ports.values()) p.postMessage(msg);
};

// Held for the worker's life; tabs wait on it to learn that the worker died.
navigator.locks.request(workerLock(key), () => {
  ready = true;
  broadcast({ op: 'ready' });
  return new Promise(() => {});
});

/** Asks a tab for a fresh token (functions cannot cross into the worker). */
function tokenFromTab() {
  const port = ports.values().next().value;
  if (!port) return Promise.reject(new Error('c10m: no tab to ask for a token'));
  const id = ++rid;
  return new Promise((ok, fail) => {
    const t = setTimeout(() => {
      tokenWaits.delete(id);
      fail(new Error('c10m: no token from the tab within 10 s'));
    }, 10000);
    tokenWaits.set(id, (v) => {
      clearTimeout(t);
      ok(v);
    });
    port.postMessage({ op: 'token-request', rid: id });
  });
}

/** @param {string} tab */
function leave(tab) {
  ports.delete(tab);
  hub?.leave(tab);
  if (ports.size === 0) {
    hub?.close();
    hub = null;
  }
}

/** @param {MessagePort} port @param {any} msg */
function onTabMessage(port, msg) {
  switch (msg.op) {
    case 'hello': {
      const fresh = !ports.has(msg.tab);
      ports.set(msg.tab, port);
      if (!hub) {
        const options = { ...msg.options };
        if (options.tokenFromTab) options.token = tokenFromTab;
        hub = new Hub(options, broadcast);
      }
      hub.join(msg.tab, msg.topics, msg.position);
      if (ready) port.postMessage({ op: 'ready' });
      if (fresh) navigator.locks.request(tabLock(key, msg.tab), () => leave(msg.tab));
      break;
    }
    case 'topics':
      hub?.topics(msg.tab, msg.topics);
      break;
    case 'bye':
      leave(msg.tab);
      break;
    case 'token-reply':
      tokenWaits.get(msg.rid)?.(msg.value);
      tokenWaits.delete(msg.rid);
      break;
    default:
      break;
  }
}

self.onconnect = (/** @type {MessageEvent} */ e) => {
  const port = e.ports[0];
  port.onmessage = (ev) => onTabMessage(port, ev.data);
  port.start();
};
