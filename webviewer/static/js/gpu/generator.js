// The generator passes, all in fragment shaders: the coefficient MLP layer by layer, (int8 only)
// the per-basis scales folded into the coefficients, then one blend pass over every Gaussian.
// Run only when the parameters or the identity change; the splat pass then reads the animated
// Gaussians from the blend pass's targets.

import { bindTexture, createProgram, loadShader, readFloatTarget, withDefines } from "./gl.js";
import { SHADER_DEFINES } from "./splat-data.js";

export async function loadGeneratorSources() {
  const names = ["fullscreen.vert.glsl", "mlp.frag.glsl", "coef_scale.frag.glsl", "blend.frag.glsl"];
  const [vs, mlp, scale, blend] = await Promise.all(names.map(loadShader));
  return { vs, mlp, scale, blend, cache: new Map() };
}

/** Programs for a bundle (the blend pass is specialised on the quantisation of the bases and of the
 * neutral attributes). */
function programsFor(gl, sources, quant, quantizedNeutral) {
  const make = (fs, name, extra = {}) => {
    const defines = { ...SHADER_DEFINES, ...extra };
    return createProgram(gl, withDefines(sources.vs, defines), withDefines(fs, defines), name);
  };
  const key = `blend:${quant}:${quantizedNeutral}`;
  if (!sources.cache.has("mlp")) {
    sources.cache.set("mlp", make(sources.mlp, "mlp"));
    sources.cache.set("mlp:int8", make(sources.mlp, "mlp (int8 weights)", { WEIGHTS_INT8: true }));
    sources.cache.set("scale", make(sources.scale, "coefficient scales"));
  }
  if (!sources.cache.has(key)) {
    sources.cache.set(key, make(sources.blend, `blend (${quant}${quantizedNeutral ? ", quantised neutral" : ""})`,
      { BASES_INT8: quant === "int8", NEUTRAL_QUANTIZED: quantizedNeutral }));
  }
  return { mlp: sources.cache.get("mlp"), mlpInt8: sources.cache.get("mlp:int8"), scale: sources.cache.get("scale"),
    blend: sources.cache.get(key) };
}

export class Generator {
  constructor(gl, data, sources) {
    this.gl = gl;
    this.data = data;
    this.programs = programsFor(gl, sources, data.quant, data.quantizedNeutral);
    this.vao = gl.createVertexArray();
    this.runs = 0;
    this.wrote = null; // {identity, serial} of this generator's last blend into the animated targets
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
    // (3) the blend pass, one fragment per Gaussian
    const b = this.programs.blend;
    gl.useProgram(b.program);
    gl.bindFramebuffer(gl.FRAMEBUFFER, d.animated.fbo);
    gl.viewport(0, 0, d.animated.width, d.animated.height);
    bindTexture(gl, 0, d.means, b.u.uMeans);
    bindTexture(gl, 1, d.scales, b.u.uScales);
    bindTexture(gl, 2, d.quats, b.u.uQuats);
    bindTexture(gl, 3, d.opacities, b.u.uOpacities);
    bindTexture(gl, 4, d.slots, b.u.uSlots);
    bindTexture(gl, 5, d.blendCoefficients.textures[0], b.u.uCoeffs);
    bindTexture(gl, 6, d.bases[0], b.u.uBasisXyz);
    bindTexture(gl, 7, d.bases[1], b.u.uBasisScale);
    bindTexture(gl, 8, d.bases[2], b.u.uBasisRotation);
    bindTexture(gl, 9, d.bases[3], b.u.uBasisOpacity);
    gl.uniform4iv(b.u.uTexelsPerComp, d.basisTexels);
    gl.uniform4iv(b.u.uStart, d.layout.start);
    gl.uniform1i(b.u.uCount, d.count);
    // Gaussians no group carries keep their neutral values: only a full run writes them (after the
    // identity changed, or when something else - the bench page's baseline - wrote the targets)
    const w = this.wrote;
    gl.uniform1i(b.u.uSkipStatic, w && w.identity === d.identity && w.serial === d.animatedSerial ? 1 : 0);
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

  /** The animated Gaussians read back from the GPU: means [G*3], opacities [G], scales [G*3], quats [G*4]. */
  readBlended() {
    const d = this.data;
    const G = d.count;
    const [mo, sc, q] = [0, 1, 2].map((i) => readFloatTarget(this.gl, d.animated, i));
    const means = new Float32Array(G * 3);
    const opacities = new Float32Array(G);
    const scales = new Float32Array(G * 3);
    for (let i = 0; i < G; i++) {
      means[i * 3] = mo[i * 4];
      means[i * 3 + 1] = mo[i * 4 + 1];
      means[i * 3 + 2] = mo[i * 4 + 2];
      opacities[i] = mo[i * 4 + 3];
      scales[i * 3] = sc[i * 4];
      scales[i * 3 + 1] = sc[i * 4 + 1];
      scales[i * 3 + 2] = sc[i * 4 + 2];
    }
    return { means, opacities, scales, quats: q.slice(0, G * 4) };
  }

  dispose() {
    this.gl.deleteVertexArray(this.vao);
  }
}
