// A minimal event emitter: listeners run in order, and one that throws does not stop the
// others or the state machine that emitted (its error is rethrown on a fresh task).

export class Emitter {
  constructor() {
    /** @type {Map<string, Set<(v: any) => void>>} */
    this.listeners = new Map();
  }

  /**
   * @param {string} type @param {(v: any) => void} fn
   * @returns {() => void} a function that removes the listener
   */
  on(type, fn) {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }

  /** @param {string} type @param {(v: any) => void} fn */
  off(type, fn) {
    this.listeners.get(type)?.delete(fn);
  }

  /** @param {string} type @param {any} value */
  emit(type, value) {
    for (const fn of [...(this.listeners.get(type) ?? [])]) {
      try {
        fn(value);
      } catch (e) {
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }
}
