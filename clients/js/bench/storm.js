// The goaway storm: many library clients on one node of a three-node cluster, that node
// drained, and where and when each client comes back.
//
//   bash clients/js/bench/storm.sh [--clients 10000] [--procs 4] [--goaway-ms 10000] …
//
// On loopback only: a real redis-server and nats-server, three `c10m serve` nodes (a, b, c)
// with --public-url. Every client is a `C10m` (share 'none', Node's WebSocket) given the
// three endpoints; the clients connect while only a runs (b and c are the nodes a deploy
// adds), so all start on a and have b and c only as names. Then b and c start, a is drained
// (POST /drain?rate=R; each goaway asks for a random wait in [0, --goaway-ms]), and a topic
// is published through b every --publish-every-ms. Each client records its goaway, the wait
// it was asked, when it was connected again (ms after the drain began, one clock for all
// processes), to which node, how many attempts it took, and every message (lost, doubled).
// Everything is bounded: client count, connect and storm deadlines, a kill at the end.

import { fork } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { C10m } from '../c10m.js';
import { ask } from './children.js';
import { startServer, startBackends, nodesOf, waitFor, freePort } from '../test/support.js';

const opts = parseArgs({ options: {
  clients: { type: 'string', default: '10000' },
  procs: { type: 'string', default: '4' },
  'goaway-ms': { type: 'string', default: '10000' },
  'drain-rate': { type: 'string', default: '0' },
  'publish-every-ms': { type: 'string', default: '500' },
  'connect-per-s': { type: 'string', default: '1000' },
  role: { type: 'string', default: 'main' },
  endpoints: { type: 'string' },
  count: { type: 'string' },
  offset: { type: 'string' },
} }).values;

/** Wall-clock milliseconds with sub-ms resolution, comparable across processes. */
const now = () => performance.timeOrigin + performance.now();
/** The most clients one run may start (ports, memory). */
const CLIENTS_MAX = 20000;

/** A child: `count` clients, their records sent to the parent on request. */
async function clientProcess() {
  const endpoints = opts.endpoints.split(',');
  const count = Number(opts.count);
  const perS = Number(opts['connect-per-s']);
  /** @type {any[]} */
  const recs = [];
  let drainAt = Infinity;
  const clients = [];
  for (let i = 0; i < count; i++) {
    const rec = { goawayAt: null, askedMs: null, backAt: null, node: null, attempts: 0,
      firstNode: null, seqs: new Map(), useqs: new Map(), gaps: {}, errors: 0, waits: {},
      listed: false, user: `s${Number(opts.offset) + i}` };
    recs.push(rec);
    const c = new C10m({ endpoints, user: `s${Number(opts.offset) + i}`, topics: ['storm'],
      share: 'none' });
    c.on('state', (s) => {
      if (s.state === 'connected' && rec.firstNode == null) rec.firstNode = s.node ?? s.endpoint;
      if (s.state === 'connected') {
        rec.ups = (rec.ups ?? 0) + 1;
        rec.upAt = now();
        rec.lastNode = s.node ?? s.endpoint;
      }
      if (rec.goawayAt == null) return;
      if (s.state === 'connecting') rec.attempts += 1;
      if (s.state === 'waiting' && s.reason !== 'goaway') {
        rec.waits[s.reason] = (rec.waits[s.reason] ?? 0) + 1;
      }
      if (s.state === 'connected' && rec.backAt == null) {
        rec.backAt = now();
        rec.node = s.node ?? s.endpoint;
      }
    });
    c.on('goaway', (g) => {
      if (rec.goawayAt != null) return;
      rec.goawayAt = now();
      rec.askedMs = g.reconnectAfterMs;
    });
    c.on('message', (m) => {
      const d = String(m.data);
      // `seq:N` on the topic, `u:N` to this client's user (bench/drill.js).
      const [map, seq] = d.startsWith('seq:') ? [rec.seqs, Number(d.slice(4))]
        : d.startsWith('u:') ? [rec.useqs, Number(d.slice(2))] : [null, null];
      if (map) map.set(seq, (map.get(seq) ?? 0) + 1);
    });
    c.on('nodes', () => {
      if (rec.goawayAt != null) rec.listed = true;
    });
    c.on('gap', (g) => {
      const k = `${g.stream}:${g.reason}`;
      rec.gaps[k] = (rec.gaps[k] ?? 0) + 1;
    });
    c.on('error', () => (rec.errors += 1));
    clients.push(c);
    if (i % 50 === 49) await new Promise((r) => setTimeout(r, 50000 / perS));
  }
  const connected = () => clients.filter((c) => c.state === 'connected').length;
  // How late this process's event loop ran during the storm: the clients' timers and
  // sockets wait behind it, so it bounds what the figures can say.
  const lag = monitorEventLoopDelay({ resolution: 10 });
  process.on('message', (msg) => {
    if (msg.op === 'count') process.send({ op: 'count', connected: connected(),
      back: recs.filter((r) => r.backAt != null).length,
      goaways: recs.filter((r) => r.goawayAt != null).length });
    if (msg.op === 'drain') {
      drainAt = msg.at;
      lag.enable();
    }
    if (msg.op === 'report') {
      for (const c of clients) c.close();
      lag.disable();
      process.send({ op: 'report',
        recs: recs.map((r) => ({ ...r, seqs: [...r.seqs], useqs: [...r.useqs] })),
        drainAt, lagMs: { p50: lag.percentile(50) / 1e6, p99: lag.percentile(99) / 1e6,
          max: lag.max / 1e6 } });
    }
  });
  process.send({ op: 'started' });
}

/** @param {number[]} xs sorted @param {number} q 0..1 */
const quantile = (xs, q) => xs[Math.min(xs.length - 1, Math.floor(q * xs.length))];

async function main() {
  const total = Math.min(CLIENTS_MAX, Number(opts.clients));
  const procs = Math.max(1, Number(opts.procs));
  const goawayMs = Number(opts['goaway-ms']);
  const started = Date.now();
  const log = (s) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${s}`);
  const backends = await startBackends();
  // b and c get their ports now (the clients know their names) but start later.
  const portB = await freePort();
  const portC = await freePort();
  const common = ['--goaway-reconnect-ms-max', String(goawayMs),
    '--shutdown-timeout-ms', String(goawayMs + 60000), '--conns-per-shard-max', '100000'];
  /** @type {any[]} */
  const servers = [];
  const children = [];
  const cleanup = async () => {
    for (const ch of children) ch.kill('SIGKILL');
    for (const s of servers) await s.stop();
    backends.stop();
  };
  try {
    const a = await startServer([...backends.args('a'), ...common], { shards: 1 });
    servers.push(a);
    const endpoints = [a.base, `http://127.0.0.1:${portB}`, `http://127.0.0.1:${portC}`];
    log(`a at ${a.base}; ${total} clients in ${procs} processes`);
    const per = Math.ceil(total / procs);
    for (let p = 0; p < procs; p++) {
      const count = Math.min(per, total - p * per);
      const ch = fork(fileURLToPath(import.meta.url), ['--role', 'client', '--endpoints',
        endpoints.join(','), '--count', String(count), '--offset', String(p * per),
        '--connect-per-s', String(Number(opts['connect-per-s']) / procs)],
      { execArgv: typeof WebSocket === 'function' ? [] : ['--experimental-websocket'] });
      children.push(ch);
    }
    await ask(children, 'started').catch(() => {});
    let shown = 0;
    await waitFor(async () => {
      const n = (await a.stats()).connections;
      if (Date.now() - shown > 5000) {
        shown = Date.now();
        log(`${n} on a`);
      }
      return n >= total;
    }, `${total} connections on a`, 300000, 500);
    log(`${total} connected to a`);

    // The deploy: b and c come up on the ports the clients know.
    const start = (id, port) => startServer([...backends.args(id), ...common],
      { clientPort: port, shards: 1 });
    servers.push(await start('b', portB), await start('c', portC));
    const [, b, c] = servers;
    await waitFor(async () => (await nodesOf(a)).nodes.length === 3, 'a to list 3 nodes',
      20000, 200);
    log('b and c up and listed');

    // Publish through b while the storm runs: every message to every client.
    let seq = 0;
    const published = [];
    const every = Number(opts['publish-every-ms']);
    const pub = setInterval(() => {
      const s = seq++;
      published.push({ seq: s, at: now() });
      b.publish('topic=storm', `seq:${s}`).catch(() => {});
    }, every);
    await new Promise((r) => setTimeout(r, 2 * every));
    const drainAt = now();
    await ask(children, 'count');
    for (const ch of children) ch.send({ op: 'drain', at: drainAt });
    await a.drain(Number(opts['drain-rate']));
    log(`drain of a began (rate ${opts['drain-rate']}/s, goaway wait in [0, ${goawayMs}] ms)`);
    const deadline = goawayMs + (Number(opts['drain-rate']) > 0 ? total /
      Number(opts['drain-rate']) * 1000 : 0) + 60000;
    let back = 0;
    await waitFor(async () => {
      const counts = await ask(children, 'count');
      back = counts.reduce((s, x) => s + x.back, 0);
      return back >= total;
    }, 'every client back', deadline, 500).catch((e) => log(String(e)));
    log(`${back} of ${total} back`);
    await new Promise((r) => setTimeout(r, 2 * every));
    clearInterval(pub);
    await new Promise((r) => setTimeout(r, 2000)); // the last publishes land
    const stats = { b: (await b.stats()).connections, c: (await c.stats()).connections };
    const reports = await ask(children, 'report');
    summarize(reports, published, drainAt, goawayMs, stats, total);
  } finally {
    await cleanup();
  }
}

function summarize(reports, published, drainAt, goawayMs, stats, total) {
  const recs = reports.flatMap((r) => r.recs);
  const backs = recs.filter((r) => r.backAt != null);
  const rel = backs.map((r) => r.backAt - drainAt).sort((x, y) => x - y);
  const early = recs.filter((r) => r.backAt != null && r.goawayAt != null &&
    r.backAt - r.goawayAt < r.askedMs - 2).length;
  const asked = recs.filter((r) => r.askedMs != null).map((r) => r.askedMs).sort((x, y) => x - y);
  const split = {};
  for (const r of backs) split[r.node] = (split[r.node] ?? 0) + 1;
  const hist = new Array(Math.max(Math.ceil(goawayMs / 1000) + 2,
    Math.ceil((rel.at(-1) ?? 0) / 1000) + 1)).fill(0);
  for (const t of rel) hist[Math.min(hist.length - 1, Math.max(0, Math.floor(t / 1000)))] += 1;
  const waits = {};
  for (const r of recs) for (const [k, n] of Object.entries(r.waits)) waits[k] = (waits[k] ?? 0) + n;
  const attempts = {};
  for (const r of backs) attempts[r.attempts] = (attempts[r.attempts] ?? 0) + 1;
  // Messages: those published from the drain on (and one before), each should arrive once.
  const window = published.filter((p) => p.at >= drainAt - 1000);
  let lost = 0;
  let doubled = 0;
  let lostClients = 0;
  for (const r of recs) {
    const got = new Map(r.seqs);
    let mine = 0;
    for (const p of window) {
      const n = got.get(p.seq) ?? 0;
      if (n === 0) mine += 1;
      if (n > 1) doubled += n - 1;
    }
    lost += mine;
    if (mine) lostClients += 1;
  }
  const gaps = {};
  for (const r of recs) for (const [k, n] of Object.entries(r.gaps)) gaps[k] = (gaps[k] ?? 0) + n;
  const q = (xs) => {
    xs.sort((x, y) => x - y);
    return { p0: Math.round(xs[0]), p50: Math.round(quantile(xs, 0.5)),
      p90: Math.round(quantile(xs, 0.9)), p99: Math.round(quantile(xs, 0.99)),
      max: Math.round(xs.at(-1)) };
  };
  const withGoaway = recs.filter((r) => r.goawayAt != null);
  const goawayAfterDrain = q(withGoaway.map((r) => r.goawayAt - drainAt));
  // What the client added to the server's wait: the node list, two probes, the connect.
  const overhead = q(withGoaway.filter((r) => r.backAt != null)
    .map((r) => r.backAt - r.goawayAt - r.askedMs));
  const errors = recs.reduce((s, r) => s + r.errors, 0);
  const d = (q) => Math.round(quantile(rel, q));
  const out = {
    clients: total, goaways: recs.filter((r) => r.goawayAt != null).length, back: backs.length,
    before_their_wait: early,
    back_ms_after_drain: { min: d(0), p10: d(0.1), p20: d(0.2), p30: d(0.3), p40: d(0.4),
      p50: d(0.5), p60: d(0.6), p70: d(0.7), p80: d(0.8), p90: d(0.9), p99: d(0.99),
      max: Math.round(rel.at(-1)) },
    goaway_received_ms_after_drain: goawayAfterDrain,
    reconnect_ms_beyond_the_wait: overhead,
    asked_wait_ms: { p10: quantile(asked, 0.1), p50: quantile(asked, 0.5),
      p90: quantile(asked, 0.9), max: asked.at(-1) },
    per_second: hist, split, server_connections: stats, attempts,
    waits_after_goaway: waits, read_a_node_list: recs.filter((r) => r.listed).length,
    client_loop_lag_ms: reports.map((r) => r.lagMs),
    messages: { published_in_window: window.length, expected: window.length * total, lost,
      clients_missing_some: lostClients, doubled, gaps }, errors,
  };
  console.log(JSON.stringify(out, null, 1));
}

if (opts.role === 'client') await clientProcess();
else await main();
