// The server's status page (GET / on the admin listener) in real headless Chromium, against
// the real server with an admin key: the page asks for the key, then its live figures move
// when clients connect and when publishes flow. It lives here because this package already
// drives Debian's Chromium with playwright-core.
//
// STATUS_SCREENSHOT=path writes a screenshot of the page: with it the test holds 200
// connections and publishes for 90 s more, so the charts have a history (docs/status-page.png
// is made this way: see docs/status.md).
import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from './support.js';

const chromiumPath = process.env.CHROMIUM ??
  ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
if (!chromiumPath) throw new Error('no chromium binary (apt-get install -y chromium)');

const key = 'status-page-test-key-0123456789';
const keyFile = path.join(mkdtempSync(path.join(tmpdir(), 'c10m-status-')), 'admin.key');
writeFileSync(keyFile, `${key}\n`);
const server = await startServer(['--admin-key-file', keyFile]);
const browser = await chromium.launch({
  executablePath: chromiumPath, headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const sockets = [];
test.after(async () => {
  for (const ws of sockets) ws.close();
  await browser.close();
  await server.stop();
});

const auth = { Authorization: `Bearer ${key}` };
const publish = (target) =>
  fetch(`${server.adminBase}/publish?${target}`, { method: 'POST', headers: auth, body: 'tick' });
const shot = process.env.STATUS_SCREENSHOT;
const conns = shot ? 200 : 5;
const figure = (page, id) =>
  page.$eval(`#${id}`, (e) => Number(e.textContent.replace(/[^0-9.]/g, '')));

test('without the key the stream is refused and the page asks for the key', async () => {
  const events = await fetch(`${server.adminBase}/status/events`);
  assert.equal(events.status, 401);
  const page = await fetch(`${server.adminBase}/`);
  assert.equal(page.status, 401);
  assert.match(await page.text(), /admin key/);
  const wrong = await fetch(`${server.adminBase}/login`, { method: 'POST', body: 'nope' });
  assert.equal(wrong.status, 401);
});

test('the page shows connections arriving and the publish rate moving', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const first = await page.goto(`${server.adminBase}/`);
  assert.equal(first.status(), 401, 'the login form first');
  await page.fill('#key', key);
  await page.click('button[type=submit]');
  // The form reloads the page with the cookie; the stream goes live.
  await page.waitForFunction(() => document.getElementById('state')?.textContent === 'live' &&
    window.c10mLast !== undefined, null, { timeout: 10000 });
  assert.equal(await figure(page, 'conns'), 0);

  for (let i = 0; i < conns; i++) {
    const ws = new WebSocket(`${server.base.replace('http', 'ws')}/ws?user=u${i}&topics=t`);
    await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
    sockets.push(ws);
  }
  await page.waitForFunction((n) => document.getElementById('conns').textContent === String(n),
    conns, { timeout: 10000 });

  // Publishes flow until the page shows a rate above zero for both publishes and deliveries
  // (bounded: the wait fails after 15 s, and the publisher stops with it).
  let flowing = true;
  const publisher = (async () => {
    for (let n = 0; flowing && n < 3000; n++) {
      const r = await publish('topic=t');
      assert.equal(r.status, 202);
      await new Promise((ok) => setTimeout(ok, 10));
    }
  })();
  try {
    await page.waitForFunction(() => {
      const n = (id) => Number(document.getElementById(id).textContent.replace(/[^0-9.]/g, ''));
      return n('pub') > 0 && n('del') > 0;
    }, null, { timeout: 15000 });
  } finally {
    flowing = false;
    await publisher;
  }
  const delivered = await page.evaluate(() => window.c10mLast.delivered);
  assert.ok(delivered > 0, `deliveries counted: ${delivered}`);
  const rows = await page.$$eval('#shards tbody tr', (trs) => trs.length);
  assert.equal(rows, 2, 'one row per shard');
  if (shot) {
    const until = Date.now() + 90000;
    while (Date.now() < until) {
      await Promise.all([publish('topic=t'), publish('user=u1')]);
      await new Promise((ok) => setTimeout(ok, 5 + 20 * Math.random()));
    }
    await page.screenshot({ path: shot, fullPage: true });
  }
  assert.deepEqual(errors, []);
  await context.close();
});
