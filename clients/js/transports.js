// The three transports behind one small interface. Each `open*` starts one connection and
// reports through `ctx.emit` (a state machine's inputs):
//   {type:'open'}                              the connection is up
//   {type:'message', id, stream, data}         a published message (data: string|Uint8Array)
//   {type:'position', id}                      a position token with no message
//   {type:'gap', stream, reason, id}           the server could not replay something
//   {type:'control', body}                     a reply to subscribe/unsubscribe (WebSocket)
//   {type:'end', kind, ...}                    the connection is over; nothing follows it
// `kind` is 'goaway' (with `goaway`), 'error' (with `opened`, and `status`/`retryAfterMs`
// when an HTTP answer said why), 'closed' (ended after working), 'backoff', 'token' or
// 'fatal'. A transport emits 'end' at most once, and nothing after `close()`.

import { closeAction, isPositionToken, parseGoaway, retryAfterMs } from './policy.js';
import { wsBase } from './endpoints.js';
import { SseParser } from './sse.js';

/**
 * @typedef {object} TransportIo
 * @property {any} WebSocket a WebSocket constructor (browser, Node 22+, or `ws`)
 * @property {typeof fetch} fetch
 * @property {() => number} now monotonic milliseconds
 * @property {(fn: () => void, ms: number) => any} setTimeout
 * @property {(t: any) => void} clearTimeout
 */

/**
 * @typedef {object} TransportCtx
 * @property {string} base the endpoint's http base URL
 * @property {string | null} user
 * @property {() => string[]} topics the topics to hold now
 * @property {() => number} [tabs] how many tabs share the connection (sent when above 1)
 * @property {() => string | null} position the latest position token, or null
 * @property {string | null} token a bearer token for `?token=`, or null
 * @property {TransportIo} io
 * @property {number} connectTimeoutMs
 * @property {number} pollTimeoutMs how long the server may hold a poll
 * @property {number} sseStallMs an SSE stream silent this long is dead (heartbeats are 15 s)
 * @property {RequestCredentials} credentials for fetch
 * @property {(ev: any) => void} emit
 */

/** @typedef {{name: string, close: () => void, send?: (o: object) => boolean,
 *   topicsChanged?: () => void}} Transport */

/** @param {TransportCtx} ctx @param {Record<string, string>} extra */
function query(ctx, extra) {
  const q = new URLSearchParams();
  if (ctx.user) q.set('user', ctx.user);
  const topics = ctx.topics();
  if (topics.length) q.set('topics', topics.join(','));
  // A connection that does not say counts as one tab.
  const tabs = ctx.tabs?.() ?? 1;
  if (tabs > 1) q.set('tabs', String(tabs));
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  if (ctx.token) q.set('token', ctx.token);
  return q.toString();
}

/** Wraps `emit` so that nothing passes after an end or a close. */
function gate(ctx) {
  let over = false;
  return {
    get over() {
      return over;
    },
    emit(ev) {
      if (over) return;
      if (ev.type === 'end') over = true;
      ctx.emit(ev);
    },
    stop() {
      over = true;
    },
  };
}

/** @param {string} b64 @returns {Uint8Array} */
function fromBase64(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

const ENVELOPE_KEYS = new Set(['id', 'stream', 'data', 'data_b64', 'gap']);
const CONTROL_KEYS = new Set(['subscribed', 'unsubscribed', 'tabs', 'error']);

/** @param {any} v */
function isEnvelope(v) {
  return (
    v && typeof v === 'object' && !Array.isArray(v) && typeof v.id === 'string' &&
    Object.keys(v).every((k) => ENVELOPE_KEYS.has(k))
  );
}

/** @param {any} v */
function isControl(v) {
  const keys = v && typeof v === 'object' && !Array.isArray(v) ? Object.keys(v) : [];
  // A reply names one of CONTROL_KEYS, plus `topic` (with an error) or `server` (a
  // server-side subscription).
  const extra = keys.filter((k) => !CONTROL_KEYS.has(k));
  return keys.length - extra.length === 1 && extra.every((k) => k === 'topic' || k === 'server');
}

/** @param {string} text */
function tryJson(text) {
  if (!text.startsWith('{')) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * WebSocket with `format=json`. A server without that framing sends raw payloads; the
 * first frame tells which (a resuming server always starts with a position-only frame).
 * @param {TransportCtx} ctx
 * @returns {Transport}
 */
export function openWs(ctx) {
  const g = gate(ctx);
  const extra = { format: 'json' };
  const pos = ctx.position();
  if (pos) extra.last_event_id = pos;
  let ws;
  try {
    ws = new ctx.io.WebSocket(`${wsBase(ctx.base)}/ws?${query(ctx, extra)}`);
  } catch {
    queueMicrotask(() => g.emit({ type: 'end', kind: 'error', opened: false }));
    return { name: 'ws', close() {} };
  }
  ws.binaryType = 'arraybuffer';
  let opened = false;
  /** 'unknown' until the first frame, then 'json' (envelopes) or 'raw' (payloads). */
  let mode = 'unknown';
  let controlsPending = 0;
  const timer = ctx.io.setTimeout(() => {
    if (!opened) {
      g.emit({ type: 'end', kind: 'error', opened: false });
      try { ws.close(); } catch { /* already closing */ }
    }
  }, ctx.connectTimeoutMs);

  ws.onopen = () => {
    opened = true;
    ctx.io.clearTimeout(timer);
    g.emit({ type: 'open' });
  };
  ws.onmessage = (/** @type {MessageEvent} */ e) => {
    if (typeof e.data !== 'string') {
      const bytes = new Uint8Array(e.data instanceof ArrayBuffer ? e.data : e.data.buffer ?? []);
      g.emit({ type: 'message', id: null, stream: null, data: bytes });
      return;
    }
    const v = tryJson(e.data);
    if (controlsPending > 0 && isControl(v)) {
      controlsPending -= 1;
      g.emit({ type: 'control', body: v });
    } else if (mode !== 'raw' && isEnvelope(v)) {
      mode = 'json';
      const id = isPositionToken(v.id) ? v.id : null;
      if (v.gap && typeof v.gap === 'object') {
        g.emit({ type: 'gap', stream: v.gap.stream ?? null, reason: v.gap.reason ?? null, id });
      } else if ('data' in v || 'data_b64' in v) {
        const data = 'data_b64' in v ? fromBase64(String(v.data_b64)) : String(v.data);
        g.emit({ type: 'message', id, stream: v.stream ?? null, data });
      } else if (id) {
        g.emit({ type: 'position', id });
      }
    } else if (mode === 'json' && isControl(v)) {
      g.emit({ type: 'control', body: v });
    } else {
      mode = 'raw';
      g.emit({ type: 'message', id: null, stream: null, data: e.data });
    }
  };
  ws.onclose = (/** @type {CloseEvent} */ e) => {
    ctx.io.clearTimeout(timer);
    if (!opened) return g.emit({ type: 'end', kind: 'error', opened: false });
    const a = closeAction(e.code, e.reason ?? '');
    if (a.action === 'goaway') return g.emit({ type: 'end', kind: 'goaway', goaway: a.goaway });
    const kind = a.action === 'retry' ? 'closed' : a.action;
    g.emit({ type: 'end', kind, code: e.code, reason: e.reason });
  };
  ws.onerror = () => {}; // a close event follows every error
  return {
    name: 'ws',
    send(o) {
      if (!opened || g.over) return false;
      controlsPending += 1;
      ws.send(JSON.stringify(o));
      return true;
    },
    close() {
      g.stop();
      ctx.io.clearTimeout(timer);
      try { ws.close(1000); } catch { /* already closed */ }
    },
  };
}

/**
 * Reads a fetch body as text chunks; resolves when it ends, rejects when it breaks.
 * @param {Response} res @param {(text: string) => void} onText @param {() => void} onBytes
 */
async function readText(res, onText, onBytes) {
  const reader = /** @type {ReadableStream<Uint8Array>} */ (res.body).getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    onBytes();
    onText(decoder.decode(value, { stream: true }));
  }
  onText(decoder.decode());
}

/**
 * Server-Sent Events over fetch (not EventSource: fetch lets the client see the HTTP status
 * and `Retry-After`, the id-only position blocks, and works the same in workers and Node).
 * @param {TransportCtx} ctx
 * @returns {Transport}
 */
export function openSse(ctx) {
  const g = gate(ctx);
  const ctl = new AbortController();
  const extra = {};
  const pos = ctx.position();
  if (pos) extra.last_event_id = pos;
  const url = `${ctx.base}/sse?${query(ctx, extra)}`;
  let opened = false;
  /** @type {number | null} */
  let lastRetry = null;
  let stall = ctx.io.setTimeout(() => ctl.abort(), ctx.connectTimeoutMs);
  const alive = () => {
    ctx.io.clearTimeout(stall);
    stall = ctx.io.setTimeout(() => ctl.abort(), ctx.sseStallMs);
  };
  const parser = new SseParser((b) => {
    if (b.retry != null) lastRetry = b.retry;
    const id = isPositionToken(b.id) ? b.id : null;
    switch (b.event) {
      case 'message':
        if (b.data != null) g.emit({ type: 'message', id, stream: null, data: b.data });
        else if (id) g.emit({ type: 'position', id });
        break;
      case 'goaway': {
        const goaway = parseGoaway(b.data ?? '', lastRetry) ?? {
          reconnectAfterMs: lastRetry ?? 0, endpoint: null, reconnect: true,
        };
        g.emit({ type: 'end', kind: 'goaway', goaway });
        ctl.abort();
        break;
      }
      case 'c10m-gap': {
        let v = {};
        try { v = JSON.parse(b.data ?? '{}'); } catch { /* keep the gap, unnamed */ }
        g.emit({ type: 'gap', stream: v.stream ?? null, reason: v.reason ?? null, id });
        break;
      }
      case 'expired':
        g.emit({ type: 'end', kind: 'token' });
        ctl.abort();
        break;
      case 'error':
        g.emit({ type: 'end', kind: 'backoff', reason: b.data });
        ctl.abort();
        break;
      case 'disconnect':
        // The backend disconnected this user (POST /disconnect): do not come back.
        g.emit({ type: 'end', kind: 'fatal', reason: b.data });
        ctl.abort();
        break;
      case 'subscribed':
      case 'unsubscribed': {
        // A server-side (un)subscription, told as the WebSocket's control reply.
        let v = null;
        try { v = JSON.parse(b.data ?? ''); } catch { /* not ours */ }
        if (v && isControl(v)) g.emit({ type: 'control', body: v });
        break;
      }
      default:
        break;
    }
  });
  (async () => {
    let res;
    try {
      res = await ctx.io.fetch(url, {
        signal: ctl.signal, cache: 'no-store', credentials: ctx.credentials,
        headers: { Accept: 'text/event-stream' },
      });
    } catch {
      return g.emit({ type: 'end', kind: 'error', opened: false });
    }
    const type = res.headers.get('content-type') ?? '';
    if (res.status !== 200 || !type.startsWith('text/event-stream') || !res.body) {
      ctx.io.clearTimeout(stall);
      res.body?.cancel().catch(() => {});
      const after = retryAfterMs(res.headers.get('retry-after'), Date.now());
      return g.emit({ type: 'end', kind: 'error', opened: false, status: res.status,
        retryAfterMs: after });
    }
    opened = true;
    alive();
    g.emit({ type: 'open' });
    try {
      await readText(res, (t) => parser.push(t), alive);
    } catch {
      /* aborted or broken: the end below says so */
    }
    ctx.io.clearTimeout(stall);
    g.emit({ type: 'end', kind: 'closed' });
  })();
  return {
    name: 'sse',
    close() {
      g.stop();
      ctx.io.clearTimeout(stall);
      ctl.abort();
    },
  };
}

/**
 * Long polling: `GET /poll?since=…`, one request at a time, each held by the server until
 * something is pending or `timeout_ms` passes.
 * @param {TransportCtx} ctx
 * @returns {Transport}
 */
export function openPoll(ctx) {
  const g = gate(ctx);
  let opened = false;
  /** @type {AbortController | null} */
  let ctl = null;
  let round = 0;

  async function once(myRound) {
    const extra = { timeout_ms: String(ctx.pollTimeoutMs) };
    const pos = ctx.position();
    if (pos) extra.since = pos;
    ctl = new AbortController();
    const mine = ctl;
    const timer = ctx.io.setTimeout(() => mine.abort(), ctx.pollTimeoutMs + ctx.connectTimeoutMs);
    const started = ctx.io.now();
    try {
      const res = await ctx.io.fetch(`${ctx.base}/poll?${query(ctx, extra)}`, {
        signal: mine.signal, cache: 'no-store', credentials: ctx.credentials,
      });
      if (res.status !== 200) {
        res.body?.cancel().catch(() => {});
        const after = retryAfterMs(res.headers.get('retry-after'), Date.now());
        return { end: { kind: opened ? 'closed' : 'error', opened, status: res.status,
          retryAfterMs: after } };
      }
      const v = await res.json();
      if (!opened) {
        opened = true;
        g.emit({ type: 'open' });
      }
      for (const m of Array.isArray(v.messages) ? v.messages : []) {
        const data = 'data_b64' in m ? fromBase64(String(m.data_b64)) : String(m.data ?? '');
        const id = isPositionToken(m.id) ? m.id : null;
        g.emit({ type: 'message', id, stream: m.stream ?? null, data });
      }
      const id = isPositionToken(v.id) ? v.id : null;
      for (const gap of Array.isArray(v.gaps) ? v.gaps : []) {
        g.emit({ type: 'gap', stream: gap.stream ?? null, reason: gap.reason ?? null, id });
      }
      if (id) g.emit({ type: 'position', id });
      const empty = !(v.messages?.length || v.gaps?.length);
      return { again: true, quick: empty && ctx.io.now() - started < 50 };
    } catch {
      if (myRound !== round || g.over) return { again: true };
      return { end: { kind: opened ? 'closed' : 'error', opened } };
    } finally {
      ctx.io.clearTimeout(timer);
    }
  }

  async function loop() {
    // Each turn is one held request; the loop ends only with the transport.
    while (!g.over) {
      const r = await once(round);
      if (g.over) return;
      if (r.end) return g.emit({ type: 'end', ...r.end });
      // An empty answer that came back at once would spin: wait a little before the next.
      if (r.quick) await new Promise((ok) => ctx.io.setTimeout(ok, 250));
    }
  }
  loop();
  return {
    name: 'poll',
    topicsChanged() {
      round += 1;
      ctl?.abort();
    },
    close() {
      g.stop();
      ctl?.abort();
    },
  };
}

/** The transports by name, in the default fallback order. */
export const TRANSPORTS = Object.freeze({ ws: openWs, sse: openSse, poll: openPoll });
