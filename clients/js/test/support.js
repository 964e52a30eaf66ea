// Test support: start the real c10m server on free ports, publish through its admin API,
// read /stats, and wait for conditions with bounded deadlines (no sleep-and-hope).

import { spawn } from 'node:child_process';
import { createServer, connect } from 'node:net';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../../..');

/** The server binary: $C10M_BIN, else the release build of this repository. */
export function serverBinary() {
  const bin = process.env.C10M_BIN ?? path.join(repoRoot, 'target/release/c10m');
  if (!existsSync(bin)) throw new Error(`c10m binary not found at ${bin}: build it or set C10M_BIN`);
  return bin;
}

/** @returns {Promise<number>} a port that was free a moment ago */
export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {any} */ (s.address());
      s.close(() => ok(port));
    });
  });
}

/**
 * Polls `check` every `everyMs` until it returns a truthy value, or throws after `timeoutMs`.
 * @template T @param {() => T | Promise<T>} check @param {string} what
 * @returns {Promise<T>}
 */
export async function waitFor(check, what, timeoutMs = 10000, everyMs = 25) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Starts `c10m serve` on free loopback ports with extra arguments (`{base}` in one stands for
 * the client listener's URL, e.g. for `--public-url`); retries (bounded) when a port was
 * taken between the probe and the bind.
 * @param {string[]} [args]
 * @param {{clientPort?: number, shards?: number}} [at] a client port fixed in advance (clients
 *   told of it), and the shard count (default 2)
 */
export async function startServer(args = [], at = {}) {
  for (let tries = 0; tries < 5; tries++) {
    const client = at.clientPort ?? await freePort();
    const admin = await freePort();
    const base = `http://127.0.0.1:${client}`;
    const proc = spawn(serverBinary(), [
      'serve', '--listen', `127.0.0.1:${client}`, '--admin', `127.0.0.1:${admin}`,
      '--shards', String(at.shards ?? 2), ...args.map((a) => a.replaceAll('{base}', base)),
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (d) => (stderr += d));
    let exited = false;
    proc.on('exit', () => (exited = true));
    const adminBase = `http://127.0.0.1:${admin}`;
    const up = await waitFor(async () => {
      if (exited) return 'exited';
      const r = await fetch(`${adminBase}/healthz`);
      return r.status === 200 ? 'up' : false;
    }, 'the server to answer /healthz', 10000).catch(() => 'timeout');
    if (up !== 'up') {
      proc.kill('SIGKILL');
      if (/in use/.test(stderr)) continue;
      throw new Error(`c10m did not start: ${up}: ${stderr}`);
    }
    return new Server(proc, `http://127.0.0.1:${client}`, adminBase, () => stderr);
  }
  throw new Error('c10m did not start: no free ports after 5 tries');
}

export class Server {
  constructor(proc, base, adminBase, stderr) {
    this.proc = proc;
    this.base = base;
    this.adminBase = adminBase;
    this.stderr = stderr;
    this.exited = new Promise((ok) => proc.on('exit', ok));
    if (proc.exitCode !== null) this.exited = Promise.resolve();
  }

  /** @param {string} target e.g. 'user=u1', 'topic=t', 'all' @param {string} body */
  async publish(target, body) {
    const r = await fetch(`${this.adminBase}/publish?${target}`, { method: 'POST', body });
    if (r.status !== 202) throw new Error(`publish ${target}: ${r.status} ${await r.text()}`);
    return r.json();
  }

  /** @returns {Promise<{connections: number, ws: number, sse: number}>} */
  async stats() {
    return (await fetch(`${this.adminBase}/stats`)).json();
  }

  /** @param {number} rate goaways per second, 0: all at once */
  async drain(rate = 0) {
    const r = await fetch(`${this.adminBase}/drain?rate=${rate}`, { method: 'POST' });
    if (r.status >= 300) throw new Error(`drain: ${r.status}`);
  }

  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGKILL');
      await Promise.race([this.exited, new Promise((r) => setTimeout(r, 3000))]);
    }
  }
}

/**
 * Whether the server resumes: a resuming server's SSE stream carries id-only blocks (a
 * position at connect), which today's server never sends.
 * @param {string} base
 */
export async function serverHasResume(base) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 1500);
  try {
    const res = await fetch(`${base}/sse?user=resume-probe`, { signal: ctl.signal });
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let text = '';
    // Bounded by the abort timer and by the text kept.
    while (text.length < 65536) {
      const { done, value } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
      for (const block of text.split(/\r?\n\r?\n/).slice(0, -1)) {
        const lines = block.split(/\r?\n/);
        const id = lines.some((l) => /^id:\s?[0-9a-z-]+$/.test(l));
        if (id && !lines.some((l) => l.startsWith('data:'))) return true;
      }
    }
    return false;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
    ctl.abort();
  }
}

/** Whether `/poll` exists (it answers 404 before the history work lands). */
export async function serverHasPoll(base) {
  const r = await fetch(`${base}/poll?user=poll-probe&timeout_ms=1`);
  await r.body?.cancel();
  return r.status !== 404;
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
function listening(port) {
  return new Promise((ok) => {
    const s = connect(port, '127.0.0.1');
    s.on('connect', () => { s.destroy(); ok(true); });
    s.on('error', () => ok(false));
  });
}

/**
 * Starts real `redis-server` and `nats-server` on free loopback ports for a cluster of
 * nodes, and waits until both accept connections.
 * @returns {Promise<{redis: string, nats: string, args: (id: string) => string[],
 *   stop: () => void}>}
 */
export async function startBackends() {
  const [rp, np, mp] = [await freePort(), await freePort(), await freePort()];
  const redis = spawn('redis-server', ['--port', String(rp), '--bind', '127.0.0.1', '--save', '',
    '--appendonly', 'no'], { stdio: 'ignore' });
  // JetStream holds the cluster's history (the server's src/cluster/store.rs).
  const jsDir = mkdtempSync(path.join(tmpdir(), 'c10m-js-'));
  const nats = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(np), '-m', String(mp),
    '-js', '-sd', jsDir], { stdio: 'ignore' });
  const stop = () => {
    redis.kill('SIGKILL');
    nats.kill('SIGKILL');
    rmSync(jsDir, { recursive: true, force: true });
  };
  try {
    await waitFor(() => listening(rp), 'redis-server to listen', 10000);
    await waitFor(() => listening(np), 'nats-server to listen', 10000);
  } catch (e) {
    stop();
    throw e;
  }
  const r = `redis://127.0.0.1:${rp}`;
  const n = `nats://127.0.0.1:${np}`;
  return { redis: r, nats: n, stop,
    args: (id) => ['--node-id', id, '--registry', r, '--bus', n, '--public-url', '{base}'] };
}

/** `GET /nodes` of a node's client listener. */
export async function nodesOf(server) {
  return (await fetch(`${server.base}/nodes`)).json();
}

/** Events a client emitted, with timestamps, for assertions. */
export function record(client) {
  const log = [];
  for (const type of ['state', 'message', 'gap', 'goaway', 'endpoint', 'nodes', 'error', 'tabs',
    'control']) {
    client.on(type, (v) => log.push({ type, at: performance.now(), v }));
  }
  return log;
}
