// Main-thread side of the sorter worker: coalesces requests (at most one in flight, the latest
// pending one replaces older ones) and hands finished orders to a callback. Never blocks.

export class Sorter {
  constructor(bundle, { bits = 16, onSorted, onError } = {}) {
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
    this.waiters = [];
    this.stats = { blendMs: 0, sortMs: 0, sorts: 0 };
    const xyz = bundle.groups[0];
    const layers = bundle.mlp.layers.map((l) => ({ in: l.in, out: l.out, activation: l.activation, slope: l.negativeSlope,
      weight: l.weight.slice(), bias: l.bias ? l.bias.slice() : null }));
    const basis = xyz.rank > 0 ? {
      rank: xyz.rank, carried: xyz.carried, quant: bundle.quantization, values: xyz.values.slice(),
      scales: xyz.scales ? xyz.scales.slice() : null, index: xyz.index ? xyz.index.slice() : null,
    } : null;
    const transfer = [...layers.flatMap((l) => (l.bias ? [l.weight.buffer, l.bias.buffer] : [l.weight.buffer]))];
    if (basis) {
      transfer.push(basis.values.buffer);
      if (basis.scales) transfer.push(basis.scales.buffer);
      if (basis.index) transfer.push(basis.index.buffer);
    }
    this.worker.postMessage({ type: "init", count: bundle.gaussianCount, means: bundle.identities[0].means.slice(),
      bias0: bundle.identities[0].mlpBias0.slice(), layers, basis }, transfer);
  }

  setIdentity(ident) {
    const means = ident.means.slice();
    this.worker.postMessage({ type: "identity", means, bias0: ident.mlpBias0.slice() }, [means.buffer]);
  }

  /** Ask for an order for parameters `params` (key: any string identifying params + identity) and a view. */
  request(params, paramsKey, view, near = 0.01, far = 100) {
    const msg = { type: "sort", serial: ++this.serial, params: Float32Array.from(params), paramsKey,
      forward: view.R[2], tz: view.t[2], near, far, bits: this.bits };
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
    this.stats = { blendMs: msg.blendMs, sortMs: msg.sortMs, sorts: this.stats.sorts + 1 };
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
