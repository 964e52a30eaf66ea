// A tiny static server for the example page (the c10m server serves no files):
//
//   node clients/js/examples/serve.js [--port 8000] [--admin http://127.0.0.1:9090]
//
// It serves clients/js/ (the library, its worker and this folder) on 127.0.0.1, a secure
// context, so SharedWorker and Web Locks work. With --admin it also forwards the page's
// `POST /publish?…` to the server's admin API, so the page can publish (the admin listener
// is not meant to be reached from browsers; this is for trying things on one machine).
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: {
  port: { type: 'string', default: '8000' },
  admin: { type: 'string' },
} });
const types = { '.js': 'text/javascript', '.html': 'text/html', '.css': 'text/css' };
/** A published body is at most this long (the server has its own limit too). */
const PUBLISH_BYTES_MAX = 65536;

async function publish(req, res) {
  if (!values.admin) return res.writeHead(404).end('start serve.js with --admin URL');
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > PUBLISH_BYTES_MAX) return res.writeHead(413).end();
  }
  const q = new URL(req.url, 'http://x').search;
  try {
    const r = await fetch(`${values.admin}/publish${q}`, { method: 'POST', body });
    res.writeHead(r.status, { 'Content-Type': 'application/json' }).end(await r.text());
  } catch (e) {
    res.writeHead(502).end(String(e));
  }
}

const server = createServer(async (req, res) => {
  const p = new URL(req.url, 'http://x').pathname;
  if (req.method === 'POST' && p === '/publish') return publish(req, res);
  const file = path.join(root, p === '/' ? 'examples/feed.html' : p);
  if (!file.startsWith(root + path.sep)) return res.writeHead(403).end();
  try {
    const body = await readFile(file);
    res.writeHead(200, { 'Content-Type': types[path.extname(file)] ?? 'text/plain' });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
server.listen(Number(values.port), '127.0.0.1', () => {
  console.log(`feed: http://127.0.0.1:${values.port}/examples/feed.html` +
    '?endpoints=http://127.0.0.1:8080&user=demo&topics=news');
});
