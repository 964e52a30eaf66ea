// One connection to c10m as an explicit state machine:
//
//   idle ──connect()──▶ connecting ──open──▶ connected
//                          │  ▲                 │
//            failed open   │  │ timer           │ end (goaway, close, error)
//                          ▼  │                 ▼
//                         waiting ◀─────────────┘          close() from any: closed
//                                                          fatal close code: failed
//
// Inputs are the transports' events (see transports.js) and timers; all I/O (WebSocket,
// fetch, clocks, random) is injected through `io`, so tests can drive it.

import { Emitter } from './emitter.js';
import { DEFAULTS, backoffDelayMs, isPositionToken } from './policy.js';
import { ENDPOINT_DEFAULTS, EndpointTable, bestEndpoint, endpointScore, probeCandidates,
  probeRttMs } from './endpoints.js';
import { fetchNodes } from './nodes.js';
import { TRANSPORTS } from './transports.js';

/** Option defaults, each with its reason; README.md lists them for users. */
export const OPTION_DEFAULTS = Object.freeze({
  transports: ['ws', 'sse', 'poll'],
  backoffMinMs: DEFAULTS.backoffMinMs,
  backoffMaxMs: DEFAULTS.backoffMaxMs,
  /** A connection up this long (ms) was healthy: its end restarts the backoff. */
  stableMs: DEFAULTS.stableMs,
  /** An attempt that has not opened after this long (ms) failed. */
  connectTimeoutMs: 10000,
  /** How long the server may hold a long poll (ms); the server's default is 25 s. */
  pollTimeoutMs: 25000,
  /** An SSE stream silent this long (ms) is dead: the server's heartbeat is every 15 s. */
  sseStallMs: 45000,
  /** After WebSocket failed, a reconnect this much later (ms) tries it first again. */
  wsReprobeMs: 60000,
  /** Message ids remembered to drop duplicates (a replay overlapping what arrived). */
  dedupIds: 1024,
  /** After the browser's `online` event, retries spread over this long (ms). */
  onlineSpreadMs: 2000,
  credentials: /** @type {RequestCredentials} */ ('same-origin'),
  probeTimeoutMs: ENDPOINT_DEFAULTS.probeTimeoutMs,
  probePath: ENDPOINT_DEFAULTS.probePath,
  /** Read the server's node list (`GET /nodes`) and choose among its live nodes by latency
   * and load. A server without the route answers 404 and the client keeps its own list. */
  discover: true,
  /** The node list is read again at a reconnect once it is this old (ms); a reconnect after
   * a goaway or a failed round reads it again whatever its age. */
  nodesRefreshMs: 30000,
  /** An endpoint's RTT measured within this long (ms), with no failure since, is used as it
   * is instead of probing again. */
  rttFreshMs: 30000,
  /** How many tabs share this connection, told to the server (`?tabs=`, `{"tabs":N}`). */
  tabs: 1,
});

/** The server counts 1..=1000 tabs per connection. */
export const TABS_MAX = 1000;

/** A node list is asked of at most this many endpoints per reconnect. */
const NODES_ASKS_MAX = 2;

/** @param {string | null} stream @returns {string | null} */
export function topicOf(stream) {
  return typeof stream === 'string' && stream.startsWith('topic:') ? stream.slice(6) : null;
}

/** @param {unknown} n @returns {number} a tab count the server accepts */
function clampTabs(n) {
  const v = Math.floor(Number(n));
  return Number.isFinite(v) ? Math.min(TABS_MAX, Math.max(1, v)) : 1;
}

/** The default I/O: the platform's own. */
function platformIo() {
  return {
    WebSocket: globalThis.WebSocket,
    fetch: globalThis.fetch?.bind(globalThis),
    now: () => performance.now(),
    setTimeout: (fn, ms) => setTimeout(fn, ms),
    clearTimeout: (t) => clearTimeout(t),
    random: Math.random,
  };
}

/**
 * A single connection with reconnects, transport fallback, endpoint choice and resume.
 * Events: 'state', 'message', 'gap', 'goaway', 'position', 'control', 'endpoint', 'error'.
 */
export class Connection extends Emitter {
  /** @param {import('./c10m.js').C10mOptions} options */
  constructor(options) {
    super();
    const o = { ...OPTION_DEFAULTS, ...options };
    this.o = o;
    this.io = { ...platformIo(), ...(options.io ?? {}) };
    if (options.WebSocket) this.io.WebSocket = options.WebSocket;
    if (options.fetch) this.io.fetch = options.fetch;
    const urls = Array.isArray(o.endpoints) ? o.endpoints : [o.endpoints];
    this.table = new EndpointTable(urls.filter(Boolean), {
      probeTimeoutMs: o.probeTimeoutMs, probePath: o.probePath,
      ...(o.loadWeight != null ? { loadWeight: o.loadWeight } : {}),
    });
    /** @type {number | null} when the node list was last read (asked), monotonic ms */
    this.nodesAtMs = null;
    /** @type {string | null} the endpoint whose goaway ended the last connection */
    this.leftEndpoint = null;
    this.tabsCount = clampTabs(o.tabs);
    this.names = o.transports.filter((n) => n in TRANSPORTS && this.usable(n));
    if (this.names.length === 0) throw new Error('c10m: no usable transport');
    /** @type {Set<string>} */
    this.topicSet = new Set(o.topics ?? []);
    /** @type {string | null} */
    this.position = isPositionToken(o.position) ? o.position : null;
    this.state = 'idle';
    /** @type {import('./transports.js').Transport | null} */
    this.transport = null;
    this.generation = 0;
    this.index = 0;
    /** @type {number | null} */
    this.lastGoodIndex = null;
    this.failsInRound = 0;
    this.attempt = 0;
    this.wsFailedAtMs = -Infinity;
    /** @type {string | null} */
    this.endpoint = null;
    /** @type {string | null} */
    this.nextEndpoint = null;
    this.rechoose = true;
    /** @type {number | null} */
    this.openedAtMs = null;
    this.gotMessage = false;
    this.timer = null;
    /** @type {{atMs: number, goaway: boolean} | null} */
    this.wait = null;
    /** @type {string | null} */
    this.tokenValue = typeof o.token === 'string' ? o.token : null;
    /** @type {Set<string>} */
    this.seen = new Set();
    this.onOnline = () => this.spreadAfterOnline();
    globalThis.addEventListener?.('online', this.onOnline);
    if (o.autoConnect !== false) this.connect();
  }

  /** @param {string} name */
  usable(name) {
    if (name === 'ws') return typeof this.io.WebSocket === 'function';
    return typeof this.io.fetch === 'function';
  }

  /** @returns {string[]} */
  topics() {
    return [...this.topicSet];
  }

  /** The transport in use or being tried, or null. */
  get transportName() {
    return this.transport?.name ?? null;
  }

  /** Starts connecting (only from idle). */
  connect() {
    if (this.state === 'idle') this.attemptNow();
  }

  /** Ends the connection for good. */
  close() {
    if (this.state === 'closed') return;
    this.stopTransport();
    this.io.clearTimeout(this.timer);
    globalThis.removeEventListener?.('online', this.onOnline);
    this.setState('closed', {});
  }

  /** @param {string} topic */
  subscribe(topic) {
    if (this.topicSet.has(topic)) return;
    this.topicSet.add(topic);
    this.topicsChanged({ subscribe: topic });
  }

  /** @param {string} topic */
  unsubscribe(topic) {
    if (!this.topicSet.delete(topic)) return;
    this.topicsChanged({ unsubscribe: topic });
  }

  /** Replaces the topic set (merged topics of shared tabs). @param {string[]} topics */
  setTopics(topics) {
    const next = new Set(topics);
    const add = [...next].filter((t) => !this.topicSet.has(t));
    const drop = [...this.topicSet].filter((t) => !next.has(t));
    for (const t of add) this.subscribe(t);
    for (const t of drop) this.unsubscribe(t);
  }

  /**
   * How many tabs share this connection. A WebSocket tells the server at once
   * (`{"tabs":N}`); SSE and long polling tell it at their next connect (`?tabs=N`).
   * @param {number} n
   */
  setTabs(n) {
    const v = clampTabs(n);
    if (v === this.tabsCount) return;
    this.tabsCount = v;
    const t = this.transport;
    if (t?.send && this.state === 'connected') t.send({ tabs: v });
  }

  /** A WebSocket changes topics in-band; SSE reconnects (resuming); a poll re-asks. */
  topicsChanged(control) {
    const t = this.transport;
    if (!t || this.state !== 'connected') return; // the next connect carries the topics
    if (t.send) {
      t.send(control);
    } else if (t.topicsChanged) {
      t.topicsChanged();
    } else {
      this.stopTransport();
      this.attemptNow();
    }
  }

  // ----- internals -----

  setState(state, extra) {
    this.state = state;
    const node = this.endpoint ? this.table.byUrl.get(this.endpoint)?.node ?? null : null;
    this.emit('state', {
      state, transport: this.transportName, endpoint: this.endpoint, node, ...extra,
    });
  }

  stopTransport() {
    this.generation += 1;
    this.transport?.close();
    this.transport = null;
  }

  attemptNow() {
    this.io.clearTimeout(this.timer);
    this.timer = null;
    this.wait = null;
    this.attemptAsync().catch((e) => this.emit('error', { error: e }));
  }

  async attemptAsync() {
    const gen = ++this.generation;
    this.state = 'connecting'; // announced below, once the endpoint and transport are known
    const endpoint = await this.chooseEndpoint();
    if (gen !== this.generation || this.state === 'closed') return;
    this.endpoint = endpoint;
    if (this.tokenValue == null && typeof this.o.token === 'function') {
      this.tokenValue = String(await this.o.token());
      if (gen !== this.generation || this.state === 'closed') return;
    }
    if (this.failsInRound === 0 && this.index !== 0 && this.names[0] === 'ws' &&
        this.io.now() - this.wsFailedAtMs >= this.o.wsReprobeMs) {
      this.index = 0;
    }
    const name = this.names[this.index];
    this.openedAtMs = null;
    this.gotMessage = false;
    this.transport = TRANSPORTS[name]({
      base: endpoint,
      user: this.o.user ?? null,
      topics: () => this.topics(),
      tabs: () => this.tabsCount,
      position: () => this.position,
      token: this.tokenValue,
      io: this.io,
      connectTimeoutMs: this.o.connectTimeoutMs,
      pollTimeoutMs: this.o.pollTimeoutMs,
      sseStallMs: this.o.sseStallMs,
      credentials: this.o.credentials,
      emit: (ev) => {
        if (gen === this.generation) this.onTransport(ev);
      },
    });
    this.setState('connecting', { attempt: this.attempt });
  }

  /** @returns {Promise<string>} */
  async chooseEndpoint() {
    if (this.nextEndpoint) {
      const e = this.nextEndpoint;
      this.nextEndpoint = null;
      this.rechoose = false;
      return e;
    }
    if (this.o.discover && this.nodesDue()) await this.readNodes();
    const all = this.table.live();
    if (all.length === 1) {
      this.rechoose = false;
      return all[0].url;
    }
    const current = this.endpoint ? this.table.byUrl.get(this.endpoint) : null;
    if (current && !current.draining && !this.rechoose) return current.url;
    const candidates = probeCandidates(all, this.io.random);
    // A candidate measured a moment ago (by a probe or the node list's fetch) and not
    // failed since is not probed again: a reconnect wave costs the nodes fewer requests.
    const start = this.io.now();
    const fresh = (e) => e.rttMs != null && e.failures === 0 &&
      start - e.rttAtMs < this.o.rttFreshMs;
    const rtts = await Promise.all(candidates.map((e) => fresh(e) ? e.rttMs : probeRttMs(e.url, {
      fetch: this.io.fetch, now: this.io.now, timeoutMs: this.o.probeTimeoutMs,
      path: this.o.probePath,
    })));
    const now = this.io.now();
    candidates.forEach((e, i) => {
      if (fresh(e)) return;
      if (Number.isFinite(rtts[i])) this.table.succeeded(e.url, rtts[i], now);
      else this.table.failed(e.url, now);
    });
    const best = bestEndpoint(candidates, now, this.endpoint, this.table.opts);
    this.rechoose = false;
    this.emit('endpoint', {
      url: best.url,
      candidates: candidates.map((e, i) => ({ url: e.url, rttMs: rtts[i], node: e.node,
        load: e.load, memHeadroom: e.memHeadroom })),
    });
    return best.url;
  }

  /** Whether this (re)connect reads the node list again: bounded by age and by reconnects. */
  nodesDue() {
    return this.nodesAtMs == null || this.rechoose ||
      this.io.now() - this.nodesAtMs >= this.o.nodesRefreshMs;
  }

  /**
   * Reads `GET /nodes` from the best-scoring endpoints, at most NODES_ASKS_MAX of them (the
   * one whose goaway ended the last connection is asked last: it is likely draining). A
   * failure or a 404 leaves the table as it was.
   */
  async readNodes() {
    const now = this.io.now();
    this.nodesAtMs = now;
    const o = this.table.opts;
    const order = this.table.live().slice()
      .sort((a, b) => (a.url === this.leftEndpoint ? 1 : 0) - (b.url === this.leftEndpoint ? 1 : 0) ||
        endpointScore(a, now, o) - endpointScore(b, now, o));
    for (const e of order.slice(0, NODES_ASKS_MAX)) {
      const r = await fetchNodes(e.url, {
        fetch: this.io.fetch, now: this.io.now, timeoutMs: this.o.probeTimeoutMs,
      });
      if (!r) continue;
      this.table.succeeded(e.url, r.rttMs, this.io.now());
      this.table.applyNodes(e.url, r.list);
      this.emit('nodes', { from: e.url, self: r.list.self, nodes: r.list.nodes });
      return;
    }
  }

  /** @param {any} ev a transport event */
  onTransport(ev) {
    switch (ev.type) {
      case 'open':
        this.lastGoodIndex = this.index;
        this.failsInRound = 0;
        this.openedAtMs = this.io.now();
        this.table.succeeded(this.endpoint ?? '', NaN);
        this.setState('connected', {});
        break;
      case 'message': {
        this.gotMessage = true;
        if (ev.id) {
          this.position = ev.id;
          if (this.seen.has(ev.id)) return;
          this.remember(ev.id);
        }
        this.emit('message', {
          data: ev.data, stream: ev.stream, topic: topicOf(ev.stream), id: ev.id,
        });
        break;
      }
      case 'position':
        this.position = ev.id;
        this.emit('position', ev.id);
        break;
      case 'gap':
        if (ev.id) this.position = ev.id;
        this.emit('gap', { stream: ev.stream, topic: topicOf(ev.stream), reason: ev.reason });
        break;
      case 'control':
        this.emit('control', ev.body);
        break;
      case 'end':
        this.transport = null;
        this.onEnd(ev);
        break;
      default:
        break;
    }
  }

  /** @param {string} id */
  remember(id) {
    this.seen.add(id);
    if (this.seen.size > this.o.dedupIds) {
      this.seen.delete(this.seen.values().next().value);
    }
  }

  /** What to do when a connection or an attempt ended. */
  onEnd(ev) {
    const now = this.io.now();
    const opened = this.openedAtMs != null;
    if (opened && (this.gotMessage || now - this.openedAtMs >= this.o.stableMs)) {
      this.attempt = 0;
    }
    const backoff = () => backoffDelayMs(this.attempt++, this.o, this.io.random);
    switch (ev.kind) {
      case 'goaway': {
        const g = ev.goaway;
        this.emit('goaway', g);
        if (!g.reconnect) return this.close();
        if (g.endpoint) this.nextEndpoint = this.table.add(g.endpoint).url;
        // With a node list, a goaway is a moment to choose again (this node may be
        // draining); the list is read again first. Without one, come back here.
        else if (this.o.discover) this.rechoose = true;
        this.leftEndpoint = this.endpoint;
        this.attempt = 0;
        return this.schedule(g.reconnectAfterMs, 'goaway', true);
      }
      case 'token':
        if (typeof this.o.token === 'function') this.tokenValue = null;
        else this.emit('error', { reason: 'token expired and no token function to renew it' });
        return this.schedule(this.io.random() * this.o.backoffMinMs, 'token', false);
      case 'fatal':
        this.emit('error', { reason: 'protocol error', code: ev.code, detail: ev.reason });
        globalThis.removeEventListener?.('online', this.onOnline);
        return this.setState('failed', { code: ev.code });
      case 'backoff':
        this.attempt = Math.max(this.attempt, 3);
        return this.schedule(backoff(), 'shed', false);
      case 'closed':
        return this.schedule(backoff(), 'closed', false);
      default:
        return this.onFailedOpen(ev, backoff);
    }
  }

  /** An attempt that never opened: a busy server, the next transport, or the next round. */
  onFailedOpen(ev, backoff) {
    if ((ev.status === 503 || ev.status === 429) && ev.retryAfterMs != null) {
      return this.schedule(ev.retryAfterMs + this.io.random() * this.o.backoffMinMs, 'busy',
        false);
    }
    // Refused for the token (it expired between its fetch and the connect): the next
    // attempt fetches a new one.
    if (ev.status === 401 && typeof this.o.token === 'function') this.tokenValue = null;
    if (this.names[this.index] === 'ws') this.wsFailedAtMs = this.io.now();
    this.failsInRound += 1;
    if (this.failsInRound < this.names.length) {
      this.index = (this.index + 1) % this.names.length;
      return this.schedule(0, 'fallback', false);
    }
    // Every transport failed on this endpoint: penalise it, back off, choose again.
    this.failsInRound = 0;
    this.index = this.lastGoodIndex ?? 0;
    if (this.endpoint) this.table.failed(this.endpoint, this.io.now());
    this.rechoose = true;
    return this.schedule(backoff(), 'unreachable', false);
  }

  /** @param {number} ms @param {string} reason @param {boolean} goaway */
  schedule(ms, reason, goaway) {
    if (this.state === 'closed' || this.state === 'failed') return;
    const delay = Math.max(0, ms);
    this.wait = { atMs: this.io.now() + delay, goaway };
    this.setState('waiting', { delayMs: delay, reason });
    this.io.clearTimeout(this.timer);
    this.timer = this.io.setTimeout(() => this.attemptNow(), delay);
  }

  /** Every device sees `online` at the same moment: retry soon, but spread out. A goaway's
   * wait is the server's and is kept. */
  spreadAfterOnline() {
    if (this.state !== 'waiting' || !this.wait || this.wait.goaway) return;
    const left = this.wait.atMs - this.io.now();
    const spread = this.io.random() * this.o.onlineSpreadMs;
    if (left > spread) this.schedule(spread, 'online', false);
  }
}
