// The server's node list, `GET /nodes` on the client listener: which nodes are live, where
// each can be reached and how loaded it is. A pure parser that accepts only well-formed
// entries, and the one fetch (injected) that reads it. A server without the route (404), or
// any failure, yields null and the client keeps its own list.

/** At most this many nodes are read from one list (the table has its own bound too). */
export const NODES_MAX = 64;

/**
 * @typedef {object} NodeInfo
 * @property {string | null} id the node's id; null on a standalone server
 * @property {string | null} url its public URL, or null when it has none configured
 * @property {number | null} load connections / capacity, 0..1
 * @property {number | null} memHeadroom 1 − RSS / memory limit, 0..1; null: no limit
 * @property {boolean} draining true while the node drains
 */

/** @typedef {{self: string | null, nodes: NodeInfo[]}} NodeList */

/** @param {unknown} v @returns {number | null} a fraction in 0..1, or null */
function fraction(v) {
  return typeof v === 'number' && Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : null;
}

/** @param {unknown} v */
function isUrl(v) {
  return typeof v === 'string' && v.length <= 256 && /^(https?|wss?):\/\/[^\s/?#]+/.test(v);
}

/**
 * Reads a `/nodes` body. Entries that are not objects are skipped; a URL that is not an
 * http(s)/ws(s) URL reads as none (so the node is known but not dialled).
 * @param {unknown} body the parsed JSON
 * @returns {NodeList | null} null when the body is not a node list
 */
export function parseNodes(body) {
  if (!body || typeof body !== 'object' || !Array.isArray(/** @type {any} */ (body).nodes)) {
    return null;
  }
  const b = /** @type {any} */ (body);
  const self = typeof b.self === 'string' ? b.self : null;
  /** @type {NodeInfo[]} */
  const nodes = [];
  for (const n of b.nodes.slice(0, NODES_MAX)) {
    if (!n || typeof n !== 'object') continue;
    nodes.push({
      id: typeof n.id === 'string' ? n.id : null,
      url: isUrl(n.url) ? n.url : null,
      load: fraction(n.load),
      memHeadroom: fraction(n.mem_headroom),
      draining: n.draining === true,
    });
  }
  return { self, nodes };
}

/**
 * Fetches `base/nodes`. The route answers CORS, so in a browser the body is readable.
 * @param {string} base an http base URL
 * @param {{fetch: typeof fetch, now: () => number, timeoutMs: number}} io
 * @returns {Promise<{list: NodeList, rttMs: number} | null>} null on any failure
 */
export async function fetchNodes(base, io) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), io.timeoutMs);
  const start = io.now();
  try {
    const res = await io.fetch(`${base}/nodes`, { signal: ctl.signal, cache: 'no-store' });
    if (res.status !== 200) {
      res.body?.cancel?.().catch(() => {});
      return null;
    }
    const list = parseNodes(await res.json());
    return list ? { list, rttMs: io.now() - start } : null;
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
  }
}
