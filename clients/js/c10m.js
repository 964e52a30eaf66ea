// c10m-client: the smart client for the c10m push server.
//
//   const c = new C10m({ endpoints: ['https://a.example', 'https://b.example'],
//                        user: 'u1', topics: ['news'], share: 'auto' });
//   c.on('message', (m) => console.log(m.topic, m.data));
//   c.on('state', (s) => console.log(s.state, s.transport, s.endpoint));
//   c.subscribe('sport'); … c.close();
//
// Layers, each its own file: policy.js (backoff, goaway, close codes: pure), endpoints.js
// (choice by measured latency and load: pure, plus the probe), nodes.js (the server's node
// list: a parser and its fetch), sse.js (an incremental parser),
// transports.js (WebSocket, SSE over fetch, long polling behind one interface), core.js (one
// connection's state machine), hub.js (one connection for many tabs), share.js and
// worker.js (how tabs reach the hub: SharedWorker, or a Web Locks leader tab).

import { Emitter } from './emitter.js';
import { Hub } from './hub.js';
import { joinLeader, joinWorker, portable } from './share.js';

export { Connection, OPTION_DEFAULTS, topicOf } from './core.js';
export { backoffDelayMs, closeAction, parseGoaway, isPositionToken, DEFAULTS } from './policy.js';
export { EndpointTable, bestEndpoint, endpointScore, loadPressure, probeCandidates, httpBase }
  from './endpoints.js';
export { SseParser } from './sse.js';
export { parseNodes } from './nodes.js';

/**
 * @typedef {object} C10mOptions
 * @property {string | string[]} endpoints base URLs (http(s)://, ws(s):// or host:port)
 * @property {string} [user]
 * @property {string[]} [topics]
 * @property {string | (() => string | Promise<string>)} [token] sent as `?token=`
 * @property {'auto' | 'worker' | 'leader' | 'none'} [share] default 'auto'
 * @property {string} [key] tabs with the same key share; default from user and endpoints
 * @property {string | URL} [workerUrl] the SharedWorker script (worker.js)
 * @property {string} [position] a position token to resume from
 * @property {('ws' | 'sse' | 'poll')[]} [transports]
 * @property {boolean} [discover] read `GET /nodes` and choose by latency and load; default true
 * @property {number} [nodesRefreshMs] @property {number} [loadWeight] @property {number} [tabs]
 * @property {any} [WebSocket] @property {typeof fetch} [fetch]
 * @property {object} [io] injected clocks, timers and random (tests)
 * @property {boolean} [autoConnect]
 */

/** Recent ids a tab remembers, to drop a message it already had (after a leader change). */
const TAB_SEEN_MAX = 1024;

/** @param {C10mOptions} o */
function chooseMode(o) {
  const want = o.share ?? 'auto';
  const g = /** @type {any} */ (globalThis);
  const locks = !!g.navigator?.locks && typeof g.BroadcastChannel === 'function';
  const worker = typeof g.SharedWorker === 'function' && locks;
  if (want === 'worker' && worker) return 'worker';
  if ((want === 'worker' || want === 'leader' || want === 'auto') && locks) {
    return want === 'auto' && worker ? 'worker' : 'leader';
  }
  return 'none';
}

/** The client a page (or worker, or Node program) uses. */
export class C10m extends Emitter {
  /** @param {C10mOptions} options */
  constructor(options) {
    super();
    this.options = options;
    this.tab = Math.random().toString(36).slice(2) + Date.now().toString(36);
    /** @type {Set<string>} */
    this.topicSet = new Set(options.topics ?? []);
    /** @type {Set<string>} */
    this.seen = new Set();
    /** @type {string | null} */
    this.position = options.position ?? null;
    this.state = 'idle';
    /** @type {string | null} */
    this.transport = null;
    /** @type {string | null} */
    this.endpoint = null;
    /** @type {string | null} the id of the node connected to, when a node list named it */
    this.node = null;
    this.tabs = 1;
    this.leader = false;
    this.mode = chooseMode(options);
    this.key = options.key ??
      `${options.user ?? ''}|${[options.endpoints].flat().join(',')}`;
    /** @type {{send: (m: any) => void, close: () => void}} */
    this.link = this.open(this.mode);
    this.onPageHide = () => this.close();
    /** @type {any} */ (globalThis).addEventListener?.('pagehide', this.onPageHide);
  }

  /** @param {string} mode */
  open(mode) {
    const hello = () => ({ tab: this.tab, topics: [...this.topicSet], position: this.position });
    const receive = (msg) => this.receive(msg);
    if (mode === 'worker') {
      const url = this.options.workerUrl ?? new URL('./worker.js', import.meta.url);
      return joinWorker({
        key: this.key, tab: this.tab, options: portable(this.options), workerUrl: url, hello,
        receive,
        token: async () => {
          const t = this.options.token;
          return String(typeof t === 'function' ? await t() : t ?? '');
        },
        failed: () => {
          // The worker could not start (a CSP, a missing file): lead or stand alone.
          this.link?.close();
          this.mode = chooseMode({ ...this.options, share: 'leader' });
          this.link = this.open(this.mode);
        },
      });
    }
    if (mode === 'leader') {
      return joinLeader({
        key: this.key, tab: this.tab, options: this.options, hello, receive,
        leading: (yes) => {
          this.leader = yes;
          this.emit('leader', yes);
        },
      });
    }
    this.leader = true;
    const hub = new Hub(this.options, receive);
    // After the constructor returns, so the caller's listeners see the first state.
    queueMicrotask(() => hub.join(this.tab, [...this.topicSet], this.position));
    return {
      send: (msg) => {
        if (msg.op === 'topics') hub.topics(this.tab, msg.topics);
      },
      close: () => hub.close(),
    };
  }

  /** @param {any} msg a hub message */
  receive(msg) {
    switch (msg.op) {
      case 'msg': {
        const m = msg.m;
        if (m.id) {
          this.position = m.id;
          if (this.seen.has(m.id)) return;
          this.seen.add(m.id);
          if (this.seen.size > TAB_SEEN_MAX) this.seen.delete(this.seen.values().next().value);
        }
        if (m.topic != null && !this.topicSet.has(m.topic)) return;
        this.emit('message', m);
        break;
      }
      case 'pos':
        this.position = msg.id;
        break;
      case 'state':
        this.state = msg.s.state;
        this.transport = msg.s.transport;
        this.endpoint = msg.s.endpoint;
        this.node = msg.s.node ?? null;
        this.emit('state', msg.s);
        break;
      case 'tabs':
        this.tabs = msg.n;
        this.emit('tabs', msg.n);
        break;
      case 'control': {
        // A server-side (un)subscription (POST /subscribe) becomes this tab's own, so its
        // messages are not filtered out and a reconnect keeps it.
        const b = msg.body ?? {};
        if (b.server === true && typeof b.subscribed === 'string' && !this.topicSet.has(b.subscribed)) {
          this.subscribe(b.subscribed);
        } else if (b.server === true && typeof b.unsubscribed === 'string' && this.topicSet.has(b.unsubscribed)) {
          this.unsubscribe(b.unsubscribed);
        }
        this.emit('control', b);
        break;
      }
      case 'gap':
      case 'goaway':
      case 'endpoint':
      case 'nodes':
      case 'error':
        this.emit(msg.op, msg.g ?? msg.e ?? msg.body);
        break;
      default:
        break;
    }
  }

  /** @param {string} topic */
  subscribe(topic) {
    this.topicSet.add(topic);
    this.link.send({ op: 'topics', tab: this.tab, topics: [...this.topicSet] });
  }

  /** @param {string} topic */
  unsubscribe(topic) {
    this.topicSet.delete(topic);
    this.link.send({ op: 'topics', tab: this.tab, topics: [...this.topicSet] });
  }

  /** Leaves the shared connection (the last tab out closes it). */
  close() {
    /** @type {any} */ (globalThis).removeEventListener?.('pagehide', this.onPageHide);
    this.link.close();
    if (this.state !== 'closed') {
      this.state = 'closed';
      this.emit('state', { state: 'closed', transport: null, endpoint: this.endpoint });
    }
  }
}

export default C10m;
