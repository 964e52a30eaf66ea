// Types of c10m-client (the library is plain ES modules with JSDoc; this file is the door).

export type TransportName = 'ws' | 'sse' | 'poll';
export type State = 'idle' | 'connecting' | 'connected' | 'waiting' | 'closed' | 'failed';

export interface C10mOptions {
  /** Base URLs: http(s)://, ws(s):// or host:port; one is chosen by measured latency. */
  endpoints: string | string[];
  user?: string;
  topics?: string[];
  /** Sent as `?token=`; a function is called before the first connect and after 4001. */
  token?: string | (() => string | Promise<string>);
  /** How tabs share one connection. Default 'auto': SharedWorker, else leader, else none. */
  share?: 'auto' | 'worker' | 'leader' | 'none';
  /** Tabs with the same key share a connection. Default: user and endpoints. */
  key?: string;
  /** The SharedWorker script. Default: worker.js next to c10m.js. */
  workerUrl?: string | URL;
  /** A position token to resume from (e.g. one kept in storage). */
  position?: string;
  /** Fallback order. Default ['ws', 'sse', 'poll']. */
  transports?: TransportName[];
  backoffMinMs?: number;
  backoffMaxMs?: number;
  stableMs?: number;
  connectTimeoutMs?: number;
  pollTimeoutMs?: number;
  sseStallMs?: number;
  wsReprobeMs?: number;
  dedupIds?: number;
  onlineSpreadMs?: number;
  probeTimeoutMs?: number;
  probePath?: string;
  /** Read the server's `GET /nodes` and choose among its live nodes by latency × load.
   * Default true; a server without the route (404) leaves the given list as it is. */
  discover?: boolean;
  /** A reconnect reads the node list again once it is this old (ms). Default 30000. */
  nodesRefreshMs?: number;
  /** An RTT measured within this long (ms), with no failure since, is not probed again.
   * Default 30000. */
  rttFreshMs?: number;
  /** The score is (rtt + 5 ms) × (1 + loadWeight · pressure). Default 4. */
  loadWeight?: number;
  credentials?: RequestCredentials;
  /** A WebSocket constructor (Node 20: the `ws` package or --experimental-websocket). */
  WebSocket?: unknown;
  fetch?: typeof fetch;
  /** Injected clock, timers and random source (tests). */
  io?: Partial<{
    now(): number;
    setTimeout(fn: () => void, ms: number): unknown;
    clearTimeout(t: unknown): void;
    random(): number;
  }>;
  autoConnect?: boolean;
}

export interface Message {
  /** The payload: text, or bytes for a binary payload. */
  data: string | Uint8Array;
  /** 'user', 'topic:NAME' or 'all'; null when the transport does not say. */
  stream: string | null;
  /** The topic for a topic message, else null. */
  topic: string | null;
  /** The position token of this message; null without resume (raw WebSocket frames). */
  id: string | null;
}

export interface StateChange {
  state: State;
  transport: TransportName | null;
  endpoint: string | null;
  /** The node's id when a node list named it, else null. */
  node: string | null;
  /** With 'waiting': how long until the next attempt, and why. */
  delayMs?: number;
  reason?: 'goaway' | 'closed' | 'shed' | 'token' | 'busy' | 'fallback' | 'unreachable' |
    'online';
  attempt?: number;
}

export interface Goaway {
  reconnectAfterMs: number;
  endpoint: string | null;
  reconnect: boolean;
}

export interface Gap {
  stream: string | null;
  topic: string | null;
  reason: 'expired' | 'too_many' | 'epoch' | 'unknown' | string | null;
}

export interface NodeInfo {
  id: string | null;
  /** Its public URL; null when the node has none configured (it is not dialled). */
  url: string | null;
  /** Connections / capacity, 0..1. */
  load: number | null;
  /** 1 − RSS / memory limit, 0..1; null without a memory limit. */
  memHeadroom: number | null;
  draining: boolean;
}

export interface NodeList {
  self: string | null;
  nodes: NodeInfo[];
}

export interface Events {
  message: Message;
  state: StateChange;
  gap: Gap;
  goaway: Goaway;
  tabs: number;
  leader: boolean;
  endpoint: { url: string; candidates: { url: string; rttMs: number; node: string | null;
    load: number | null; memHeadroom: number | null }[] };
  /** A node list was read (`from` is the endpoint that answered). */
  nodes: NodeList & { from: string };
  control: Record<string, string>;
  error: { reason?: string; code?: number; detail?: string; error?: unknown };
}

export class C10m {
  constructor(options: C10mOptions);
  readonly mode: 'worker' | 'leader' | 'none';
  readonly state: State;
  readonly transport: TransportName | null;
  readonly endpoint: string | null;
  readonly node: string | null;
  readonly position: string | null;
  readonly tabs: number;
  readonly leader: boolean;
  on<K extends keyof Events>(type: K, fn: (v: Events[K]) => void): () => void;
  off<K extends keyof Events>(type: K, fn: (v: Events[K]) => void): void;
  subscribe(topic: string): void;
  unsubscribe(topic: string): void;
  close(): void;
}
export default C10m;

export function backoffDelayMs(attempt: number,
  opts?: { backoffMinMs?: number; backoffMaxMs?: number }, random?: () => number): number;
export function parseGoaway(text: string, retryMs?: number | null): Goaway | null;
export function closeAction(code: number, reason: string):
  { action: 'goaway'; goaway: Goaway } | { action: 'retry' | 'backoff' | 'token' | 'fatal' };
export function isPositionToken(id: unknown): id is string;
export function httpBase(url: string): string;
export function parseNodes(body: unknown): NodeList | null;
