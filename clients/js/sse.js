// An incremental `text/event-stream` parser (WHATWG HTML §9.2.6) that, unlike EventSource,
// also reports blocks that carry only an `id:` line: c10m sends those as position updates.
// It takes text chunks and calls back; it never touches a socket.

/**
 * @typedef {object} SseBlock
 * @property {string} event the event name ('message' when none was given)
 * @property {string | null} data the data lines joined with \n; null when the block had none
 * @property {string | null} id the id field of this block, null when it had none
 * @property {number | null} retry a retry field of this block, in ms
 */

/** Longest line kept (bytes of text): a peer that never ends a line cannot grow memory. */
export const SSE_LINE_CHARS_MAX = 1 << 20;

/** Parses a stream; `onBlock` runs once per blank-line-terminated block that had a field. */
export class SseParser {
  /** @param {(block: SseBlock) => void} onBlock */
  constructor(onBlock) {
    this.onBlock = onBlock;
    this.buf = '';
    this.sawCr = false;
    this.reset();
  }

  reset() {
    /** @type {string[] | null} */
    this.data = null;
    this.event = '';
    /** @type {string | null} */
    this.id = null;
    /** @type {number | null} */
    this.retry = null;
    this.any = false;
  }

  /** @param {string} text the next decoded chunk */
  push(text) {
    let s = text;
    // A CR that ended the previous chunk may be the first half of a CRLF.
    if (this.sawCr && s.startsWith('\n')) s = s.slice(1);
    this.sawCr = false;
    let start = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(this.buf + s.slice(start, i));
      this.buf = '';
      if (c === 13) {
        if (i + 1 === s.length) this.sawCr = true;
        else if (s.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    this.buf += s.slice(start);
    if (this.buf.length > SSE_LINE_CHARS_MAX) throw new Error('c10m: SSE line too long');
  }

  /** @param {string} line */
  line(line) {
    if (line === '') {
      if (this.any) {
        this.onBlock({
          event: this.event || 'message',
          data: this.data ? this.data.join('\n') : null,
          id: this.id,
          retry: this.retry,
        });
      }
      this.reset();
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (name) {
      case 'data':
        (this.data ??= []).push(value);
        break;
      case 'event':
        this.event = value;
        break;
      case 'id':
        if (!value.includes('\0')) this.id = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      default:
        return;
    }
    this.any = true;
  }
}
