// The hub owns the one Connection that a browser's tabs share (in a SharedWorker, in the
// leader tab, or in a lone tab) and turns its events into plain messages that can cross a
// MessagePort or a BroadcastChannel:
//   {op:'state', s} {op:'msg', m} {op:'pos', id} {op:'gap', g} {op:'goaway', g}
//   {op:'endpoint', e} {op:'nodes', e} {op:'control', body} {op:'error', e} {op:'tabs', n}
// Each tab filters messages by its own topics and drops ids it has already seen.

import { Connection } from './core.js';

/** At most this many tabs join one hub: a bound on its table (tabs of one origin). */
export const HUB_TABS_MAX = 256;

export class Hub {
  /**
   * @param {import('./c10m.js').C10mOptions} options the first tab's options
   * @param {(msg: object) => void} broadcast sends a message to every tab
   */
  constructor(options, broadcast) {
    this.options = options;
    this.broadcast = broadcast;
    /** @type {Map<string, string[]>} tab id → its topics */
    this.tabs = new Map();
    /** @type {Connection | null} */
    this.conn = null;
    /** @type {object | null} */
    this.lastState = null;
  }

  /**
   * A tab arrived (or came back after a leader change) with what it knows.
   * @param {string} tab @param {string[]} topics @param {string | null} position
   */
  join(tab, topics, position) {
    if (!this.tabs.has(tab) && this.tabs.size >= HUB_TABS_MAX) return;
    this.tabs.set(tab, topics);
    const fresh = !this.conn;
    if (fresh) this.start(position);
    else this.conn?.setTopics(this.mergedTopics());
    this.conn?.setTabs(this.tabs.size);
    this.broadcast({ op: 'tabs', n: this.tabs.size });
    if (!fresh && this.lastState) this.broadcast({ op: 'state', s: this.lastState });
    if (this.conn?.position) this.broadcast({ op: 'pos', id: this.conn.position });
  }

  /** @param {string} tab @param {string[]} topics */
  topics(tab, topics) {
    if (!this.tabs.has(tab)) return;
    this.tabs.set(tab, topics);
    this.conn?.setTopics(this.mergedTopics());
  }

  /** @param {string} tab */
  leave(tab) {
    if (!this.tabs.delete(tab)) return;
    this.conn?.setTopics(this.mergedTopics());
    if (this.tabs.size > 0) this.conn?.setTabs(this.tabs.size);
    this.broadcast({ op: 'tabs', n: this.tabs.size });
  }

  mergedTopics() {
    const all = new Set();
    for (const list of this.tabs.values()) for (const t of list) all.add(t);
    return [...all];
  }

  /** @param {string | null} position */
  start(position) {
    const conn = new Connection({
      ...this.options, topics: this.mergedTopics(), position: position ?? undefined,
      tabs: this.tabs.size, autoConnect: false,
    });
    this.conn = conn;
    // Nothing from a closed hub reaches the tabs: a leader that leaves must not tell the
    // followers 'closed' while the next leader takes over.
    const b = (msg) => {
      if (this.conn === conn) this.broadcast(msg);
    };
    conn.on('state', (s) => {
      this.lastState = s;
      b({ op: 'state', s });
    });
    conn.on('message', (m) => b({ op: 'msg', m }));
    conn.on('position', (id) => b({ op: 'pos', id }));
    conn.on('gap', (g) => b({ op: 'gap', g }));
    conn.on('goaway', (g) => b({ op: 'goaway', g }));
    conn.on('endpoint', (e) => b({ op: 'endpoint', e }));
    conn.on('nodes', (e) => b({ op: 'nodes', e }));
    conn.on('control', (body) => b({ op: 'control', body }));
    conn.on('error', (e) => b({ op: 'error', e: { ...e, error: e.error && String(e.error) } }));
    conn.connect();
  }

  close() {
    const conn = this.conn;
    this.conn = null;
    conn?.close();
  }
}
