// Splat data: a bundle's arrays as GPU textures (the static inputs of the generator and splat
// passes), plus the targets the passes write.
//
// Layouts (shared with the shaders through #defines):
//   per-Gaussian textures: GAUSS_TW Gaussians per row, row-major in the GPU order: the Gaussians
//     some group's basis carries first, then the others, each part in bundle order (`perm`: GPU
//     index -> bundle index, null where the two orders agree), so that the blend pass and the
//     position read-back after a full run touch only the first `carriedRows` rows;
//   SH: SH_PER_ROW Gaussians x 4 RGB16F texels (DC, then the three degree-1 bands) per row;
//   .agm 1.1 quantised neutral attributes stay as stored, in integer textures the shaders decode
//     (origin + step * q; exp for log-scales; smallest-three quaternions): positions, log-scales,
//     opacities per Gaussian (R/RGB 8UI or 16UI), quaternions R32UI, SH (DC and bands 1-3) packed
//     into one RGBA32UI texel per Gaussian (two with 16-bit bands, see packSH); their [origin,
//     step] ranges are uniforms;
//   MLP weights: RGBA32F, or RGBA16F with the stored binary16 bits of an fp16 bundle, or RGBA8I with
//     the stored int8 values of an int8 bundle (per-row scales in a vector texture, applied in the pass);
//   bases: one RGBA32UI 2D-array texture per group, repacked at load so that one texel holds 16
//     int8 (or 8 fp16) values of ONE component for 16 (8) consecutive bases: layer t = j * (Kp/L) + q
//     holds U[16q .. 16q+15, m, j] of slot m at texel m (Kp: K rounded up to 16; L: 16 or 8 values
//     per texel). The blend pass then reads K*d/16 texels per Gaussian and group instead of K;
//   projected splats: two RGBA32UI texels per splat RANK (GAUSS_TW per row), see project.frag.glsl;
//   vectors (MLP activations, biases, coefficients): 4 floats per texel, VEC_TW texels per row;
//     coefficients: each group from a multiple of 16 (RANK_ALIGN), zero padded.
// Every width is <= 2048 (the WebGL2 minimum of MAX_TEXTURE_SIZE).

import { createTarget, createTexture2D, createTexture3D, deleteTexture, uploadRows } from "./gl.js";

export const GAUSS_TW = 2048;
export const SH_PER_ROW = 512;
export const VEC_TW = 1024;
export const WEIGHT_TW = 2048;
export const SHADER_DEFINES = { GAUSS_TW, SH_PER_ROW, VEC_TW, WEIGHT_TW };

export const RANK_ALIGN = 16;
const ceilDiv = (a, b) => Math.floor((a + b - 1) / b);
const VALUES_PER_TEXEL = { int8: 16, fp16: 8 };

/**
 * Repack a group's basis values [K, n, d] (Int8Array or Uint16Array of fp16 bits) into the layers
 * of an RGBA32UI array texture: layer j * (Kp / L) + q, texel m holds U[L q + i, from[m], j], i < L
 * (`from`: the stored slot of texel m; null: m itself).
 */
export function packBasis(values, K, n, d, quant, width, rows, from = null) {
  const L = VALUES_PER_TEXEL[quant];
  const Kp = ceilDiv(K, RANK_ALIGN) * RANK_ALIGN;
  const perComp = Kp / L;
  const layers = d * perComp;
  const layerTexels = width * rows;
  const words = new Uint32Array(layers * layerTexels * 4);
  const out = quant === "int8" ? new Int8Array(words.buffer) : new Uint16Array(words.buffer);
  const vpt = 16 / (quant === "int8" ? 1 : 2); // values per texel in `out` units
  for (let k = 0; k < K; k++) {
    const q = Math.floor(k / L);
    const i = k - q * L;
    const src = k * n * d;
    for (let j = 0; j < d; j++) {
      let dst = (j * perComp + q) * layerTexels * vpt + i;
      for (let m = 0; m < n; m++, dst += vpt) out[dst] = values[src + (from ? from[m] : m) * d + j];
    }
  }
  return { words, layers, perComp, Kp };
}

/**
 * The GPU order of a bundle's Gaussians: {perm, carried} with `carried` the Gaussians some group's
 * basis carries (rank > 0) and `perm[i]` the bundle index of GPU index i - the carried ones first,
 * each part far to near by `depth` (one value per Gaussian; bundle order where equal or without
 * it), so that a back-to-front splat order from a camera near that one reads the per-Gaussian
 * textures nearly in sequence; perm is null when that is the bundle order itself.
 */
export function carriedFirst(groups, count, depth = null) {
  const carried = new Uint8Array(count);
  let all = false;
  for (const g of groups) {
    if (g.rank === 0 || g.carried === 0) continue;
    if (!g.index) all = true;
    else for (let m = 0; m < g.index.length; m++) carried[g.index[m]] = 1;
  }
  if (all) carried.fill(1);
  let n = 0;
  for (let i = 0; i < count; i++) n += carried[i];
  const parts = [[], []];
  for (let i = 0; i < count; i++) parts[carried[i] ? 0 : 1].push(i);
  if (depth) parts.forEach((p) => p.sort((a, b) => depth[b] - depth[a] || a - b));
  const perm = Uint32Array.from([...parts[0], ...parts[1]]);
  let inOrder = true;
  for (let i = 0; i < count && inOrder; i++) inOrder = perm[i] === i;
  return { perm: inOrder ? null : perm, carried: n };
}

/** Depth of each of `means` (x y z per Gaussian) along the unit vector `forward`. */
export function depthAlong(means, forward) {
  const [f0, f1, f2] = forward;
  const out = new Float32Array(means.length / 3);
  for (let i = 0; i < out.length; i++) out[i] = f0 * means[3 * i] + f1 * means[3 * i + 1] + f2 * means[3 * i + 2];
  return out;
}

/**
 * A group's slots in the GPU order: {gpu, stored}, slot m of the packed basis belonging to GPU
 * index gpu[m] and holding the bundle's stored slot stored[m] (`index`: the group's sparse index,
 * null if dense; `perm`: GPU -> bundle index, or null).
 */
export function gpuSlotOrder(index, perm, count) {
  const gpuOf = new Uint32Array(count);
  for (let i = 0; i < count; i++) gpuOf[perm ? perm[i] : i] = i;
  const n = index ? index.length : count;
  const stored = new Uint32Array(n);
  for (let m = 0; m < n; m++) stored[m] = m;
  const gpu = (m) => gpuOf[index ? index[m] : m];
  stored.sort((a, b) => gpu(a) - gpu(b));
  return { gpu: stored.map(gpu), stored };
}

/**
 * A 1.1 bundle's quantised SH (`dc` [G*3], `rest` [G*9]: bands 1-3 x rgb; u8 or u16 each) as stored,
 * packed per Gaussian (GPU order `perm`) into RGBA32UI texels, so the projection pass fetches one:
 * {first, second} (Uint32Array, 4 words per Gaussian; `second` null unless `rest` is u16).
 *   u8 bands:  dc0 | dc1 << 16, dc2 | r0 << 16 | r1 << 24, r2 | r3 << 8 | r4 << 16 | r5 << 24, r6 | r7 << 8 | r8 << 16;
 *   u16 bands: dc0 | dc1 << 16, dc2 | r0 << 16, r1 | r2 << 16, r3 | r4 << 16 (first) and
 *              r5 | r6 << 16, r7 | r8 << 16, 0, 0 (second).
 */
export function packSH(dc, rest, count, perm) {
  const wide = rest instanceof Uint16Array;
  const first = new Uint32Array(count * 4);
  const second = wide ? new Uint32Array(count * 4) : null;
  for (let i = 0; i < count; i++) {
    const b = perm ? perm[i] : i;
    const d = b * 3;
    const r = b * 9;
    const o = i * 4;
    first[o] = dc[d] | (dc[d + 1] << 16);
    if (wide) {
      first[o + 1] = dc[d + 2] | (rest[r] << 16);
      first[o + 2] = rest[r + 1] | (rest[r + 2] << 16);
      first[o + 3] = rest[r + 3] | (rest[r + 4] << 16);
      second[o] = rest[r + 5] | (rest[r + 6] << 16);
      second[o + 1] = rest[r + 7] | (rest[r + 8] << 16);
    } else {
      first[o + 1] = dc[d + 2] | (rest[r] << 16) | (rest[r + 1] << 24);
      first[o + 2] = rest[r + 2] | (rest[r + 3] << 8) | (rest[r + 4] << 16) | (rest[r + 5] << 24);
      first[o + 3] = rest[r + 6] | (rest[r + 7] << 8) | (rest[r + 8] << 16);
    }
  }
  return { first, second };
}

/** `values` (`per` values per Gaussian, bundle order) in the GPU order `perm` (a new array of the
 * same type), or `values` itself without a permutation. */
export function permuted(values, per, perm) {
  if (!perm) return values;
  const out = new values.constructor(perm.length * per);
  for (let i = 0; i < perm.length; i++) {
    const src = perm[i] * per;
    for (let k = 0, o = i * per; k < per; k++) out[o + k] = values[src + k];
  }
  return out;
}

/** A vector of `n` floats as a texture of ceil(n/4) RGBA texels (VEC_TW per row), zero padded. */
export function vectorTexture(gl, internal, n, data = null) {
  const texels = Math.max(1, ceilDiv(n, 4));
  const width = Math.min(texels, VEC_TW);
  const height = ceilDiv(texels, width);
  let padded = null;
  if (data) {
    padded = internal === "RGBA32UI" ? new Uint32Array(width * height * 4) : new Float32Array(width * height * 4);
    if (internal === "RGBA32UI") padded.set(new Uint32Array(data.buffer, data.byteOffset, data.length));
    else padded.set(data);
  }
  return createTexture2D(gl, internal, width, height, padded);
}

/** Group starts in the padded coefficient layout (each group from a multiple of RANK_ALIGN). */
export function coefficientLayout(ranks) {
  const start = [];
  let at = 0;
  for (const K of ranks) {
    start.push(at);
    at += ceilDiv(K, RANK_ALIGN) * RANK_ALIGN;
  }
  return { start, total: Math.max(at, 4) };
}

export class SplatData {
  /** `forward`: the view direction the GPU order is sorted along (far to near; see carriedFirst). */
  constructor(gl, bundle, { forward = null } = {}) {
    this.gl = gl;
    this.bundle = bundle;
    const G = bundle.gaussianCount;
    this.count = G;
    this.rows = ceilDiv(G, GAUSS_TW);
    this.shRows = ceilDiv(G, SH_PER_ROW);
    const maxSize = gl.getParameter(gl.MAX_TEXTURE_SIZE);
    const maxLayers = gl.getParameter(gl.MAX_ARRAY_TEXTURE_LAYERS);
    if (Math.max(this.rows, this.shRows) > maxSize) {
      throw new Error(`${G.toLocaleString()} Gaussians need textures of ${this.shRows} rows; this GPU allows ${maxSize}`);
    }
    const depth = forward && bundle.identities[0].means ? depthAlong(bundle.identities[0].means, forward) : null;
    const order = carriedFirst(bundle.groups, G, depth);
    this.perm = order.perm;
    this.carried = order.carried;
    this.carriedRows = ceilDiv(order.carried, GAUSS_TW);
    this.ranks = bundle.groups.map((g) => g.rank);
    this.quant = bundle.quantization;
    this.layout = coefficientLayout(this.ranks);
    this.identity = -1;
    this.textures = [];
    const keep = (t) => (this.textures.push(t), t);

    // neutral avatar (per identity, re-uploaded by setIdentity; quantised: textures made there, as
    // their formats follow each identity's stored dtypes)
    this.quantizedNeutral = bundle.neutralStorage === "quantized";
    this.neutralTextures = [];
    if (!this.quantizedNeutral) {
      this.means = keep(createTexture2D(gl, "RGB32F", GAUSS_TW, this.rows));
      this.scales = keep(createTexture2D(gl, "RGB32F", GAUSS_TW, this.rows));
      this.quats = keep(createTexture2D(gl, "RGBA32F", GAUSS_TW, this.rows));
      this.opacities = keep(createTexture2D(gl, "R32F", GAUSS_TW, this.rows));
      this.sh = keep(createTexture2D(gl, "RGB16F", SH_PER_ROW * 4, this.shRows));
    }

    // slots: where each Gaussian (GPU order) sits in each group's basis (-1: not carried)
    // slots: where each Gaussian (GPU order) sits in each group's packed basis (-1: not carried);
    // the bases are repacked in the GPU order too (slotSources), so the blend pass reads them in sequence
    const slots = new Int32Array(GAUSS_TW * this.rows * 4).fill(-1);
    const slotSources = bundle.groups.map((g, gi) => {
      if (g.rank === 0 || g.carried === 0) return null;
      const from = gpuSlotOrder(g.index, this.perm, G);
      for (let m = 0; m < from.gpu.length; m++) slots[from.gpu[m] * 4 + gi] = m;
      return from.stored;
    });
    this.slots = keep(createTexture2D(gl, "RGBA32I", GAUSS_TW, this.rows, slots));

    // bases: RGBA32UI 2D arrays of packed values (see packBasis)
    this.basisTexels = [];
    this.bases = bundle.groups.map((g, gi) => {
      if (g.rank === 0 || g.carried === 0) {
        this.basisTexels.push(0);
        return keep(createTexture3D(gl, "RGBA32UI", 1, 1, 1));
      }
      const rows = ceilDiv(g.carried, GAUSS_TW);
      const packed = packBasis(g.values, g.rank, g.carried, g.dim, this.quant, GAUSS_TW, rows, slotSources[gi]);
      if (packed.layers > maxLayers) {
        throw new Error(`group ${g.name} needs ${packed.layers} texture layers; this GPU allows ${maxLayers}`);
      }
      if (rows > maxSize) throw new Error(`group ${g.name} needs textures of ${rows} rows; this GPU allows ${maxSize}`);
      const t = keep(createTexture3D(gl, "RGBA32UI", GAUSS_TW, rows, packed.layers));
      gl.bindTexture(gl.TEXTURE_2D_ARRAY, t.tex);
      gl.pixelStorei(gl.UNPACK_ALIGNMENT, 4);
      gl.texSubImage3D(gl.TEXTURE_2D_ARRAY, 0, 0, 0, 0, GAUSS_TW, rows, packed.layers, gl.RGBA_INTEGER,
        gl.UNSIGNED_INT, packed.words);
      this.basisTexels.push(packed.perComp);
      return t;
    });
    // int8 per-basis scales in the padded coefficient layout (folded into the coefficients by a pass)
    const scales = new Float32Array(this.layout.total);
    if (this.quant === "int8") {
      bundle.groups.forEach((g, gi) => g.scales && scales.set(g.scales, this.layout.start[gi]));
    }
    this.basisScales = keep(vectorTexture(gl, "RGBA32F", scales.length, scales));

    // MLP weights (rows padded to 4 columns) and biases
    this.layers = bundle.mlp.layers.map((layer, j) => {
      const inTexels = Math.max(1, ceilDiv(layer.in, 4));
      const texels = Math.max(1, layer.out * inTexels);
      const width = Math.min(texels, WEIGHT_TW);
      const height = ceilDiv(texels, width);
      const half = layer.weightHalf; // fp16 bundle: the stored bits, sampled as floats by the same shader
      const int8 = layer.weightInt8; // int8 bundle: the stored values, scaled per row by the shader
      const src = half || int8 || layer.weight;
      const w = half ? new Uint16Array(width * height * 4)
        : int8 ? new Int8Array(width * height * 4) : new Float32Array(width * height * 4);
      for (let r = 0; r < layer.out; r++) w.set(src.subarray(r * layer.in, (r + 1) * layer.in), r * inTexels * 4);
      const last = j === bundle.mlp.layers.length - 1;
      return {
        in: layer.in,
        out: layer.out,
        inTexels,
        outTexels: last ? Math.max(1, this.layout.total / 4) : Math.max(1, ceilDiv(layer.out, 4)),
        activation: layer.activation === "leaky_relu" ? 1 : 0,
        slope: layer.negativeSlope,
        last,
        weight: keep(createTexture2D(gl, half ? "RGBA16F" : int8 ? "RGBA8I" : "RGBA32F", width, height, w)),
        rowScales: int8 ? keep(vectorTexture(gl, "RGBA32F", layer.out, layer.weightScales)) : null,
        bias: j === 0 ? null : keep(vectorTexture(gl, "RGBA32F", layer.out, layer.bias)),
      };
    });
    this.bias0 = keep(vectorTexture(gl, "RGBA32F", bundle.mlp.layers[0].out));
    this.bias0Data = new Float32Array(this.bias0.width * this.bias0.height * 4);

    // MLP input and per-layer outputs (RGBA32UI float bits)
    this.params = keep(vectorTexture(gl, "RGBA32UI", bundle.parameters.length));
    this.paramData = new Float32Array(this.params.width * this.params.height * 4);
    this.activations = this.layers.map((layer) => {
      const t = keep(vectorTexture(gl, "RGBA32UI", layer.outTexels * 4));
      return createTarget(gl, [t]);
    });
    this.coefficients = this.activations[this.activations.length - 1];
    // coefficients the blend pass uses: c * scale (int8), or the MLP output itself (fp16)
    this.blendCoefficients = this.quant === "int8"
      ? createTarget(gl, [keep(vectorTexture(gl, "RGBA32UI", this.layout.total))])
      : this.coefficients;

    // animated Gaussians (blend pass output; animatedSerial counts their versions), the sort order
    // and the projected splats (projection pass output, by rank: geometry and appearance texels)
    this.animated = createTarget(gl, [0, 1, 2].map(() => keep(createTexture2D(gl, "RGBA32UI", GAUSS_TW, this.rows))));
    this.animatedSerial = 0;
    this.order = keep(createTexture2D(gl, "R32UI", GAUSS_TW, this.rows));
    this.orderSerial = 0;
    this.splatCount = 0;
    this.projected = createTarget(gl, [0, 1].map(() => keep(createTexture2D(gl, "RGBA32UI", GAUSS_TW, this.rows))));
    this.targets = [...new Set([...this.activations, this.blendCoefficients, this.animated, this.projected])];
    this.setIdentity(0);
  }

  /** Upload identity i's neutral Gaussians and first-layer bias. */
  setIdentity(i) {
    const ident = this.bundle.identities[i];
    if (!ident) throw new Error(`no identity ${i}`);
    const gl = this.gl;
    const G = this.count;
    if (this.quantizedNeutral) {
      this.uploadQuantized(ident.neutralQ);
    } else {
      const p = this.perm;
      uploadRows(gl, this.means, permuted(ident.means, 3, p), G);
      uploadRows(gl, this.scales, permuted(ident.scales, 3, p), G);
      uploadRows(gl, this.quats, permuted(ident.quats, 4, p), G);
      uploadRows(gl, this.opacities, permuted(ident.opacities, 1, p), G);
      uploadRows(gl, this.sh, permuted(ident.sh, 12, p), G * 4);
    }
    this.bias0Data.fill(0);
    this.bias0Data.set(ident.mlpBias0);
    gl.bindTexture(gl.TEXTURE_2D, this.bias0.tex);
    gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, this.bias0.width, this.bias0.height, gl.RGBA, gl.FLOAT, this.bias0Data);
    this.identity = i;
  }

  /** 1.1 quantised neutral attributes, as stored, into integer textures (formats from their dtypes). */
  uploadQuantized(q) {
    const gl = this.gl;
    const G = this.count;
    for (const t of this.neutralTextures) {
      deleteTexture(gl, t);
      this.textures.splice(this.textures.indexOf(t), 1);
    }
    const make = (internal, width, rows, data, count) => {
      const t = createTexture2D(gl, internal, width, rows);
      uploadRows(gl, t, permuted(data, data.length / G, this.perm), count);
      this.textures.push(t);
      this.neutralTextures.push(t);
      return t;
    };
    const bits = (a) => (a instanceof Uint16Array ? "16" : "8");
    this.means = make(`RGB${bits(q.means.data)}UI`, GAUSS_TW, this.rows, q.means.data, G);
    this.scales = make(`RGB${bits(q.scales.data)}UI`, GAUSS_TW, this.rows, q.scales.data, G);
    this.quats = make("R32UI", GAUSS_TW, this.rows, q.quats.data, G);
    this.opacities = make(`R${bits(q.opacities.data)}UI`, GAUSS_TW, this.rows, q.opacities.data, G);
    // SH: DC and bands 1-3 of a Gaussian in one RGBA32UI texel (two with 16-bit bands), see packSH
    const sh = packSH(q.sh_dc.data, q.sh_rest.data, G, this.perm);
    const texel = (words) => {
      const t = createTexture2D(gl, "RGBA32UI", GAUSS_TW, this.rows);
      uploadRows(gl, t, words, G);
      this.textures.push(t);
      this.neutralTextures.push(t);
      return t;
    };
    this.shPacked = texel(sh.first);
    this.shPacked2 = sh.second ? texel(sh.second) : null;
    // [origin..., step...] of each attribute: the decode uniforms
    this.ranges = Object.fromEntries(["means", "scales", "opacities", "sh_dc", "sh_rest"].map((f) => [f, q[f].range]));
  }

  /** Upload the MLP input vector. */
  setParams(values) {
    const gl = this.gl;
    this.paramData.fill(0);
    this.paramData.set(values);
    gl.bindTexture(gl.TEXTURE_2D, this.params.tex);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, this.params.width, this.params.height, gl.RGBA_INTEGER,
      gl.UNSIGNED_INT, new Uint32Array(this.paramData.buffer));
  }

  /** Upload a sort order (Gaussian indices, back to front). */
  setOrder(order, count) {
    if (count > 0) uploadRows(this.gl, this.order, order, count);
    this.splatCount = count;
    this.orderSerial++;
  }

  /** Approximate GPU memory of the textures, in bytes. */
  gpuBytes() {
    const bytes = { R32F: 4, RGB32F: 12, RGBA32F: 16, RGB16F: 6, RGBA16F: 8, RGBA32I: 16, R32UI: 4, RGBA32UI: 16,
      R8UI: 1, RGB8UI: 3, R16UI: 2, RGB16UI: 6, RGBA8I: 4 };
    return this.textures.reduce((s, t) => s + t.width * t.height * (t.depth || 1) * bytes[t.internal], 0);
  }

  dispose() {
    const gl = this.gl;
    for (const t of this.textures) deleteTexture(gl, t);
    for (const target of this.targets) gl.deleteFramebuffer(target.fbo);
    this.textures = [];
    this.targets = [];
  }
}
