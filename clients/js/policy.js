// Reconnect policy: pure functions of their inputs (no sockets, no clocks), so the node:test
// units can check every branch with a seeded random source.

/** Defaults, each with its reason. */
export const DEFAULTS = Object.freeze({
  /** First retry waits at least this (ms): a server that just dropped everyone is not hit
   * again within a round trip by every client at once. */
  backoffMinMs: 500,
  /** Retries never wait longer than this (ms); the jitter is kept at the cap. */
  backoffMaxMs: 20000,
  /** A connection that lived this long (ms) counts as healthy: its end restarts the backoff. */
  stableMs: 5000,
  /** A goaway asking for more than a day is treated as a day (a typo must not park clients). */
  goawayDelayMsMax: 86400000,
});

/**
 * Full-jitter exponential backoff with a floor: `min + random * min(max - min, min * 2^n)`.
 * The result is in [min, max] for every attempt, so clients stay spread at the cap too.
 * @param {number} attempt 0 for the first retry
 * @param {{backoffMinMs?: number, backoffMaxMs?: number}} [opts]
 * @param {() => number} [random] uniform in [0, 1)
 * @returns {number} milliseconds
 */
export function backoffDelayMs(attempt, opts = {}, random = Math.random) {
  const min = opts.backoffMinMs ?? DEFAULTS.backoffMinMs;
  const max = Math.max(min, opts.backoffMaxMs ?? DEFAULTS.backoffMaxMs);
  const n = Math.min(Math.max(0, Math.floor(attempt)), 31);
  const span = Math.min(max - min, min * 2 ** n);
  return min + random() * span;
}

/**
 * @typedef {object} Goaway
 * @property {number} reconnectAfterMs how long to wait before coming back
 * @property {string | null} endpoint where to come back; null: the same endpoint
 * @property {boolean} reconnect false when the server says not to come back at all
 */

/**
 * Parses a goaway body (a WebSocket close reason or an SSE `event: goaway` data field).
 * @param {string} text
 * @param {number | null} [retryMs] an SSE `retry:` seen with it, used when the JSON has no delay
 * @returns {Goaway | null} null when the text is not a goaway
 */
export function parseGoaway(text, retryMs = null) {
  let v;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (!v || typeof v !== 'object' || v.goaway !== true) return null;
  let after = Number(v.reconnect_after_ms);
  if (!Number.isFinite(after) || after < 0) after = Number.isFinite(retryMs) ? retryMs : 0;
  after = Math.min(after, DEFAULTS.goawayDelayMsMax);
  const endpoint = typeof v.endpoint === 'string' && v.endpoint.length > 0 ? v.endpoint : null;
  return { reconnectAfterMs: after, endpoint, reconnect: v.reconnect !== false };
}

/**
 * What a WebSocket close means for the client:
 * - `goaway`: planned; wait exactly as told, keep the position, no error.
 * - `retry`: reconnect with backoff (1000 normal, 1001 shutdown or idle, 1006 abnormal…).
 * - `backoff`: the server shed us (1008 slow consumer or user cap): reconnect, starting the
 *   backoff higher so a consumer that cannot keep up does not come straight back.
 * - `token`: 4001 token expired: fetch a new token, then reconnect.
 * - `fatal` too for 4003: the backend disconnected this user (`POST /disconnect`, reason
 *   `{"disconnect":true,"reconnect":false}`): coming back would be refused or unwanted.
 * - `fatal`: 1002/1003/1007/1009 protocol errors: reconnecting would repeat them (a resume
 *   would replay the same message), so the client stops and reports.
 * @param {number} code
 * @param {string} reason
 * @returns {{action: 'goaway', goaway: Goaway} | {action: 'retry'|'backoff'|'token'|'fatal'}}
 */
export function closeAction(code, reason) {
  if (code === 1001) {
    const goaway = parseGoaway(reason);
    if (goaway) return { action: 'goaway', goaway };
  }
  switch (code) {
    case 1008:
      return { action: 'backoff' };
    case 4001:
      return { action: 'token' };
    case 1002:
    case 1003:
    case 1007:
    case 1009:
    case 4003:
      return { action: 'fatal' };
    default:
      return { action: 'retry' };
  }
}

/** A position token: opaque, `[0-9a-z-]`, at most 64 characters. */
const TOKEN = /^[0-9a-z-]{1,64}$/;

/**
 * Whether a string is a position token the client may store and send back. Anything else is
 * dropped, so a server bug cannot smuggle characters into the next request's URL.
 * @param {unknown} id
 * @returns {id is string}
 */
export function isPositionToken(id) {
  return typeof id === 'string' && TOKEN.test(id);
}

/**
 * Milliseconds from a `Retry-After` header (seconds or an HTTP date), or null.
 * @param {string | null | undefined} value
 * @param {number} nowMs wall-clock now, for the date form
 */
export function retryAfterMs(value, nowMs) {
  if (value == null || value === '') return null;
  const s = Number(value);
  if (Number.isFinite(s) && s >= 0) return Math.min(s * 1000, DEFAULTS.goawayDelayMsMax);
  const at = Date.parse(value);
  if (Number.isNaN(at)) return null;
  return Math.min(Math.max(0, at - nowMs), DEFAULTS.goawayDelayMsMax);
}
