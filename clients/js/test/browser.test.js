// The library in real headless Chromium (Debian's, driven by playwright-core) against the
// real server: tabs of one origin share one connection, the leader hands over, goaways.
import test from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer, waitFor, serverHasResume } from './support.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const chromiumPath = process.env.CHROMIUM ??
  ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
if (!chromiumPath) throw new Error('no chromium binary (apt-get install -y chromium)');

/** Serves the package directory (the page, the library, the worker) on its own origin. */
function staticServer() {
  const types = { '.js': 'text/javascript', '.html': 'text/html' };
  const srv = createServer(async (req, res) => {
    const p = new URL(req.url, 'http://x').pathname;
    const file = path.join(root, p === '/' ? 'test/page.html' : p);
    if (!file.startsWith(root)) return res.writeHead(403).end();
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'Content-Type': types[path.extname(file)] ?? 'text/plain' });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((ok) => srv.listen(0, '127.0.0.1', () => ok(srv)));
}

const web = await staticServer();
const origin = `http://127.0.0.1:${web.address().port}`;
const browser = await chromium.launch({
  executablePath: chromiumPath, headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const server = await startServer();
const resume = await serverHasResume(server.base);
test.after(async () => {
  await browser.close();
  await server.stop();
  web.close();
});

/** Opens `n` tabs of one origin in one browser context and starts a client in each. */
async function openTabs(context, n, options) {
  const pages = [];
  for (let i = 0; i < n; i++) {
    const page = await context.newPage();
    page.on('pageerror', (e) => console.error('page error:', e));
    await page.goto(`${origin}/`);
    await page.waitForFunction(() => window.ready === true, null, { timeout: 10000 });
    const mode = await page.evaluate((o) => window.start(o), options);
    assert.equal(mode, options.share);
    pages.push(page);
  }
  return pages;
}

const connections = async () => {
  const s = await server.stats();
  return s.ws + s.sse;
};
const messagesOf = (page) => page.evaluate(() => window.messages());

for (const share of ['worker', 'leader']) {
  test(`${share}: 3 tabs hold 1 connection, all receive, and closing a tab keeps it`,
    async () => {
      const context = await browser.newContext();
      const user = `tabs-${share}`;
      try {
        const pages = await openTabs(context, 3, { endpoints: server.base, user, share });
        for (const p of pages) {
          await p.waitForFunction(() => window.client.state === 'connected' &&
            window.client.tabs === 3, null, { timeout: 10000 });
        }
        await waitFor(async () => (await connections()) === 1, 'one server connection');
        await server.publish(`user=${user}`, 'one');
        for (const p of pages) {
          await waitFor(async () => (await messagesOf(p)).includes('one'), 'each tab gets it');
        }
        // Close the tab holding the connection in leader mode (any tab in worker mode).
        let leaderAt = 0;
        for (let i = 0; i < pages.length; i++) {
          if (await pages[i].evaluate(() => window.client.leader)) leaderAt = i;
        }
        await pages[leaderAt].close({ runBeforeUnload: true });
        const rest = pages.filter((_, i) => i !== leaderAt);
        for (const p of rest) {
          await p.waitForFunction(() => window.client.state === 'connected' &&
            window.client.tabs === 2, null, { timeout: 10000 });
        }
        if (share === 'leader') {
          const leaders = await Promise.all(rest.map((p) =>
            p.evaluate(() => window.client.leader)));
          assert.equal(leaders.filter(Boolean).length, 1, 'exactly one new leader');
          for (const p of rest) {
            const closed = await p.evaluate(() => window.log.filter((e) => e.type === 'state' &&
              e.v.state === 'closed').length);
            assert.equal(closed, 0, 'a follower was told closed during the handover');
          }
        }
        await waitFor(async () => (await connections()) === 1, 'still one connection');
        await server.publish(`user=${user}`, 'two');
        for (const p of rest) {
          await waitFor(async () => (await messagesOf(p)).includes('two'), 'both tabs get it');
          const got = await messagesOf(p);
          assert.deepEqual(got.filter((m) => m === 'one' || m === 'two'), ['one', 'two']);
        }
      } finally {
        await context.close();
      }
    });
}

test('leader handover loses nothing: messages published while the leader goes',
  { skip: resume ? false : 'the server does not resume yet (no id-only SSE blocks)' },
  async () => {
    const context = await browser.newContext();
    const user = 'handover';
    try {
      const pages = await openTabs(context, 2, { endpoints: server.base, user, share: 'leader' });
      for (const p of pages) {
        await p.waitForFunction(() => window.client.state === 'connected' &&
          window.client.tabs === 2, null, { timeout: 10000 });
      }
      const leader = (await pages[0].evaluate(() => window.client.leader)) ? 0 : 1;
      const follower = pages[1 - leader];
      await server.publish(`user=${user}`, 'm0');
      await waitFor(async () => (await messagesOf(follower)).includes('m0'), 'm0');
      const closing = pages[leader].close({ runBeforeUnload: true });
      const sent = ['m0'];
      for (let i = 1; i <= 20; i++) {
        sent.push(`m${i}`);
        await server.publish(`user=${user}`, `m${i}`);
      }
      await closing;
      await follower.waitForFunction(() => window.client.leader &&
        window.client.state === 'connected', null, { timeout: 10000 });
      await waitFor(async () => (await messagesOf(follower)).length >= sent.length,
        'all messages', 10000);
      assert.deepEqual(await messagesOf(follower), sent);
    } finally {
      await context.close();
    }
  });

test('a goaway in the browser: the close reason is read and its delay obeyed', async () => {
  const short = await startServer(['--conn-lifetime-ms-max', '1000',
    '--conn-lifetime-jitter-pct', '0', '--goaway-reconnect-ms-max', '1500']);
  const context = await browser.newContext();
  try {
    const [page] = await openTabs(context, 1, { endpoints: short.base, user: 'g', share: 'none' });
    await page.waitForFunction(() => window.log.filter((e) => e.type === 'state' &&
      e.v.state === 'connected').length >= 2, null, { timeout: 10000 });
    const log = await page.evaluate(() => window.log);
    const g = log.find((e) => e.type === 'goaway');
    assert.ok(g, 'a goaway event');
    const next = log.find((e) => e.at > g.at && e.type === 'state' && e.v.state === 'connecting');
    const waited = next.at - g.at;
    assert.ok(waited >= g.v.reconnectAfterMs - 2 && waited <= g.v.reconnectAfterMs + 500,
      `waited ${waited} ms for ${g.v.reconnectAfterMs}`);
  } finally {
    await context.close();
    await short.stop();
  }
});

test('permessage-deflate in the browser: a plain WebSocket gets compressed publishes intact',
  async () => {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(`${origin}/`);
      const url = `${server.base.replace('http', 'ws')}/ws?topics=deflate-browser`;
      const extensions = await page.evaluate((u) => new Promise((ok, fail) => {
        const ws = new WebSocket(u);
        window.got = [];
        ws.onmessage = (e) => window.got.push(e.data);
        ws.onopen = () => ok(ws.extensions);
        ws.onerror = () => fail(new Error('WebSocket error'));
        window.deflateWs = ws;
      }), url);
      assert.match(extensions, /permessage-deflate/);
      assert.match(extensions, /server_no_context_takeover/);
      await waitFor(async () => (await server.stats()).ws >= 1, 'the browser connected');
      const metric = async () => {
        const text = await (await fetch(`${server.adminBase}/metrics`)).text();
        return text.split('\n').filter((l) => l.startsWith('c10m_ws_deflated_frames_total'))
          .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
      };
      const before = await metric();
      // A 500-byte JSON notification (compressed) and a 32-byte tick (under the minimum).
      const big = JSON.stringify({ type: 'notification', body: 'a comment on your post '.repeat(20) });
      const small = '{"px":101.25,"sym":"ABC","t":1}';
      await server.publish('topic=deflate-browser', big);
      await server.publish('topic=deflate-browser', small);
      await page.waitForFunction(() => window.got.length >= 2, null, { timeout: 10000 });
      assert.deepEqual(await page.evaluate(() => window.got), [big, small]);
      assert.ok((await metric()) > before, 'the server built a compressed frame');
      // Chromium compresses what it sends; the same control message twice would refer back
      // into the first if it kept its context, which the server's answer forbids.
      const sub = JSON.stringify({ subscribe: 'deflate-browser-2', pad: 'x'.repeat(200) });
      await page.evaluate((m) => { window.deflateWs.send(m); window.deflateWs.send(m); }, sub);
      await page.waitForFunction(() => window.got.length >= 4, null, { timeout: 10000 });
      const replies = (await page.evaluate(() => window.got)).slice(2);
      assert.deepEqual(replies, Array(2).fill('{"subscribed":"deflate-browser-2"}'));
      await server.publish('topic=deflate-browser-2', big);
      await page.waitForFunction(() => window.got.length >= 5, null, { timeout: 10000 });
      assert.equal(await page.evaluate(() => window.got[4]), big);
    } finally {
      await context.close();
    }
  });
