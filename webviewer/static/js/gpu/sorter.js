// Main-thread side of the sorter worker: hands it the animated positions when they change,
// coalesces sort requests (at most one in flight, the latest pending one replaces older ones) and
// hands finished orders to a callback. Never blocks.

export class Sorter {
  /** A sorter for `count` Gaussians (keys of `bits` bits); `onSorted(order, count, serial)`. */
  constructor(count, { bits = 16, onSorted, onError } = {}) {
    this.bits = bits;
    this.onSorted = onSorted;
    this.onError = onError;
    this.worker = new Worker(new URL("./sort-worker.js", import.meta.url), { type: "module" });
    this.worker.onmessage = (e) => this.receive(e.data);
    this.worker.onerror = (e) => this.fail(e.message || "the sort worker failed");
    this.busy = false;
    this.pending = null;
    this.serial = 0;
    this.applied = 0;
    this.positionsKey = null;
    this.waiters = [];
    this.stats = { sortMs: 0, sorts: 0 };
    this.worker.postMessage({ type: "init", count });
  }

  /** New positions (x y z opacity per Gaussian in the GPU order - all, or the first ones: see
   * sort-worker.js - transferred: the caller gives the buffer up), `key` naming them; later sorts use them. */
  setPositions(key, positions) {
    this.positionsKey = key;
    this.worker.postMessage({ type: "positions", key, positions }, [positions.buffer]);
  }

  /** Ask for an order for the latest positions and a view; returns the request's serial. */
  request(view, near = 0.01, far = 100) {
    const msg = { type: "sort", serial: ++this.serial, forward: view.R[2], tz: view.t[2], near, far, bits: this.bits };
    if (this.busy) {
      this.pending = msg;
    } else {
      this.send(msg);
    }
    return msg.serial;
  }

  send(msg) {
    this.busy = true;
    this.worker.postMessage(msg);
  }

  receive(msg) {
    if (msg.type === "error") {
      this.fail(msg.message);
      return;
    }
    this.busy = false;
    this.stats = { sortMs: msg.sortMs, sorts: this.stats.sorts + 1 };
    if (msg.serial > this.applied) {
      this.applied = msg.serial;
      this.onSorted?.(msg.order, msg.count, msg.serial);
    }
    if (this.pending) {
      const next = this.pending;
      this.pending = null;
      this.send(next);
    }
    this.resolveWaiters();
  }

  fail(message) {
    this.busy = false;
    this.pending = null;
    this.applied = this.serial; // nothing more will arrive: release the waiters
    this.resolveWaiters();
    this.onError?.(new Error(`sorting failed: ${message}`));
  }

  resolveWaiters() {
    const done = this.waiters.filter((w) => this.applied >= w.serial);
    this.waiters = this.waiters.filter((w) => this.applied < w.serial);
    done.forEach((w) => w.resolve(this.applied));
  }

  /** Resolves once the order for the latest request (made so far) has been delivered. */
  settled() {
    if (this.applied >= this.serial) return Promise.resolve(this.applied);
    return new Promise((resolve) => this.waiters.push({ serial: this.serial, resolve }));
  }

  dispose() {
    this.worker.terminate();
    this.waiters.forEach((w) => w.resolve(this.applied));
    this.waiters = [];
  }
}
