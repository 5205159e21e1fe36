// The sorter (a module Web Worker): depth-sorts the ANIMATED Gaussians back to front.
//
// The positions are the blend pass's own output, read back from the GPU asynchronously by the main
// thread (js/gpu/readback.js) and sent here when they change (x y z opacity per Gaussian, GPU
// order; a shorter array replaces only the first Gaussians, the ones the blend pass moves); a sort
// request carries only the camera, and is answered with the latest positions this worker has - so
// neither the read-back nor the sort ever holds up a frame. Depths are camera z of the means; keys
// are quantised to `bits` (16: one counting-sort pass; up to 32: two LSD radix passes of 16 bits)
// over the visible depth range. Results arrive as messages.

let S = null;

function init(count) {
  S = {
    count,
    positions: null,
    positionsKey: null,
    depth: new Float32Array(count),
    keys: new Uint32Array(count),
    tmp: new Uint32Array(count),
    counts: new Uint32Array(65536),
  };
}

/** All Gaussians' positions, or the first ones' (an update of those after a full set). */
function setPositions(pos) {
  if (pos.length === S.count * 4) S.positions = pos;
  else if (S.positions && pos.length < S.count * 4) S.positions.set(pos);
  else throw new Error(`positions of ${pos.length / 4} Gaussians for ${S.count}, before any full set`);
}

/** Indices of the Gaussians with near <= z <= far, sorted by decreasing z (back to front); `pos`:
 * x y z opacity per Gaussian. */
function depthSort(pos, forward, tz, near, far, bits) {
  const n = S.count;
  const depth = S.depth;
  let zmin = Infinity;
  let zmax = -Infinity;
  let visible = 0;
  const [f0, f1, f2] = forward;
  for (let i = 0; i < n; i++) {
    depth[i] = f0 * pos[i * 4] + f1 * pos[i * 4 + 1] + f2 * pos[i * 4 + 2] + tz;
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
      init(msg.count);
    } else if (msg.type === "positions") {
      setPositions(msg.positions);
      S.positionsKey = msg.key;
    } else if (msg.type === "sort") {
      if (!S.positions) throw new Error("no positions to sort yet");
      const t0 = performance.now();
      const order = depthSort(S.positions, msg.forward, msg.tz, msg.near, msg.far, msg.bits);
      self.postMessage({ type: "sorted", serial: msg.serial, positionsKey: S.positionsKey, order, count: order.length,
        sortMs: performance.now() - t0 }, [order.buffer]);
    }
  } catch (err) {
    self.postMessage({ type: "error", message: String(err && err.message ? err.message : err) });
  }
};
