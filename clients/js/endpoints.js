// Endpoint choice: a table of what the client measured about each endpoint (round-trip time
// of a cheap probe, recent failures) and a pure scoring function over it. The probe is the
// only part that does I/O, and its fetch is injected.

/** Tunables of the choice, with their defaults. */
export const ENDPOINT_DEFAULTS = Object.freeze({
  /** A probe that has not answered after this long (ms) counts as a failure. */
  probeTimeoutMs: 2000,
  /** Path probed on each endpoint; any HTTP answer (a 404 included) proves it reachable. */
  probePath: '/',
  /** Score added per recent failure (ms of RTT it is worth). */
  failurePenaltyMs: 5000,
  /** A failure's penalty halves every this many ms, so a node that came back is used again. */
  failureHalfLifeMs: 30000,
  /** The endpoint that last worked wins unless another scores this much better (0..1). */
  stickyMargin: 0.2,
  /** How much a node's load weighs: the score is multiplied by `1 + loadWeight·pressure`,
   * pressure being the larger of its connection load and its memory use (0..1). At 4 a full
   * node scores 5× its RTT, so a node at 50 % is left for one at 0 % with up to 3× its RTT,
   * while nodes of similar load are still told apart by latency. */
  loadWeight: 4,
  /** Added to every RTT before the load factor: nodes a few ms apart are equally near, so
   * load decides between them (on a LAN or loopback a bare RTT near 0 would make any load
   * factor worthless), while RTT noise still breaks ties between equally loaded nodes. */
  rttBaseMs: 5,
});

/**
 * Normalises an endpoint to an http(s) base URL without a trailing slash: `ws://h:1` and
 * `h:1` become `http://h:1`, `wss://h` becomes `https://h`. A path prefix is kept.
 * @param {string} url
 * @returns {string}
 */
export function httpBase(url) {
  let u = String(url).trim();
  if (u.startsWith('ws://')) u = 'http://' + u.slice(5);
  else if (u.startsWith('wss://')) u = 'https://' + u.slice(6);
  else if (!/^https?:\/\//.test(u)) u = 'http://' + u;
  return u.replace(/\/+$/, '');
}

/** @param {string} base an httpBase result @returns {string} its ws(s) form */
export function wsBase(base) {
  return base.replace(/^http/, 'ws');
}

/**
 * @typedef {object} EndpointStats
 * @property {string} url http base
 * @property {number | null} rttMs smoothed probe round trip, null when never measured
 * @property {number} rttAtMs when it was last measured (monotonic ms), -Infinity if never
 * @property {number} failures failures since the last success
 * @property {number} lastFailAtMs when it last failed (monotonic ms), -Infinity if never
 * @property {number | null} load connections / capacity from `GET /nodes` (0..1), or null
 * @property {number | null} memHeadroom 1 − RSS / memory limit (0..1), null: no limit known
 * @property {boolean} draining the node said it drains: never chosen
 * @property {boolean} discovered learnt from `GET /nodes` (not in the caller's list)
 * @property {string | null} node the node's id, when a node list named it
 */

/**
 * How full a node is, 0..1: the larger of its connection load and its memory use; 0 when
 * nothing is known.
 * @param {EndpointStats} e
 */
export function loadPressure(e) {
  const mem = e.memHeadroom == null ? 0 : 1 - e.memHeadroom;
  const p = Math.max(e.load ?? 0, mem);
  return Number.isFinite(p) ? Math.min(1, Math.max(0, p)) : 0;
}

/**
 * The score of an endpoint at `now`: lower is better. It is `(rtt + rttBaseMs + failure
 * penalty) × (1 + loadWeight · pressure)`, and Infinity for a draining node. An unmeasured endpoint
 * scores as a probe timeout, so a measured working one is preferred and an unknown one is
 * still tried before a failing one.
 * @param {EndpointStats} e
 * @param {number} nowMs
 * @param {typeof ENDPOINT_DEFAULTS} [o]
 */
export function endpointScore(e, nowMs, o = ENDPOINT_DEFAULTS) {
  if (e.draining) return Infinity;
  const rtt = (e.rttMs ?? o.probeTimeoutMs) + o.rttBaseMs;
  const factor = 1 + o.loadWeight * loadPressure(e);
  if (e.failures === 0) return rtt * factor;
  const age = Math.max(0, nowMs - e.lastFailAtMs);
  const decay = 0.5 ** (age / o.failureHalfLifeMs);
  return (rtt + e.failures * o.failurePenaltyMs * decay) * factor;
}

/**
 * The endpoint to use among `candidates`: the lowest score, except that `sticky` (the one
 * that last worked) is kept unless another beats it by `stickyMargin`, so clients do not
 * flap between nodes of similar latency. Ties break by list order.
 * @param {EndpointStats[]} candidates non-empty
 * @param {number} nowMs
 * @param {string | null} sticky
 * @param {typeof ENDPOINT_DEFAULTS} [o]
 * @returns {EndpointStats}
 */
export function bestEndpoint(candidates, nowMs, sticky, o = ENDPOINT_DEFAULTS) {
  if (candidates.length === 0) throw new Error('c10m: no endpoint to choose from');
  let best = candidates[0];
  for (const e of candidates) {
    if (endpointScore(e, nowMs, o) < endpointScore(best, nowMs, o)) best = e;
  }
  const keep = candidates.find((e) => e.url === sticky);
  if (keep && keep !== best) {
    const k = endpointScore(keep, nowMs, o);
    if (endpointScore(best, nowMs, o) >= k * (1 - o.stickyMargin)) return keep;
  }
  return best;
}

/**
 * Which endpoints to probe: all of them when there are at most two, else two picked at random
 * (the power of two random choices), so that a fleet of clients spreads over the nodes instead
 * of herding onto the one that is first in every list, and no node is probed by everyone.
 * @param {EndpointStats[]} all
 * @param {() => number} random
 * @returns {EndpointStats[]}
 */
export function probeCandidates(all, random) {
  if (all.length <= 2) return all.slice();
  const i = Math.floor(random() * all.length);
  let j = Math.floor(random() * (all.length - 1));
  if (j >= i) j += 1;
  return [all[i], all[j]];
}

/** At most this many endpoints in a table: a node list cannot grow it without bound. */
export const ENDPOINTS_MAX = 64;

/** A table of endpoints and what was measured about them. */
export class EndpointTable {
  /**
   * @param {string[]} urls
   * @param {Partial<typeof ENDPOINT_DEFAULTS>} [opts]
   */
  constructor(urls, opts = {}) {
    /** @type {typeof ENDPOINT_DEFAULTS} */
    this.opts = { ...ENDPOINT_DEFAULTS, ...opts };
    /** @type {Map<string, EndpointStats>} */
    this.byUrl = new Map();
    for (const u of urls) this.add(u);
    /** The caller's own endpoints: kept whatever a node list says. */
    this.static = new Set(this.byUrl.keys());
    if (this.byUrl.size === 0) throw new Error('c10m: endpoints must name at least one URL');
  }

  /** @param {string} url @returns {EndpointStats} */
  add(url) {
    const base = httpBase(url);
    let e = this.byUrl.get(base);
    if (!e) {
      e = { url: base, rttMs: null, rttAtMs: -Infinity, failures: 0, lastFailAtMs: -Infinity,
        load: null,
        memHeadroom: null, draining: false, discovered: false, node: null };
      this.byUrl.set(base, e);
    }
    return e;
  }

  /** @returns {EndpointStats[]} */
  all() {
    return [...this.byUrl.values()];
  }

  /** The endpoints that may be chosen: all but the draining ones (all, if every one is). */
  live() {
    const live = this.all().filter((e) => !e.draining);
    return live.length ? live : this.all();
  }

  /**
   * Takes in a node list (see nodes.js) that `asked` answered. The answering node's figures
   * go to `asked` (the URL known to reach it, whatever its public URL says); every other
   * live node with a public URL is added; a discovered node missing from the list is no
   * longer live and is dropped. What an earlier list said of an endpoint is replaced.
   * @param {string} asked
   * @param {import('./nodes.js').NodeList} list
   */
  applyNodes(asked, list) {
    const self = this.add(asked);
    for (const e of this.byUrl.values()) {
      e.load = null;
      e.memHeadroom = null;
      e.draining = false;
    }
    const listed = new Set([self.url]);
    for (const n of list.nodes) {
      let e = null;
      if (n.id === list.self) {
        e = self;
      } else if (n.url) {
        const base = httpBase(n.url);
        if (!this.byUrl.has(base) && this.byUrl.size >= ENDPOINTS_MAX) continue;
        e = this.add(base);
        if (!this.static.has(e.url)) e.discovered = true;
      }
      if (!e) continue;
      listed.add(e.url);
      e.node = n.id;
      e.load = n.load;
      e.memHeadroom = n.memHeadroom;
      e.draining = n.draining;
    }
    for (const e of [...this.byUrl.values()]) {
      if (e.discovered && !listed.has(e.url)) this.byUrl.delete(e.url);
    }
  }

  /**
   * @param {string} url @param {number} rttMs NaN when nothing was timed (a connect opened)
   * @param {number} [nowMs] when it was measured
   */
  succeeded(url, rttMs, nowMs) {
    const e = this.add(url);
    e.failures = 0;
    if (Number.isFinite(rttMs)) {
      e.rttMs = e.rttMs == null ? rttMs : 0.7 * e.rttMs + 0.3 * rttMs;
      if (nowMs != null) e.rttAtMs = nowMs;
    }
  }

  /** @param {string} url @param {number} nowMs */
  failed(url, nowMs) {
    const e = this.add(url);
    e.failures = Math.min(e.failures + 1, 16);
    e.lastFailAtMs = nowMs;
  }
}

/**
 * Measures one endpoint's round trip with a GET of `probePath`. In browsers the request is
 * `no-cors`: an opaque answer is enough to time the trip, and no CORS header is needed.
 * @param {string} base
 * @param {{fetch: typeof fetch, now: () => number, timeoutMs: number, path: string}} io
 * @returns {Promise<number>} milliseconds, or Infinity when it failed or timed out
 */
export async function probeRttMs(base, io) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), io.timeoutMs);
  const start = io.now();
  try {
    const init = { signal: ctl.signal, cache: 'no-store' };
    if (typeof document !== 'undefined' || typeof WorkerGlobalScope !== 'undefined') {
      init.mode = 'no-cors';
    }
    const res = await io.fetch(base + io.path, /** @type {RequestInit} */ (init));
    const rtt = io.now() - start;
    res.body?.cancel?.().catch(() => {});
    return rtt;
  } catch {
    return Infinity;
  } finally {
    clearTimeout(timer);
  }
}
