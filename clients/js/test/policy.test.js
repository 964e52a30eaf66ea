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
  ENDPOINT_DEFAULTS, ENDPOINTS_MAX, loadPressure,
} from '../endpoints.js';
import { parseNodes, NODES_MAX } from '../nodes.js';
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

test('node list: well-formed entries read, bad ones skipped or cleaned, non-lists refused', () => {
  const list = parseNodes({ self: 'n1', nodes: [
    { id: 'n1', url: 'ws://127.0.0.1:8080', connections: 1234, capacity: 1000000,
      load: 0.0012, mem_headroom: 0.93, draining: false },
    { id: 'n2', url: null, load: 0.5, mem_headroom: null, draining: true },
    { id: 'n3', url: 'javascript:alert(1)', load: 7, mem_headroom: -1 },
    'junk', null,
  ] });
  assert.deepEqual(list, { self: 'n1', nodes: [
    { id: 'n1', url: 'ws://127.0.0.1:8080', load: 0.0012, memHeadroom: 0.93, draining: false },
    { id: 'n2', url: null, load: 0.5, memHeadroom: null, draining: true },
    { id: 'n3', url: null, load: 1, memHeadroom: 0, draining: false },
  ] });
  // A standalone server: no id anywhere.
  assert.deepEqual(parseNodes({ self: null, nodes: [{ id: null, url: null, load: 0 }] }),
    { self: null, nodes: [{ id: null, url: null, load: 0, memHeadroom: null, draining: false }] });
  for (const bad of [null, 'x', 3, {}, { nodes: 'n1' }]) assert.equal(parseNodes(bad), null);
  const many = parseNodes({ nodes: Array.from({ length: 500 }, (_, i) => ({ id: `n${i}` })) });
  assert.equal(many.nodes.length, NODES_MAX);
});

test('load-aware score: (rtt + 5) × (1 + 4·max(load, memory use)); draining never chosen', () => {
  const t = new EndpointTable(['a:1', 'b:1']);
  const [a, b] = t.all();
  assert.equal(loadPressure(a), 0);
  a.rttMs = 10;
  b.rttMs = 10;
  a.load = 0.5;
  assert.equal(endpointScore(a, 0), (10 + 5) * 3);
  a.load = 0.1;
  a.memHeadroom = 0.25; // memory use 0.75 is the larger pressure
  assert.equal(loadPressure(a), 0.75);
  assert.equal(endpointScore(a, 0), (10 + 5) * 4);
  // An idle node with twice the RTT beats a node at half load; a node at the same load as
  // another is told apart by latency.
  a.memHeadroom = null;
  a.load = 0.5;
  b.rttMs = 20;
  assert.equal(bestEndpoint([a, b], 0, null).url, b.url);
  b.load = 0.5;
  assert.equal(bestEndpoint([a, b], 0, null).url, a.url);
  // Sticky to what last worked, unless the other is 20 % better after load.
  b.load = 0.4; // a 15 × 3 = 45, b 25 × 2.6 = 65: a is more than 20 % better
  assert.equal(bestEndpoint([a, b], 0, b.url).url, a.url);
  b.load = 0.3; // b 25 × 2.2 = 55 against a 45: within the margin, b is kept
  assert.equal(bestEndpoint([a, b], 0, b.url).url, b.url);
  // Failures count under the factor too: (rtt + penalty) × factor.
  t.failed(a.url, 0);
  assert.equal(endpointScore(a, 0), (10 + 5 + ENDPOINT_DEFAULTS.failurePenaltyMs) * 3);
  b.draining = true;
  assert.equal(endpointScore(b, 0), Infinity);
  assert.equal(bestEndpoint([a, b], 0, b.url).url, a.url);
  assert.deepEqual(t.live().map((e) => e.url), [a.url]);
  a.draining = true;
  assert.equal(t.live().length, 2, 'all draining: all are live rather than none');
});

test('node list into the table: the asked endpoint is the answering node, others added', () => {
  const t = new EndpointTable(['http://10.0.0.1:80', 'http://10.0.0.9:80']);
  const list = (nodes) => ({ self: 'n1', nodes: nodes.map((n) => ({
    url: null, load: 0, memHeadroom: null, draining: false, ...n })) });
  t.applyNodes('http://10.0.0.1:80', list([
    { id: 'n1', url: 'ws://n1.public:80', load: 0.2 },  // self: its figures go to the asked URL
    { id: 'n2', url: 'ws://10.0.0.2:80', load: 0.6 },
    { id: 'n3', url: null },                            // no public URL: not dialled
    { id: 'n4', url: 'wss://10.0.0.4', draining: true },
  ]));
  const by = Object.fromEntries(t.all().map((e) => [e.url, e]));
  assert.deepEqual(Object.keys(by), ['http://10.0.0.1:80', 'http://10.0.0.9:80',
    'http://10.0.0.2:80', 'https://10.0.0.4']);
  assert.equal(by['http://10.0.0.1:80'].node, 'n1');
  assert.equal(by['http://10.0.0.1:80'].load, 0.2);
  assert.equal(by['http://10.0.0.2:80'].load, 0.6);
  assert.ok(by['http://10.0.0.2:80'].discovered);
  assert.ok(!by['http://10.0.0.9:80'].discovered, 'the caller\'s own endpoint');
  assert.deepEqual(t.live().map((e) => e.url), ['http://10.0.0.1:80', 'http://10.0.0.9:80',
    'http://10.0.0.2:80']);
  // The next list replaces what this one said: n2 is gone (dropped), n4 stopped draining.
  t.applyNodes('http://10.0.0.1:80', list([
    { id: 'n1', load: 0.3 }, { id: 'n4', url: 'wss://10.0.0.4' }]));
  assert.deepEqual(t.all().map((e) => [e.url, e.load, e.draining]), [
    ['http://10.0.0.1:80', 0.3, false], ['http://10.0.0.9:80', null, false],
    ['https://10.0.0.4', 0, false]]);
  // Bounded: a list cannot grow the table past ENDPOINTS_MAX.
  t.applyNodes('http://10.0.0.1:80', { self: 'n1', nodes: Array.from({ length: 64 }, (_, i) =>
    ({ id: `m${i}`, url: `http://10.1.0.${i}:80`, load: 0, memHeadroom: null, draining: false })) });
  // (3 were there, 61 fit, and the unlisted 10.0.0.4 went.)
  assert.equal(t.all().length, ENDPOINTS_MAX - 1);
});

test('no herding: 10,000 clients choosing two at random spread by load and latency', () => {
  const r = seeded(11);
  /** One client's choice among nodes with the given loads, RTTs measured with noise. */
  const choose = (loads) => {
    const t = new EndpointTable(loads.map((_, i) => `n${i}:1`));
    t.all().forEach((e, i) => (e.load = loads[i]));
    const cands = probeCandidates(t.all(), r);
    for (const e of cands) e.rttMs = 5 + 5 * r(); // loopback-like: 5–10 ms
    return t.all().indexOf(bestEndpoint(cands, 0, null));
  };
  const tally = (loads) => {
    const n = loads.map(() => 0);
    for (let i = 0; i < 10000; i++) n[choose(loads)] += 1;
    return n;
  };
  // Equal loads: even (each within 10 % of a third); none takes them all.
  for (const n of tally([0.1, 0.1, 0.1])) assert.ok(n > 3000 && n < 3667, `${n}`);
  // One node at 60 %: it gets few, the others share the rest evenly.
  const [hot, b, c] = tally([0.6, 0.1, 0.1]);
  assert.ok(hot < 500, `the loaded node got ${hot}`);
  assert.ok(Math.abs(b - c) < 600, `${b} vs ${c}`);
});
