// The sorter (a module Web Worker): depth-sorts the ANIMATED Gaussians back to front.
//
// The worker keeps the neutral positions and the xyz basis (quantised, as stored) and animates
// the positions itself: it evaluates the (tiny) coefficient MLP for the xyz coefficients and blends
// neutral + sum_k c_k U_k on the CPU - only when the parameters change, and skipping bases whose
// contribution |c_k| max|U_k| is under 10 micrometres. Depths are camera z of the means; keys are
// quantised to `bits` (16: one counting-sort pass; up to 32: two LSD radix passes of 16 bits) over
// the visible depth range. The render loop never waits for it: results arrive as messages.

import { halfTable } from "../format/half.js";

const SKIP_BELOW = 1e-5; // metres
let S = null;

function init(msg) {
  const basis = msg.basis;
  const K = basis ? basis.rank : 0;
  const maxAbs = new Float32Array(K);
  if (K > 0) {
    const per = basis.carried * 3;
    const half = basis.quant === "fp16" ? halfTable() : null;
    for (let k = 0; k < K; k++) {
      let m = 0;
      const v = basis.values;
      for (let i = k * per, e = (k + 1) * per; i < e; i++) {
        const x = Math.abs(half ? half[v[i]] : v[i]);
        if (x > m) m = x;
      }
      maxAbs[k] = m * (basis.scales ? Math.abs(basis.scales[k]) : 1);
    }
  }
  S = {
    count: msg.count,
    means: msg.means,
    bias0: msg.bias0,
    layers: msg.layers,
    basis,
    K,
    maxAbs,
    positions: new Float32Array(msg.count * 3),
    positionsKey: null,
    depth: new Float32Array(msg.count),
    keys: new Uint32Array(msg.count),
    tmp: new Uint32Array(msg.count),
    counts: new Uint32Array(65536),
  };
}

/** The first `K` outputs of the MLP (the xyz coefficients) for parameters p. */
function xyzCoefficients(p) {
  let h = p;
  const L = S.layers.length;
  for (let j = 0; j < L; j++) {
    const layer = S.layers[j];
    const rows = j === L - 1 ? S.K : layer.out;
    const bias = j === 0 ? S.bias0 : layer.bias;
    const out = new Float32Array(rows);
    const W = layer.weight;
    const n = layer.in;
    for (let r = 0; r < rows; r++) {
      let acc = 0;
      const base = r * n;
      for (let c = 0; c < n; c++) acc += W[base + c] * h[c];
      acc += bias[r];
      if (layer.activation === "leaky_relu" && acc < 0) acc *= layer.slope;
      out[r] = acc;
    }
    h = out;
  }
  return h;
}

/** Animated positions for parameters p (cached per parameter vector and identity). */
function animatedPositions(p, key) {
  if (S.positionsKey === key) return S.positions;
  const pos = S.positions;
  pos.set(S.means);
  if (S.K > 0 && S.basis.carried > 0) {
    const c = xyzCoefficients(p);
    const { values, index, scales, carried } = S.basis;
    const half = S.basis.quant === "fp16" ? halfTable() : null;
    const per = carried * 3;
    for (let k = 0; k < S.K; k++) {
      if (Math.abs(c[k]) * S.maxAbs[k] < SKIP_BELOW) continue;
      const ck = c[k] * (scales ? scales[k] : 1);
      const off = k * per;
      for (let m = 0; m < carried; m++) {
        const g = (index ? index[m] : m) * 3;
        const v = off + m * 3;
        if (half) {
          pos[g] += ck * half[values[v]];
          pos[g + 1] += ck * half[values[v + 1]];
          pos[g + 2] += ck * half[values[v + 2]];
        } else {
          pos[g] += ck * values[v];
          pos[g + 1] += ck * values[v + 1];
          pos[g + 2] += ck * values[v + 2];
        }
      }
    }
  }
  S.positionsKey = key;
  return pos;
}

/** Indices of the Gaussians with near <= z <= far, sorted by decreasing z (back to front). */
function depthSort(pos, forward, tz, near, far, bits) {
  const n = S.count;
  const depth = S.depth;
  let zmin = Infinity;
  let zmax = -Infinity;
  let visible = 0;
  const [f0, f1, f2] = forward;
  for (let i = 0; i < n; i++) {
    depth[i] = f0 * pos[i * 3] + f1 * pos[i * 3 + 1] + f2 * pos[i * 3 + 2] + tz;
    const z = depth[i]; // the stored (float32) value, as the key pass reads it
    if (z >= near && z <= far) {
      visible++;
      if (z < zmin) zmin = z;
      if (z > zmax) zmax = z;
    }
  }
  const order = new Uint32Array(visible);
  if (visible === 0) return order;
  bits = Math.max(8, Math.min(32, bits | 0));
  const maxKey = bits === 32 ? 4294967295 : 2 ** bits - 1;
  const scale = zmax > zmin ? maxKey / (zmax - zmin) : 0;
  // key 0 = farthest
  const keys = S.keys;
  const idx = S.tmp;
  let m = 0;
  for (let i = 0; i < n; i++) {
    const z = depth[i];
    if (z >= near && z <= far) {
      keys[m] = Math.max(0, Math.min(maxKey, Math.floor((zmax - z) * scale))) >>> 0;
      idx[m++] = i;
    }
  }
  if (bits <= 16) {
    countingPass(keys, idx, order, visible, 0, 0xffff);
  } else {
    // LSD radix: low 16 bits, then the high bits (both stable)
    const mid = new Uint32Array(visible);
    const midKeys = new Uint32Array(visible);
    countingPass(keys, idx, mid, visible, 0, 0xffff, midKeys);
    countingPass(midKeys, mid, order, visible, 16, 0xffff);
  }
  return order;
}

/** One stable counting-sort pass on (keys >>> shift) & mask; optionally permutes the keys too. */
function countingPass(keys, items, out, n, shift, mask, outKeys = null) {
  const counts = S.counts;
  counts.fill(0);
  for (let i = 0; i < n; i++) counts[(keys[i] >>> shift) & mask]++;
  let sum = 0;
  for (let b = 0; b <= mask; b++) {
    const c = counts[b];
    counts[b] = sum;
    sum += c;
  }
  for (let i = 0; i < n; i++) {
    const b = (keys[i] >>> shift) & mask;
    const o = counts[b]++;
    out[o] = items[i];
    if (outKeys) outKeys[o] = keys[i];
  }
}

self.onmessage = (e) => {
  const msg = e.data;
  try {
    if (msg.type === "init") {
      init(msg);
    } else if (msg.type === "identity") {
      S.means = msg.means;
      S.bias0 = msg.bias0;
      S.positionsKey = null;
    } else if (msg.type === "sort") {
      const t0 = performance.now();
      const pos = animatedPositions(msg.params, msg.paramsKey);
      const t1 = performance.now();
      const order = depthSort(pos, msg.forward, msg.tz, msg.near, msg.far, msg.bits);
      const t2 = performance.now();
      self.postMessage({ type: "sorted", serial: msg.serial, order, count: order.length, blendMs: t1 - t0, sortMs: t2 - t1 },
        [order.buffer]);
    }
  } catch (err) {
    self.postMessage({ type: "error", message: String(err && err.message ? err.message : err) });
  }
};
