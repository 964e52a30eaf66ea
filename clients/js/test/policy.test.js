// Units for the pure parts: backoff, goaway parsing, close codes, tokens, endpoint choice and
// the SSE parser.
import test from 'node:test';
import assert from 'node:assert/strict';
import {
  backoffDelayMs, parseGoaway, closeAction, isPositionToken, DEFAULTS,
} from '../policy.js';
import { retryAfterMs } from '../policy.js';
import {
  EndpointTable, bestEndpoint, endpointScore, probeCandidates, httpBase, wsBase,
  ENDPOINT_DEFAULTS,
} from '../endpoints.js';
import { SseParser } from '../sse.js';

/** A seeded random source (mulberry32), so the statistics below are reproducible. */
function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('backoff: floor, growth, cap, and the jitter kept at the cap', () => {
  const o = { backoffMinMs: 500, backoffMaxMs: 20000 };
  assert.equal(backoffDelayMs(0, o, () => 0), 500);
  assert.equal(backoffDelayMs(0, o, () => 0.999999) < 1000, true);
  assert.equal(Math.round(backoffDelayMs(3, o, () => 1)), 500 + 4000);
  for (const n of [10, 31, 1000]) {
    assert.equal(Math.round(backoffDelayMs(n, o, () => 1)), 20000);
    assert.equal(backoffDelayMs(n, o, () => 0), 500);
  }
  // At the cap, 10,000 clients spread over [min, max]: no bucket of tenths holds over 12 %.
  const r = seeded(7);
  const buckets = new Array(10).fill(0);
  for (let i = 0; i < 10000; i++) {
    const d = backoffDelayMs(20, o, r);
    assert.ok(d >= 500 && d <= 20000);
    buckets[Math.min(9, Math.floor(((d - 500) / 19500) * 10))] += 1;
  }
  for (const b of buckets) assert.ok(b > 800 && b < 1200, `bucket ${b}`);
  // Defaults apply when no options are given; a negative attempt is the first.
  assert.equal(backoffDelayMs(-3, {}, () => 0), DEFAULTS.backoffMinMs);
});

test('goaway: parsed from the server JSON, with and without an endpoint', () => {
  assert.deepEqual(parseGoaway('{"goaway":true,"reconnect_after_ms":1234}'),
    { reconnectAfterMs: 1234, endpoint: null, reconnect: true });
  assert.deepEqual(
    parseGoaway('{"goaway":true,"reconnect_after_ms":0,"endpoint":"ws://b:9"}'),
    { reconnectAfterMs: 0, endpoint: 'ws://b:9', reconnect: true });
  assert.equal(parseGoaway('{"goaway":true,"reconnect_after_ms":5,"reconnect":false}')
    .reconnect, false);
  assert.equal(parseGoaway('going away'), null);
  assert.equal(parseGoaway('{"reconnect_after_ms":5}'), null);
  assert.equal(parseGoaway('null'), null);
  // A missing or bad delay falls back to the SSE retry, and a huge one is capped at a day.
  assert.equal(parseGoaway('{"goaway":true}', 700).reconnectAfterMs, 700);
  assert.equal(parseGoaway('{"goaway":true,"reconnect_after_ms":-1}').reconnectAfterMs, 0);
  assert.equal(parseGoaway('{"goaway":true,"reconnect_after_ms":1e12}').reconnectAfterMs,
    DEFAULTS.goawayDelayMsMax);
});

test('close codes map to actions', () => {
  const g = closeAction(1001, '{"goaway":true,"reconnect_after_ms":10}');
  assert.equal(g.action, 'goaway');
  assert.equal(g.goaway.reconnectAfterMs, 10);
  assert.equal(closeAction(1001, '').action, 'retry');
  assert.equal(closeAction(1000, '').action, 'retry');
  assert.equal(closeAction(1006, '').action, 'retry');
  assert.equal(closeAction(1008, 'slow consumer').action, 'backoff');
  assert.equal(closeAction(4001, 'token expired').action, 'token');
  assert.equal(closeAction(4003, '{"disconnect":true,"reconnect":false}').action, 'fatal');
  for (const c of [1002, 1003, 1007, 1009]) assert.equal(closeAction(c, '').action, 'fatal');
});

test('position tokens: [0-9a-z-], at most 64, anything else refused', () => {
  assert.ok(isPositionToken('0'));
  assert.ok(isPositionToken('e3-u12-t7'));
  assert.ok(isPositionToken('a'.repeat(64)));
  for (const bad of ['', 'A', 'a b', 'a&b=c', 'a'.repeat(65), null, 7, undefined]) {
    assert.equal(isPositionToken(bad), false, String(bad));
  }
});

test('Retry-After: seconds and dates', () => {
  assert.equal(retryAfterMs('2', 0), 2000);
  assert.equal(retryAfterMs(null, 0), null);
  assert.equal(retryAfterMs('soon', 0), null);
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(retryAfterMs('Thu, 01 Jan 2026 00:00:03 GMT', now), 3000);
});

test('endpoint URLs normalise to http bases', () => {
  assert.equal(httpBase('ws://h:1/'), 'http://h:1');
  assert.equal(httpBase('wss://h/push'), 'https://h/push');
  assert.equal(httpBase('h:8080'), 'http://h:8080');
  assert.equal(wsBase('https://h'), 'wss://h');
});

test('endpoint choice: lowest RTT wins, failures penalised and forgiven, sticky', () => {
  const t = new EndpointTable(['a:1', 'b:1', 'c:1']);
  const [a, b, c] = t.all();
  t.succeeded(a.url, 80);
  t.succeeded(b.url, 20);
  t.succeeded(c.url, 50);
  assert.equal(bestEndpoint(t.all(), 0, null).url, b.url);
  // b fails: a fresh failure costs more than the RTT difference…
  t.failed(b.url, 1000);
  assert.equal(bestEndpoint(t.all(), 1000, null).url, c.url);
  // …and is forgiven with time (half-life), so b wins again later.
  assert.ok(endpointScore(b, 1000 + 10 * ENDPOINT_DEFAULTS.failureHalfLifeMs) < 30);
  assert.equal(bestEndpoint(t.all(), 1000 + 10 * ENDPOINT_DEFAULTS.failureHalfLifeMs, null).url,
    b.url);
  // Sticky: c is kept against a slightly better a, dropped for a much better one.
  t.succeeded(a.url, 45);
  a.rttMs = 45;
  c.rttMs = 50;
  assert.equal(bestEndpoint([a, c], 0, c.url).url, c.url);
  a.rttMs = 10;
  assert.equal(bestEndpoint([a, c], 0, c.url).url, a.url);
  // An unmeasured endpoint scores as a probe timeout: after the measured ones.
  const u = new EndpointTable(['x:1', 'y:1']);
  u.succeeded('x:1', 1500);
  assert.equal(bestEndpoint(u.all(), 0, null).url, 'http://x:1');
  assert.throws(() => bestEndpoint([], 0, null));
});

test('probe candidates: all of two, two distinct random ones of many, spread evenly', () => {
  const t = new EndpointTable(['a:1', 'b:1']);
  assert.equal(probeCandidates(t.all(), Math.random).length, 2);
  const many = new EndpointTable(['a:1', 'b:1', 'c:1', 'd:1', 'e:1']).all();
  const r = seeded(3);
  const count = new Map();
  for (let i = 0; i < 5000; i++) {
    const [x, y] = probeCandidates(many, r);
    assert.notEqual(x.url, y.url);
    for (const e of [x, y]) count.set(e.url, (count.get(e.url) ?? 0) + 1);
  }
  for (const n of count.values()) assert.ok(n > 1800 && n < 2200, `picked ${n} of 10000`);
});

test('SSE parser: blocks, id-only blocks, retry, comments, CRLF split across chunks', () => {
  const out = [];
  const p = new SseParser((b) => out.push(b));
  const text = 'retry: 2000\r\n\r\n: hb\n\nid: p-1\n\nid: 7\ndata: a\ndata: b\n\n' +
    'id: 0\nevent: goaway\ndata: {"goaway":true}\r\n\r\ndata:x\rdata: y\r\r';
  // Every split point must give the same blocks.
  for (let cut = 0; cut <= text.length; cut++) {
    out.length = 0;
    const q = new SseParser((b) => out.push(b));
    q.push(text.slice(0, cut));
    q.push(text.slice(cut));
    assert.equal(out.length, 5, `cut at ${cut}`);
  }
  p.push(text);
  assert.deepEqual(out.slice(0, 5), [
    { event: 'message', data: null, id: null, retry: 2000 },
    { event: 'message', data: null, id: 'p-1', retry: null },
    { event: 'message', data: 'a\nb', id: '7', retry: null },
    { event: 'goaway', data: '{"goaway":true}', id: '0', retry: null },
    { event: 'message', data: 'x\ny', id: null, retry: null },
  ]);
});
