// A move between the nodes of a real two-node cluster (real redis-server, nats-server with
// JetStream, two c10m nodes): the node a client is on drains, its goaway names the other
// node, and what is published meanwhile arrives there once, in order, resumed from the
// cluster's shared history, with no gap. For WebSocket and SSE.
import test from 'node:test';
import assert from 'node:assert/strict';
import { C10m } from '../c10m.js';
import { startServer, startBackends, record, waitFor } from './support.js';

if (typeof WebSocket !== 'function') throw new Error('run with node --experimental-websocket');

const messages = (log) => log.filter((e) => e.type === 'message').map((e) => e.v.data);
const metric = async (server, name) => {
  const text = await (await fetch(`${server.adminBase}/metrics`)).text();
  return text.split('\n').filter((l) => l.startsWith(`${name}{`))
    .reduce((s, l) => s + Number(l.split(' ').at(-1)), 0);
};

const backends = await startBackends();
test.after(() => backends.stop());

for (const transport of ['ws', 'sse']) {
  test(`${transport}: a drained node's client resumes on the node its goaway names, losing nothing`,
    async () => {
      const y = await startServer(backends.args(`y-${transport}`));
      const x = await startServer([...backends.args(`x-${transport}`), '--goaway-endpoint', y.base,
        '--goaway-reconnect-ms-max', '1500']);
      // Both read the store (until then a node delivers what it accepts locally only).
      for (const n of [x, y]) {
        await waitFor(async () => (await n.stats()).cluster.store_connected === true,
          'the node reads the history store');
      }
      const user = `mover-${transport}`;
      const c = new C10m({ endpoints: x.base, user, transports: [transport], share: 'none',
        discover: false });
      const log = record(c);
      const gaps = [];
      c.on('gap', (g) => gaps.push(g));
      try {
        await waitFor(() => c.state === 'connected' && c.endpoint === x.base, 'connected to x');
        await y.publish(`user=${user}`, 'before');
        await waitFor(() => messages(log).includes('before'), 'the first message, through y');
        await x.drain(0);
        await waitFor(() => log.some((e) => e.type === 'goaway'), 'the goaway', 5000, 1);
        const sent = [];
        for (let i = 0; i < 20; i++) {
          sent.push(`during-${i}`);
          await y.publish(`user=${user}`, `during-${i}`);
        }
        await waitFor(() => c.state === 'connected' && c.endpoint === y.base, 'connected to y');
        await y.publish(`user=${user}`, 'after');
        await waitFor(() => messages(log).includes('after'), 'the live message on y');
        assert.deepEqual(messages(log), ['before', ...sent, 'after']);
        assert.deepEqual(gaps, []);
        assert.equal(await metric(y, 'c10m_resumes_total'), 1, 'resumed on y from its position');
      } finally {
        c.close();
        await x.stop();
        await y.stop();
      }
    });
}
