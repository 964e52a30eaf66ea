// The connection state machine driven with fake transports and a virtual clock: goaways
// obeyed to the millisecond, fallback order, resume positions, dedup, the online spread.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Connection } from '../core.js';

/** A virtual clock with timers that run only when the test advances time. */
function virtualIo() {
  let now = 0;
  let seq = 0;
  /** @type {Map<number, {at: number, fn: () => void}>} */
  const timers = new Map();
  const io = {
    now: () => now,
    random: () => 0.5,
    setTimeout: (fn, ms) => {
      const id = ++seq;
      timers.set(id, { at: now + Math.max(0, ms), fn });
      return id;
    },
    clearTimeout: (id) => timers.delete(id),
    /** Runs due timers in time order up to now + ms (bounded: 10,000 timers). */
    async advance(ms) {
      const end = now + ms;
      for (let i = 0; i < 10000; i++) {
        await flush();
        let next = null;
        for (const [id, t] of timers) if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
        if (!next) break;
        timers.delete(next[0]);
        now = next[1].at;
        next[1].fn();
      }
      now = end;
      await flush();
    },
  };
  return io;
}

/** Lets pending promises and microtasks run (bounded). */
async function flush() {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

/** A WebSocket stand-in the test opens, feeds and closes. */
function fakeWebSocketClass() {
  const made = [];
  class FakeWs {
    constructor(url) {
      this.url = url;
      this.sent = [];
      made.push(this);
    }
    send(s) { this.sent.push(s); }
    close() { this.closed = true; }
    open() { this.onopen?.(); }
    text(s) { this.onmessage?.({ data: s }); }
    end(code, reason = '') { this.onclose?.({ code, reason }); }
  }
  return { FakeWs, made };
}

/** fetch that answers 404 to everything (a server without /nodes), recording the URLs
 * other than the node list's. */
function fetch404(urls) {
  return async (url) => {
    if (!String(url).endsWith('/nodes')) urls.push(String(url));
    return new Response('no', { status: 404 });
  };
}

function states(conn) {
  const log = [];
  conn.on('state', (s) => log.push(s));
  return log;
}

test('a goaway is obeyed exactly: no attempt before the delay, then to its endpoint', async () => {
  const io = virtualIo();
  const { FakeWs, made } = fakeWebSocketClass();
  const conn = new Connection({ endpoints: ['http://a:1'], user: 'u', io, WebSocket: FakeWs,
    fetch: fetch404([]) });
  const log = states(conn);
  await flush();
  assert.equal(made.length, 1);
  assert.match(made[0].url, /^ws:\/\/a:1\/ws\?user=u&format=json$/);
  made[0].open();
  made[0].text('{"id":"p-5"}');
  made[0].end(1001, '{"goaway":true,"reconnect_after_ms":3000,"endpoint":"ws://b:2"}');
  assert.deepEqual(log.at(-1), { state: 'waiting', transport: null, endpoint: 'http://a:1',
    node: null, delayMs: 3000, reason: 'goaway' });
  await io.advance(2999);
  assert.equal(made.length, 1, 'no attempt before reconnect_after_ms');
  await io.advance(1);
  assert.equal(made.length, 2);
  assert.match(made[1].url, /^ws:\/\/b:2\/ws\?.*last_event_id=p-5/);
  // The goaway was planned: the backoff did not grow.
  assert.equal(conn.attempt, 0);
  conn.close();
});

test('reconnect: false in a goaway stops the client', async () => {
  const io = virtualIo();
  const { FakeWs, made } = fakeWebSocketClass();
  const conn = new Connection({ endpoints: 'a:1', io, WebSocket: FakeWs, fetch: fetch404([]) });
  await flush();
  made[0].open();
  made[0].end(1001, '{"goaway":true,"reconnect_after_ms":0,"reconnect":false}');
  assert.equal(conn.state, 'closed');
  await io.advance(60000);
  assert.equal(made.length, 1);
});

test('fallback: WebSocket fails, then SSE, then long polling, then a backoff', async () => {
  const io = virtualIo();
  const { FakeWs, made } = fakeWebSocketClass();
  const urls = [];
  const conn = new Connection({ endpoints: 'a:1', user: 'u', topics: ['t'], io,
    WebSocket: FakeWs, fetch: fetch404(urls) });
  const log = states(conn);
  await flush();
  made[0].end(1006);
  await io.advance(0);
  await flush();
  assert.match(urls[0], /^http:\/\/a:1\/sse\?user=u&topics=t$/);
  await io.advance(0);
  assert.match(urls[1], /^http:\/\/a:1\/poll\?user=u&topics=t&timeout_ms=25000$/);
  await flush();
  const wait = log.at(-1);
  assert.equal(wait.state, 'waiting');
  assert.equal(wait.reason, 'unreachable');
  assert.equal(wait.delayMs, 500 + 0.5 * 500); // backoff attempt 0 with random 0.5
  const tried = log.filter((s) => s.state === 'connecting').map((s) => s.transport);
  assert.deepEqual(tried, ['ws', 'sse', 'poll']);
  conn.close();
});

test('503 with Retry-After waits as told and keeps the transport', async () => {
  const io = virtualIo();
  const conn = new Connection({ endpoints: 'a:1', transports: ['sse'], io,
    fetch: async () => new Response('busy', { status: 503, headers: { 'Retry-After': '4' } }) });
  const log = states(conn);
  await flush();
  await flush();
  assert.equal(log.at(-1).reason, 'busy');
  assert.equal(log.at(-1).delayMs, 4000 + 250);
  conn.close();
});

test('resume: the newest position goes back on reconnect; replayed ids are dropped', async () => {
  const io = virtualIo();
  const { FakeWs, made } = fakeWebSocketClass();
  const conn = new Connection({ endpoints: 'a:1', io, WebSocket: FakeWs, fetch: fetch404([]) });
  const got = [];
  const gaps = [];
  conn.on('message', (m) => got.push(m));
  conn.on('gap', (g) => gaps.push(g));
  await flush();
  made[0].open();
  made[0].text('{"id":"p-1"}');
  made[0].text('{"id":"m-1","stream":"topic:news","data":"one"}');
  made[0].text('{"id":"m-2","stream":"user","data_b64":"AP8="}');
  made[0].end(1006);
  await io.advance(1000);
  assert.match(made[1].url, /last_event_id=m-2/);
  made[1].open();
  made[1].text('{"id":"m-2","stream":"user","data_b64":"AP8="}'); // replayed overlap
  made[1].text('{"id":"m-3","stream":"all","data":"three"}');
  made[1].text('{"id":"g-1","gap":{"stream":"topic:news","reason":"expired"}}');
  made[1].text('{"subscribed":"x"}'); // in envelope mode a control reply, not a message
  assert.deepEqual(got.map((m) => m.id), ['m-1', 'm-2', 'm-3']);
  assert.equal(got[0].topic, 'news');
  assert.deepEqual([...got[1].data], [0, 255]);
  assert.deepEqual(gaps, [{ stream: 'topic:news', topic: 'news', reason: 'expired' }]);
  assert.equal(conn.position, 'g-1');
  conn.close();
});

test('a raw-payload server (no format=json) delivers frames as they are', async () => {
  const io = virtualIo();
  const { FakeWs, made } = fakeWebSocketClass();
  const conn = new Connection({ endpoints: 'a:1', io, WebSocket: FakeWs, fetch: fetch404([]) });
  const got = [];
  conn.on('message', (m) => got.push(m.data));
  await flush();
  made[0].open();
  made[0].text('hello');
  made[0].text('{"id":"looks-like-an-envelope"}');
  assert.deepEqual(got, ['hello', '{"id":"looks-like-an-envelope"}']);
  // Topic changes go in-band, and their answer is a control event, not a message.
  const controls = [];
  conn.on('control', (c) => controls.push(c));
  conn.subscribe('t');
  assert.deepEqual(made[0].sent, ['{"subscribe":"t"}']);
  made[0].text('{"subscribed":"t"}');
  assert.deepEqual(controls, [{ subscribed: 't' }]);
  assert.equal(got.length, 2);
  conn.close();
});

test('close codes: slow consumer backs off harder, protocol errors stop', async () => {
  const io = virtualIo();
  const { FakeWs, made } = fakeWebSocketClass();
  const conn = new Connection({ endpoints: 'a:1', io, WebSocket: FakeWs, fetch: fetch404([]) });
  const log = states(conn);
  await flush();
  made[0].open();
  made[0].end(1008, 'slow consumer');
  assert.equal(log.at(-1).reason, 'shed');
  assert.equal(log.at(-1).delayMs, 500 + 0.5 * 4000); // attempt 3
  await io.advance(log.at(-1).delayMs);
  made[1].open();
  made[1].end(1002, 'protocol error');
  assert.equal(conn.state, 'failed');
  await io.advance(100000);
  assert.equal(made.length, 2);
});

test('token expiry fetches a new token before reconnecting', async () => {
  const io = virtualIo();
  const { FakeWs, made } = fakeWebSocketClass();
  let n = 0;
  const conn = new Connection({ endpoints: 'a:1', io, WebSocket: FakeWs, fetch: fetch404([]),
    token: async () => `tok${++n}` });
  await flush();
  assert.match(made[0].url, /token=tok1/);
  made[0].open();
  made[0].end(4001, 'token expired');
  await io.advance(1000);
  assert.match(made[1].url, /token=tok2/);
  conn.close();
});

test('the online event pulls a long backoff in, but never a goaway wait', async () => {
  const io = virtualIo();
  const { FakeWs, made } = fakeWebSocketClass();
  const conn = new Connection({ endpoints: 'a:1', io, WebSocket: FakeWs, fetch: fetch404([]),
    backoffMinMs: 10000, backoffMaxMs: 60000, transports: ['ws'] });
  const log = states(conn);
  await flush();
  made[0].end(1006); // never opened: a round failed, backoff 10–20 s
  assert.ok(log.at(-1).delayMs >= 10000);
  conn.spreadAfterOnline();
  assert.equal(log.at(-1).reason, 'online');
  assert.ok(log.at(-1).delayMs <= 2000);
  await io.advance(2000);
  made[1].open();
  made[1].end(1001, '{"goaway":true,"reconnect_after_ms":30000}');
  conn.spreadAfterOnline();
  assert.equal(log.at(-1).reason, 'goaway');
  assert.equal(log.at(-1).delayMs, 30000);
  conn.close();
});

test('endpoints: a failing one is left for a working one, by probe', async () => {
  const io = virtualIo();
  const { FakeWs, made } = fakeWebSocketClass();
  const probes = [];
  const conn = new Connection({ endpoints: ['http://dead:1', 'http://live:1'], io,
    WebSocket: FakeWs, transports: ['ws'],
    fetch: async (url) => {
      if (String(url).endsWith('/nodes')) return new Response('no', { status: 404 });
      probes.push(String(url));
      if (String(url).startsWith('http://dead')) throw new TypeError('refused');
      return new Response('not found', { status: 404 });
    } });
  const chosen = [];
  conn.on('endpoint', (e) => chosen.push(e.url));
  await flush();
  assert.deepEqual(chosen, ['http://live:1']);
  assert.match(made[0].url, /^ws:\/\/live:1\//);
  assert.equal(probes.length, 2);
  conn.close();
});

/** A fetch for a little cluster: `/nodes` answers what `nodes()` says for that endpoint, or
 * fails when the endpoint is in `down`; probes answer 404. Records every URL. */
function clusterFetch(nodes, down = new Set()) {
  const urls = [];
  const f = async (url) => {
    const u = new URL(String(url));
    urls.push(String(url));
    if (down.has(u.origin)) throw new TypeError('refused');
    if (u.pathname === '/nodes') return Response.json(nodes(u.origin));
    return new Response('not found', { status: 404 });
  };
  return { fetch: f, urls, asked: () => urls.filter((x) => x.endsWith('/nodes')) };
}

test('/nodes: one endpoint given, the node list adds the other, the loaded one is left',
  async () => {
    const io = virtualIo();
    const { FakeWs, made } = fakeWebSocketClass();
    let bDraining = false;
    const list = (origin) => ({
      self: origin === 'http://a:1' ? 'n1' : 'n2',
      nodes: [
        { id: 'n1', url: 'ws://a:1', connections: 900, capacity: 1000, load: 0.9,
          mem_headroom: null, draining: false },
        { id: 'n2', url: 'ws://b:2', connections: 10, capacity: 1000, load: 0.01,
          mem_headroom: 0.9, draining: bDraining },
      ],
    });
    const down = new Set();
    const net = clusterFetch(list, down);
    const conn = new Connection({ endpoints: 'http://a:1', io, WebSocket: FakeWs,
      fetch: net.fetch, transports: ['ws'] });
    const log = states(conn);
    const nodes = [];
    conn.on('nodes', (n) => nodes.push(n));
    await flush();
    assert.deepEqual(net.asked(), ['http://a:1/nodes']);
    assert.equal(nodes[0].self, 'n1');
    assert.equal(made.length, 1);
    assert.match(made[0].url, /^ws:\/\/b:2\//, 'the idle node, not the loaded one asked');
    made[0].open();
    assert.equal(log.at(-1).node, 'n2');
    // Within the refresh interval nothing reads the list again, however many messages.
    for (let i = 0; i < 50; i++) made[0].text(`{"id":"m-${i}","stream":"user","data":"x"}`);
    assert.equal(net.asked().length, 1);
    // b drains: its goaway (no endpoint named) makes the client read the list again, first
    // from a (b's listener is closed), and go to a, the only live node left.
    bDraining = true;
    down.add('http://b:2');
    made[0].end(1001, '{"goaway":true,"reconnect_after_ms":2000}');
    await io.advance(2000);
    await flush();
    assert.deepEqual(net.asked(), ['http://a:1/nodes', 'http://a:1/nodes']);
    assert.equal(made.length, 2);
    assert.match(made[1].url, /^ws:\/\/a:1\/.*last_event_id=m-49/);
    made[1].open();
    assert.equal(log.at(-1).node, 'n1');
    conn.close();
  });

test('/nodes: a 404 or a failure falls back to the static list silently, bounded', async () => {
  for (const failing of [
    async () => new Response('no', { status: 404 }),
    async () => { throw new TypeError('refused'); },
    async () => new Response('{"not":"a list"}', { status: 200 }),
  ]) {
    const io = virtualIo();
    const { FakeWs, made } = fakeWebSocketClass();
    const urls = [];
    const conn = new Connection({ endpoints: ['http://a:1', 'http://b:1'], io, WebSocket: FakeWs,
      transports: ['ws'], fetch: async (url) => {
        urls.push(String(url));
        if (String(url).endsWith('/nodes')) return failing();
        return new Response('', { status: 404 });
      } });
    const errors = [];
    conn.on('error', (e) => errors.push(e));
    await flush();
    assert.equal(made.length, 1, 'connected to a static endpoint');
    // At most two endpoints asked per reconnect, then the probes.
    assert.equal(urls.filter((u) => u.endsWith('/nodes')).length, 2);
    made[0].open();
    made[0].end(1006);
    await io.advance(1000);
    assert.equal(made.length, 2);
    assert.equal(urls.filter((u) => u.endsWith('/nodes')).length, 2,
      'a plain close within the refresh interval reads no list');
    assert.deepEqual(errors, []);
    conn.close();
  }
});

test('/nodes off: discover false reads no list', async () => {
  const io = virtualIo();
  const { FakeWs, made } = fakeWebSocketClass();
  const net = clusterFetch(() => ({ self: null, nodes: [] }));
  const conn = new Connection({ endpoints: 'http://a:1', io, WebSocket: FakeWs,
    fetch: net.fetch, discover: false });
  await flush();
  assert.equal(made.length, 1);
  assert.deepEqual(net.urls, []);
  conn.close();
});

test('tabs: ?tabs= at connect, {"tabs":N} on a WebSocket when it changes, its answer is control',
  async () => {
    const io = virtualIo();
    const { FakeWs, made } = fakeWebSocketClass();
    const conn = new Connection({ endpoints: 'a:1', io, WebSocket: FakeWs, fetch: fetch404([]),
      tabs: 3 });
    const got = [];
    const controls = [];
    conn.on('message', (m) => got.push(m));
    conn.on('control', (c) => controls.push(c));
    await flush();
    assert.match(made[0].url, /[?&]tabs=3(&|$)/);
    made[0].open();
    made[0].text('{"id":"p-1"}');
    conn.setTabs(3);
    assert.deepEqual(made[0].sent, [], 'no change, nothing sent');
    conn.setTabs(2);
    conn.setTabs(5000); // clamped to the server's 1000
    assert.deepEqual(made[0].sent, ['{"tabs":2}', '{"tabs":1000}']);
    made[0].text('{"tabs":2}');
    made[0].text('{"tabs":1000}');
    assert.deepEqual(controls, [{ tabs: 2 }, { tabs: 1000 }]);
    assert.deepEqual(got, []);
    conn.setTabs(1);
    made[0].end(1006);
    await io.advance(1000);
    assert.doesNotMatch(made[1].url, /tabs=/, 'one tab is the default: not said');
    conn.close();
  });

test('tabs: SSE and long polling tell the count at their next connect', async () => {
  const io = virtualIo();
  const urls = [];
  const conn = new Connection({ endpoints: 'a:1', io, transports: ['sse', 'poll'],
    fetch: fetch404(urls), tabs: 4 });
  await flush();
  await io.advance(0);
  await flush();
  assert.match(urls[0], /\/sse\?tabs=4$/);
  assert.match(urls[1], /\/poll\?tabs=4&timeout_ms=/);
  conn.close();
});

test('a hub tells its connection how many tabs it has', async () => {
  const { Hub } = await import('../hub.js');
  const io = virtualIo();
  const { FakeWs, made } = fakeWebSocketClass();
  const out = [];
  const hub = new Hub({ endpoints: 'a:1', io, WebSocket: FakeWs, fetch: fetch404([]) },
    (m) => out.push(m));
  hub.join('t1', [], null);
  await flush();
  assert.doesNotMatch(made[0].url, /tabs=/);
  made[0].open();
  hub.join('t2', ['x'], null);
  hub.join('t3', [], null);
  hub.leave('t1');
  assert.deepEqual(made[0].sent, ['{"subscribe":"x"}', '{"tabs":2}', '{"tabs":3}', '{"tabs":2}']);
  assert.deepEqual(out.filter((m) => m.op === 'tabs').map((m) => m.n), [1, 2, 3, 2]);
  hub.close();
});

test('a reconnect soon after a choice probes only what it has not measured lately', async () => {
  const io = virtualIo();
  const { FakeWs, made } = fakeWebSocketClass();
  const net = clusterFetch(() => ({ self: null, nodes: [] }));
  const conn = new Connection({ endpoints: ['http://a:1', 'http://b:1'], io, WebSocket: FakeWs,
    fetch: net.fetch, transports: ['ws'] });
  await flush();
  const probes = () => net.urls.filter((u) => !u.endsWith('/nodes')).length;
  assert.equal(probes(), 1, 'a was timed by its node list, b probed');
  made[0].open();
  made[0].end(1001, '{"goaway":true,"reconnect_after_ms":1000}');
  await io.advance(1000);
  await flush();
  assert.equal(made.length, 2);
  assert.equal(probes(), 1, 'both measured within rttFreshMs: no probe');
  made[1].open();
  made[1].end(1001, '{"goaway":true,"reconnect_after_ms":40000}');
  await io.advance(40000);
  await flush();
  assert.equal(made.length, 3);
  assert.ok(probes() >= 2, 'measurements older than rttFreshMs are probed again');
  conn.close();
});
