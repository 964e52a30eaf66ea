// Talking to the client processes a bench forks (storm.js's client role).

/**
 * Asks every child for something and collects the answers.
 * @param {import('node:child_process').ChildProcess[]} children
 * @param {string} op @param {object} [extra]
 */
export function ask(children, op, extra = {}) {
  return Promise.all(children.map((ch) => new Promise((ok) => {
    const on = (m) => {
      if (m.op === op) {
        ch.off('message', on);
        ok(m);
      }
    };
    ch.on('message', on);
    ch.send({ op, ...extra });
  })));
}
