// The generator passes, all in fragment shaders: the coefficient MLP layer by layer, (int8 only)
// the per-basis scales folded into the coefficients, a GPU-side copy of those into the blend pass's
// uniform buffer, then one blend pass over every Gaussian (after an identity's first run: over the
// rows of the carried ones).
// Run only when the parameters or the identity change; the splat pass then reads the animated
// Gaussians from the blend pass's targets.

import { bindTexture, createProgram, loadShader, readFloatTarget, withDefines } from "./gl.js";
import { SHADER_DEFINES } from "./splat-data.js";

export async function loadGeneratorSources() {
  const names = ["fullscreen.vert.glsl", "mlp.frag.glsl", "coef_scale.frag.glsl", "blend.frag.glsl"];
  const [vs, mlp, scale, blend] = await Promise.all(names.map(loadShader));
  return { vs, mlp, scale, blend, cache: new Map() };
}

const GROUP_DEFINES = ["XYZ", "SCALE", "ROTATION", "OPACITY"];

/** The blend pass's defines for a bundle: quantisation, the coefficient layout (texels), and per
 * group its first coefficient texel, texels per component, rank and whether it carries anything. */
export function blendDefines(data) {
  const defines = { BASES_INT8: data.quant === "int8", NEUTRAL_QUANTIZED: data.quantizedNeutral,
    COEFF_TEXELS: data.layout.total / 4 };
  GROUP_DEFINES.forEach((name, g) => {
    defines[`START_${name}`] = data.layout.start[g] / 4;
    defines[`BLOCKS_${name}`] = data.basisTexels[g];
    defines[`RANK_${name}`] = data.ranks[g];
    defines[`CARRIES_${name}`] = data.basisTexels[g] > 0;
  });
  return defines;
}

/** Programs for a bundle: the MLP layers and the scale folding (shared), and the blend pass, full
 * and SKIP_STATIC, specialised on the bundle (blendDefines). */
function programsFor(gl, sources, data) {
  const make = (fs, name, extra = {}) => {
    const defines = { ...SHADER_DEFINES, ...extra };
    return createProgram(gl, withDefines(sources.vs, defines), withDefines(fs, defines), name);
  };
  if (!sources.cache.has("mlp")) {
    sources.cache.set("mlp", make(sources.mlp, "mlp"));
    sources.cache.set("mlp:int8", make(sources.mlp, "mlp (int8 weights)", { WEIGHTS_INT8: true }));
    sources.cache.set("scale", make(sources.scale, "coefficient scales"));
  }
  const blend = (skip) => {
    const defines = { ...blendDefines(data), SKIP_STATIC: skip };
    const key = `blend:${JSON.stringify(defines)}`;
    if (!sources.cache.has(key)) {
      const p = make(sources.blend, `blend (${data.quant}${data.quantizedNeutral ? ", quantised neutral" : ""}` +
        `${skip ? ", carried only" : ""})`, defines);
      gl.uniformBlockBinding(p.program, gl.getUniformBlockIndex(p.program, "Coefficients"), COEFF_BINDING);
      sources.cache.set(key, p);
    }
    return sources.cache.get(key);
  };
  return { mlp: sources.cache.get("mlp"), mlpInt8: sources.cache.get("mlp:int8"), scale: sources.cache.get("scale"),
    blend: blend(false), blendSkip: blend(true) };
}

/** Uniform-buffer binding point of the blend pass's coefficients. */
const COEFF_BINDING = 0;

/** Draw buffers of the animated targets a carried-only blend pass writes: means + opacity if the xyz
 * or opacity group carries Gaussians, scales if the scale group does, quaternions if the rotation
 * group does (`texels`: per group, basis texels per component, 0 = carries none). */
function movedTargets(gl, texels) {
  const [xyz, scale, rotation, opacity] = texels.map((t) => t > 0);
  return [xyz || opacity, scale, rotation].map((on, i) => (on ? gl.COLOR_ATTACHMENT0 + i : gl.NONE));
}

export class Generator {
  constructor(gl, data, sources) {
    this.gl = gl;
    this.data = data;
    const blockBytes = (data.layout.total / 4) * 16;
    const maxBlock = gl.getParameter(gl.MAX_UNIFORM_BLOCK_SIZE);
    if (blockBytes > maxBlock) {
      throw new Error(`the bundle's ${data.layout.total} blend coefficients need a ${blockBytes}-byte uniform block; ` +
        `this GPU allows ${maxBlock}`);
    }
    this.programs = programsFor(gl, sources, data);
    // the coefficients as the blend pass's uniform block: the (scaled) MLP output copied here on the GPU
    const c = data.blendCoefficients;
    this.coeffBuffer = gl.createBuffer();
    gl.bindBuffer(gl.PIXEL_PACK_BUFFER, this.coeffBuffer);
    gl.bufferData(gl.PIXEL_PACK_BUFFER, c.width * c.height * 16, gl.DYNAMIC_COPY);
    gl.bindBuffer(gl.PIXEL_PACK_BUFFER, null);
    this.vao = gl.createVertexArray();
    this.runs = 0;
    this.wrote = null; // {identity, serial} of this generator's last blend into the animated targets
    this.lastRows = 0; // rows of the animated targets the last blend pass wrote
  }

  /** MLP + blend for the current parameter vector and identity (already uploaded); `blend: false`
   * stops after the coefficients (benchmarks). */
  run({ blend = true } = {}) {
    const gl = this.gl;
    const d = this.data;
    gl.bindVertexArray(this.vao);
    gl.disable(gl.BLEND);
    gl.disable(gl.DEPTH_TEST);
    gl.disable(gl.SCISSOR_TEST);

    // (1) the MLP, one pass per layer
    let input = d.params;
    d.layers.forEach((layer, j) => {
      const p = layer.rowScales ? this.programs.mlpInt8 : this.programs.mlp;
      gl.useProgram(p.program);
      if (layer.rowScales) bindTexture(gl, 3, layer.rowScales, p.u.uRowScale);
      const target = d.activations[j];
      gl.bindFramebuffer(gl.FRAMEBUFFER, target.fbo);
      gl.viewport(0, 0, target.width, target.height);
      bindTexture(gl, 0, input, p.u.uInput);
      bindTexture(gl, 1, layer.weight, p.u.uWeight);
      bindTexture(gl, 2, j === 0 ? d.bias0 : layer.bias, p.u.uBias);
      gl.uniform1i(p.u.uInTexels, layer.inTexels);
      gl.uniform1i(p.u.uOut, layer.out);
      gl.uniform1i(p.u.uOutTexels, layer.outTexels);
      gl.uniform1i(p.u.uActivation, layer.activation);
      gl.uniform1f(p.u.uSlope, layer.slope);
      gl.uniform1i(p.u.uRemap, layer.last ? 1 : 0);
      gl.uniform4iv(p.u.uRank, d.ranks);
      gl.uniform4iv(p.u.uDst, d.layout.start);
      gl.drawArrays(gl.TRIANGLES, 0, 3);
      input = target.textures[0];
    });

    // (2) int8: coefficients times the per-basis scales (once, not per Gaussian)
    if (d.blendCoefficients !== d.coefficients) {
      const s = this.programs.scale;
      const target = d.blendCoefficients;
      gl.useProgram(s.program);
      gl.bindFramebuffer(gl.FRAMEBUFFER, target.fbo);
      gl.viewport(0, 0, target.width, target.height);
      bindTexture(gl, 0, d.coefficients.textures[0], s.u.uCoeffs);
      bindTexture(gl, 1, d.basisScales, s.u.uScales);
      gl.uniform1i(s.u.uTexels, d.layout.total / 4);
      gl.drawArrays(gl.TRIANGLES, 0, 3);
    }

    if (!blend) {
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      gl.bindVertexArray(null);
      return;
    }
    // (3) the coefficients into the uniform buffer (a GPU-side copy: nothing waits)
    const bc = d.blendCoefficients;
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, bc.fbo);
    gl.readBuffer(gl.COLOR_ATTACHMENT0);
    gl.bindBuffer(gl.PIXEL_PACK_BUFFER, this.coeffBuffer);
    gl.readPixels(0, 0, bc.width, bc.height, gl.RGBA_INTEGER, gl.UNSIGNED_INT, 0);
    gl.bindBuffer(gl.PIXEL_PACK_BUFFER, null);
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, null);
    // (4) the blend pass, one fragment per Gaussian. Gaussians no group carries keep their neutral
    // values: only a full run writes them (after the identity changed, or when something else - the
    // bench page's baseline - wrote the targets); the others cover only the first carriedRows rows
    // (the GPU order puts the carried Gaussians first) and write only the targets a group moves.
    const w = this.wrote;
    const skipStatic = Boolean(w && w.identity === d.identity && w.serial === d.animatedSerial);
    this.lastRows = skipStatic ? d.carriedRows : d.rows;
    const b = skipStatic ? this.programs.blendSkip : this.programs.blend;
    gl.useProgram(b.program);
    gl.bindFramebuffer(gl.FRAMEBUFFER, d.animated.fbo);
    if (skipStatic) gl.drawBuffers(movedTargets(gl, d.basisTexels));
    gl.viewport(0, 0, d.animated.width, this.lastRows);
    gl.bindBufferBase(gl.UNIFORM_BUFFER, COEFF_BINDING, this.coeffBuffer);
    bindTexture(gl, 0, d.means, b.u.uMeans);
    bindTexture(gl, 1, d.scales, b.u.uScales);
    bindTexture(gl, 2, d.quats, b.u.uQuats);
    bindTexture(gl, 3, d.opacities, b.u.uOpacities);
    bindTexture(gl, 4, d.slots, b.u.uSlots);
    bindTexture(gl, 5, d.bases[0], b.u.uBasisXyz);
    bindTexture(gl, 6, d.bases[1], b.u.uBasisScale);
    bindTexture(gl, 7, d.bases[2], b.u.uBasisRotation);
    bindTexture(gl, 8, d.bases[3], b.u.uBasisOpacity);
    gl.uniform1i(b.u.uCount, d.count);
    const c = d.bundle.constraints;
    gl.uniform1f(b.u.uScaleMin, c.scale_min);
    gl.uniform1f(b.u.uOpacityMin, c.opacity_min);
    gl.uniform1f(b.u.uOpacityMax, c.opacity_max);
    if (d.quantizedNeutral) {
      const r = d.ranges;
      gl.uniform3fv(b.u.uMeanOrigin, r.means.subarray(0, 3));
      gl.uniform3fv(b.u.uMeanStep, r.means.subarray(3, 6));
      gl.uniform3fv(b.u.uLogScaleOrigin, r.scales.subarray(0, 3));
      gl.uniform3fv(b.u.uLogScaleStep, r.scales.subarray(3, 6));
      gl.uniform2fv(b.u.uOpacityRange, r.opacities);
    }
    gl.drawArrays(gl.TRIANGLES, 0, 3);
    if (skipStatic) gl.drawBuffers(d.animated.buffers);
    gl.bindBufferBase(gl.UNIFORM_BUFFER, COEFF_BINDING, null);

    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    gl.bindVertexArray(null);
    d.animatedSerial++;
    this.wrote = { identity: d.identity, serial: d.animatedSerial };
    this.runs++;
  }

  /** The MLP output read back from the GPU, per group: {xyz, scale, rotation, opacity} (Float32Array). */
  readCoefficients() {
    const d = this.data;
    const all = readFloatTarget(this.gl, d.coefficients);
    const out = {};
    d.bundle.groups.forEach((g, gi) => {
      out[g.name] = all.slice(d.layout.start[gi], d.layout.start[gi] + g.rank);
    });
    return out;
  }

  /** The animated Gaussians read back from the GPU, in bundle order: means [G*3], opacities [G],
   * scales [G*3], quats [G*4]. */
  readBlended() {
    const d = this.data;
    const G = d.count;
    const [mo, sc, q] = [0, 1, 2].map((i) => readFloatTarget(this.gl, d.animated, i));
    const means = new Float32Array(G * 3);
    const opacities = new Float32Array(G);
    const scales = new Float32Array(G * 3);
    const quats = new Float32Array(G * 4);
    for (let i = 0; i < G; i++) {
      const j = d.perm ? d.perm[i] : i; // GPU index i holds bundle Gaussian j
      for (let k = 0; k < 3; k++) {
        means[j * 3 + k] = mo[i * 4 + k];
        scales[j * 3 + k] = sc[i * 4 + k];
      }
      opacities[j] = mo[i * 4 + 3];
      quats.set(q.subarray(i * 4, i * 4 + 4), j * 4);
    }
    return { means, opacities, scales, quats };
  }

  dispose() {
    this.gl.deleteVertexArray(this.vao);
    this.gl.deleteBuffer(this.coeffBuffer);
  }
}
