// The splat pass: one quad per Gaussian in sorted (back-to-front) order, composited with
// premultiplied "over" blending into the RGBA8 canvas. Three draw paths, chosen by a define:
//   "indexed"   drawElements, 4 vertices + 6 indices per quad (shared corners, post-transform cache);
//   "vertex"    drawArrays of 6 vertices per quad (no buffers at all);
//   "instanced" drawArraysInstanced, a 4-vertex strip per instance.
// None uses vertex attributes: everything comes from textures by gl_VertexID / gl_InstanceID.

import { bindTexture, createProgram, loadShader, withDefines } from "./gl.js";
import { SHADER_DEFINES } from "./splat-data.js";

export const DRAW_PATHS = ["indexed", "vertex", "instanced"];

/** The splat programs of a draw path: `get(shQuantized)` compiles (once) the variant that reads
 * float SH (RGB16F) or the 1.1 quantised SH (integer textures decoded in the vertex shader). */
export async function loadSplatProgram(gl, drawPath) {
  if (!DRAW_PATHS.includes(drawPath)) throw new Error(`unknown draw path ${drawPath}`);
  const [vs, fs] = await Promise.all(["splat.vert.glsl", "splat.frag.glsl"].map(loadShader));
  const cache = new Map();
  const get = (shQuantized) => {
    if (!cache.has(shQuantized)) {
      const defines = { ...SHADER_DEFINES, DRAW_INDEXED: drawPath === "indexed", DRAW_INSTANCED: drawPath === "instanced",
        SH_QUANTIZED: shQuantized };
      cache.set(shQuantized, createProgram(gl, withDefines(vs, defines), withDefines(fs, defines),
        `splat (${drawPath}${shQuantized ? ", quantised SH" : ""})`));
    }
    return cache.get(shQuantized);
  };
  get(false);
  return { get };
}

export class SplatRenderer {
  constructor(gl, data, programs, drawPath) {
    this.gl = gl;
    this.data = data;
    this.program = programs.get(data.quantizedNeutral);
    this.drawPath = drawPath;
    this.vao = gl.createVertexArray();
    this.eps2d = 0.3;
    this.near = 0.01;
    this.far = 100.0;
    if (drawPath === "indexed") {
      gl.bindVertexArray(this.vao);
      const G = data.count;
      const idx = new Uint32Array(G * 6);
      for (let i = 0, v = 0, o = 0; i < G; i++, v += 4, o += 6) {
        idx[o] = v;
        idx[o + 1] = v + 1;
        idx[o + 2] = v + 2;
        idx[o + 3] = v + 1;
        idx[o + 4] = v + 3;
        idx[o + 5] = v + 2;
      }
      this.indexBuffer = gl.createBuffer();
      gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.indexBuffer);
      gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, idx, gl.STATIC_DRAW);
      gl.bindVertexArray(null);
    }
  }

  /** Draw the current splats for `view` (camera.view(...)) over an opaque background. */
  draw(view, background) {
    const gl = this.gl;
    const d = this.data;
    const p = this.program;
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    gl.viewport(0, 0, view.width, view.height);
    gl.disable(gl.DEPTH_TEST);
    gl.disable(gl.CULL_FACE);
    gl.clearColor(background[0], background[1], background[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    const count = d.splatCount || 0;
    if (count === 0) return;
    gl.enable(gl.BLEND);
    gl.blendFuncSeparate(gl.ONE, gl.ONE_MINUS_SRC_ALPHA, gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    gl.blendEquation(gl.FUNC_ADD);
    gl.useProgram(p.program);
    gl.bindVertexArray(this.vao);
    bindTexture(gl, 0, d.order, p.u.uOrder);
    bindTexture(gl, 1, d.animated.textures[0], p.u.uMeanOpacity);
    bindTexture(gl, 2, d.animated.textures[1], p.u.uScale);
    bindTexture(gl, 3, d.animated.textures[2], p.u.uQuat);
    if (d.quantizedNeutral) {
      bindTexture(gl, 4, d.shDc, p.u.uSHdc);
      bindTexture(gl, 5, d.shRest, p.u.uSHrest);
      const r = d.ranges;
      gl.uniform3fv(p.u.uShDcOrigin, r.sh_dc.subarray(0, 3));
      gl.uniform3fv(p.u.uShDcStep, r.sh_dc.subarray(3, 6));
      gl.uniform3fv(p.u.uShRestOrigin, r.sh_rest.subarray(0, 9));
      gl.uniform3fv(p.u.uShRestStep, r.sh_rest.subarray(9, 18));
    } else {
      bindTexture(gl, 4, d.sh, p.u.uSH);
    }
    const R = view.R;
    // mat3 uniforms are column-major: pass R transposed
    gl.uniformMatrix3fv(p.u.uRot, false, [R[0][0], R[1][0], R[2][0], R[0][1], R[1][1], R[2][1], R[0][2], R[1][2], R[2][2]]);
    gl.uniform3fv(p.u.uTrans, view.t);
    gl.uniform3fv(p.u.uCamPos, view.eye);
    gl.uniform4f(p.u.uIntrinsics, view.fx, view.fy, view.cx, view.cy);
    gl.uniform2f(p.u.uViewport, view.width, view.height);
    gl.uniform4fv(p.u.uLimits, view.limits);
    gl.uniform1f(p.u.uNear, this.near);
    gl.uniform1f(p.u.uFar, this.far);
    gl.uniform1f(p.u.uEps2d, this.eps2d);
    gl.uniform1i(p.u.uSplatCount, count);
    if (this.drawPath === "indexed") gl.drawElements(gl.TRIANGLES, count * 6, gl.UNSIGNED_INT, 0);
    else if (this.drawPath === "instanced") gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, count);
    else gl.drawArrays(gl.TRIANGLES, 0, count * 6);
    gl.bindVertexArray(null);
    gl.disable(gl.BLEND);
  }

  dispose() {
    this.gl.deleteVertexArray(this.vao);
    if (this.indexBuffer) this.gl.deleteBuffer(this.indexBuffer);
  }
}
