// The load-aware choice against a real two-node cluster (real redis-server and nats-server,
// two c10m nodes with --public-url): a client told of one node only finds the other through
// GET /nodes, leaves the loaded node for the idle one, and never picks a draining node.
import test from 'node:test';
import assert from 'node:assert/strict';
import { C10m } from '../c10m.js';
import { startServer, startBackends, nodesOf, record, waitFor } from './support.js';

if (typeof WebSocket !== 'function') throw new Error('run with node --experimental-websocket');

/** Node a holds 120 connections at most (60 per shard × 2), so 70 make it 58 % loaded. */
const A_CAPACITY_ARGS = ['--conns-per-shard-max', '60'];
const LOADERS = 70;

const backends = await startBackends();
// a drains slowly (1 goaway a second, up to a minute) so that it stays draining while the
// test looks at it.
const a = await startServer([...backends.args('a'), ...A_CAPACITY_ARGS,
  '--drain-rate-per-s', '1', '--shutdown-timeout-ms', '60000']);
const b = await startServer(backends.args('b'));
/** Plain WebSockets that load node a. */
const loaders = [];
test.after(async () => {
  for (const ws of loaders) ws.close();
  await a.stop();
  await b.stop();
  backends.stop();
});

const listed = (list, id) => list.nodes.find((n) => n.id === id);
await waitFor(async () => {
  const [la, lb] = [await nodesOf(a), await nodesOf(b)];
  return listed(la, 'b') && listed(lb, 'a');
}, 'each node to list the other', 20000, 100);

test('a loaded node is left: one endpoint given, the other found by /nodes', async () => {
  for (let i = 0; i < LOADERS; i++) {
    const ws = new WebSocket(`${a.base.replace('http', 'ws')}/ws?user=load-${i}`);
    loaders.push(ws);
  }
  // On a timeout, what was seen: the count on a and the loaders closed (refused) so far.
  await waitFor(async () => {
    const n = (await a.stats()).connections;
    if (n === LOADERS) return true;
    const closed = loaders.filter((ws) => ws.readyState === WebSocket.CLOSED).length;
    throw new Error(`${n} on a, ${closed} loaders closed`);
  }, `${LOADERS} on a`);
  // Both nodes' lists say so once a's entry is refreshed (every second, heartbeat beside).
  await waitFor(async () => (listed(await nodesOf(a), 'a')?.load ?? 0) >= 0.5 &&
    (listed(await nodesOf(b), 'a')?.load ?? 0) >= 0.5, 'a loaded in both lists', 10000, 100);
  const c = new C10m({ endpoints: a.base, user: 'chooser', share: 'none' });
  const log = record(c);
  try {
    await waitFor(() => c.state === 'connected', 'connected');
    assert.equal(c.endpoint, b.base, 'the idle node');
    assert.equal(c.node, 'b');
    const nodes = log.find((e) => e.type === 'nodes').v;
    assert.equal(nodes.from, a.base);
    assert.equal(nodes.self, 'a');
    const chosen = log.find((e) => e.type === 'endpoint').v;
    assert.deepEqual(chosen.candidates.map((x) => x.node).sort(), ['a', 'b']);
    assert.ok(chosen.candidates.find((x) => x.node === 'a').load >= 0.5);
    await waitFor(async () => (await b.stats()).connections === 1, 'the client on b');
    await b.publish('user=chooser', 'on b');
    await waitFor(() => log.some((e) => e.type === 'message' && e.v.data === 'on b'), 'on b');
  } finally {
    c.close();
  }
});

test('a draining node is never chosen: its drain is learnt from the other node', async () => {
  await a.drain(1);
  await waitFor(async () => listed(await nodesOf(b), 'a')?.draining === true,
    "b's list to show a draining", 10000, 100);
  // a is first in the list and its listener is closed: the list comes from b.
  for (let i = 0; i < 3; i++) {
    const c = new C10m({ endpoints: [a.base, b.base], user: `drain-${i}`, share: 'none' });
    const log = record(c);
    try {
      await waitFor(() => c.state === 'connected', 'connected');
      assert.equal(c.endpoint, b.base);
      assert.equal(log.find((e) => e.type === 'nodes').v.from, b.base);
      assert.ok(log.filter((e) => e.type === 'state' && e.v.state === 'connecting')
        .every((e) => e.v.endpoint === b.base), 'no attempt on the draining node');
    } finally {
      c.close();
    }
  }
});
