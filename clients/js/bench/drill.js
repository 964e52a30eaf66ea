// The node-loss drill with resuming clients: a four-node cluster, library clients spread over
// it by load, per-user and topic publishes throughout, one node SIGKILLed mid-run. Each
// client resumes on another node from its last position; the drill counts, per client, every
// accepted publish it should have received: lost, doubled, and the gaps it was told.
//
//   bash clients/js/bench/drill.sh [--clients 4000] [--procs 2] [--nodes 4] [--kill-after-s 5]
//     [--run-s 20] [--topic-every-ms 500] [--user-rate 200] [--bus-only]
//
// On loopback only: a real redis-server and nats-server (JetStream), `--nodes` c10m nodes
// (one shard each, --public-url), client processes forked from bench/storm.js's client role
// (`C10m`, share 'none', Node's WebSocket; user s<i>, topic `storm`). Publishes go through the
// admin API of the nodes that survive (a publish accepted by a node in its last millisecond
// can die with it; backends that need an acknowledgement publish to JetStream): a topic
// message `seq:N` every --topic-every-ms, and --user-rate messages `u:N` a second to random
// users. Everything is bounded: client count, connect and run deadlines, a kill at the end.

import { fork } from 'node:child_process';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { ask } from './children.js';
import { startServer, startBackends, nodesOf, waitFor } from '../test/support.js';

const opts = parseArgs({ options: {
  clients: { type: 'string', default: '4000' },
  procs: { type: 'string', default: '2' },
  nodes: { type: 'string', default: '4' },
  'kill-after-s': { type: 'string', default: '5' },
  'run-s': { type: 'string', default: '20' },
  'topic-every-ms': { type: 'string', default: '500' },
  'user-rate': { type: 'string', default: '200' },
  'connect-per-s': { type: 'string', default: '1000' },
  // Nodes without history (--history-ttl-ms 0): the at-most-once bus path, for comparison.
  'bus-only': { type: 'boolean', default: false },
} }).values;

const CLIENTS_MAX = 20000;
const NODES_MAX = 8;
const now = () => performance.timeOrigin + performance.now();
const storm = fileURLToPath(new URL('./storm.js', import.meta.url));

async function main() {
  const total = Math.min(CLIENTS_MAX, Number(opts.clients));
  const procs = Math.max(1, Number(opts.procs));
  const count = Math.min(NODES_MAX, Math.max(2, Number(opts.nodes)));
  const started = Date.now();
  const log = (s) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${s}`);
  const backends = await startBackends();
  const servers = [];
  const children = [];
  const timers = [];
  const cleanup = async () => {
    for (const t of timers) clearInterval(t);
    for (const ch of children) ch.kill('SIGKILL');
    for (const s of servers) await s.stop();
    backends.stop();
  };
  try {
    const ids = 'abcdefgh'.slice(0, count).split('');
    for (const id of ids) {
      const extra = opts['bus-only'] ? ['--history-ttl-ms', '0'] : [];
      servers.push(await startServer([...backends.args(id), '--conns-per-shard-max', '100000',
        ...extra], { shards: 1 }));
    }
    await waitFor(async () => (await nodesOf(servers[0])).nodes.length === count,
      `${count} nodes listed`, 20000, 200);
    const endpoints = servers.map((s) => s.base);
    log(`${count} nodes up; ${total} clients in ${procs} processes`);
    const per = Math.ceil(total / procs);
    for (let p = 0; p < procs; p++) {
      const n = Math.min(per, total - p * per);
      children.push(fork(storm, ['--role', 'client', '--endpoints', endpoints.join(','),
        '--count', String(n), '--offset', String(p * per),
        '--connect-per-s', String(Number(opts['connect-per-s']) / procs)],
      { execArgv: typeof WebSocket === 'function' ? [] : ['--experimental-websocket'] }));
    }
    await ask(children, 'started');
    const on = async () => Promise.all(servers.map(async (s) => (await s.stats()).connections));
    await waitFor(async () => (await on()).reduce((a, b) => a + b, 0) >= total,
      `${total} connections`, 300000, 500);
    const split = await on();
    log(`all connected: ${ids.map((id, i) => `${id} ${split[i]}`).join(', ')}`);

    // Publishes through the survivors only.
    const victim = 0;
    const via = servers.slice(1);
    let turn = 0;
    const pick = () => via[turn++ % via.length];
    const topicSeqs = [];
    const userSeqs = new Map();
    let failed = 0;
    let t = 0;
    timers.push(setInterval(() => {
      const s = t++;
      pick().publish('topic=storm', `seq:${s}`).then(() => topicSeqs.push(s), () => failed++);
    }, Number(opts['topic-every-ms'])));
    let u = 0;
    const perTick = Math.max(1, Math.round(Number(opts['user-rate']) / 20));
    timers.push(setInterval(() => {
      for (let i = 0; i < perTick; i++) {
        const k = u++;
        const user = `s${Math.floor(Math.random() * total)}`;
        pick().publish(`user=${user}`, `u:${k}`).then(() => {
          if (!userSeqs.has(user)) userSeqs.set(user, []);
          userSeqs.get(user).push(k);
        }, () => failed++);
      }
    }, 50));
    await new Promise((r) => setTimeout(r, Number(opts['kill-after-s']) * 1000));
    const held = split[victim];
    servers[victim].proc.kill('SIGKILL');
    const killAt = now();
    log(`node ${ids[victim]} killed, holding ${held} clients`);
    let backMs = null;
    await waitFor(async () => {
      const live = (await Promise.all(via.map(async (s) => (await s.stats()).connections)))
        .reduce((a, b) => a + b, 0);
      if (live >= total && backMs == null) backMs = now() - killAt;
      return live >= total;
    }, 'every client on a survivor', 120000, 250).catch((e) => log(String(e)));
    log(`all ${total} on the survivors ${Math.round(backMs ?? -1)} ms after the kill`);
    const rest = Number(opts['run-s']) * 1000 - (now() - killAt);
    if (rest > 0) await new Promise((r) => setTimeout(r, rest));
    for (const tm of timers) clearInterval(tm);
    await new Promise((r) => setTimeout(r, 3000)); // the last publishes land
    const after = await Promise.all(via.map(async (s) => (await s.stats()).connections));
    const reports = await ask(children, 'report');
    const recs = reports.flatMap((r) => r.recs);
    let lost = 0;
    let doubled = 0;
    let expected = 0;
    let missing = 0;
    const gaps = {};
    for (const r of recs) {
      const got = new Map(r.seqs);
      const ugot = new Map(r.useqs);
      let mine = 0;
      const tally = (want, have) => {
        for (const s of want) {
          const n = have.get(s) ?? 0;
          expected += 1;
          if (n === 0) mine += 1;
          if (n > 1) doubled += n - 1;
        }
      };
      tally(topicSeqs, got);
      tally(userSeqs.get(r.user) ?? [], ugot);
      lost += mine;
      if (mine) missing += 1;
      for (const [k, n] of Object.entries(r.gaps)) gaps[k] = (gaps[k] ?? 0) + n;
    }
    const moved = recs.filter((r) => (r.ups ?? 0) > 1).length;
    console.log(JSON.stringify({
      clients: total, nodes: count, history: !opts['bus-only'], killed: ids[victim], held_by_killed: held,
      split_before: Object.fromEntries(ids.map((id, i) => [id, split[i]])),
      split_after: Object.fromEntries(ids.slice(1).map((id, i) => [id, after[i]])),
      reconnected: moved, all_back_ms_after_kill: backMs == null ? null : Math.round(backMs),
      publishes: { topic: topicSeqs.length,
        user: [...userSeqs.values()].reduce((a, v) => a + v.length, 0), refused: failed },
      deliveries: { expected, lost, doubled, clients_missing_some: missing, gaps },
    }, null, 1));
  } finally {
    await cleanup();
  }
}

await main();
