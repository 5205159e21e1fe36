// The splat rendering: a projection pass, then the splat pass.
//
// The projection pass (project.frag.glsl) does each splat's per-frame work once - camera transform,
// EWA covariance, culling, eigen-decomposition, SH colour - one fragment per splat rank (the sorted
// order), into two RGBA32UI texels per splat; it runs only when the camera, the animated Gaussians
// (data.animatedSerial), the order (data.orderSerial) or the render options changed. The splat pass
// then draws one primitive per rank, each corner reading those two texels, composited with
// premultiplied "over" blending into the RGBA8 canvas.
//
// Two shapes (splat.vert.glsl), both covering every pixel of the alpha >= 1/255 ellipse, so they
// draw the same image:
//   "quad"      the ellipse's box: two triangles, the fewest fragments;
//   "triangle"  the equilateral triangle around the ellipse: one triangle, 1.3x the fragments of the
//               box. A CPU rasteriser pays per primitive more than per fragment (SwiftShader, 235K
//               Gaussians at 780x940: per-splat time 44 -> 26 ms, full frame 208 -> 172 ms), a
//               phone's GPU the other way round;
//   "auto"      (the default) "triangle" where the WebGL renderer is a CPU rasteriser (SwiftShader,
//               llvmpipe, ...), "quad" elsewhere.
// Three draw paths, chosen by a define:
//   "indexed"   quads: drawElements, 4 vertices + 6 indices per quad (shared corners, post-transform
//               cache); triangles share no corner: drawArrays of 3 vertices per triangle, as "vertex";
//   "vertex"    drawArrays of 6 vertices per quad or 3 per triangle (no buffers at all);
//   "instanced" SPLATS_PER_INSTANCE splats per instance (quads: drawElementsInstanced with the same
//               index pattern; triangles: drawArraysInstanced): one instance per splat costs ~12 us
//               each under SwiftShader (more than the splat's own work) and leaves most of a phone
//               GPU's vertex wavefront idle.

/** Splats per instance of the "instanced" path. */
export const SPLATS_PER_INSTANCE = 64;
// None uses vertex attributes: everything comes from textures by gl_VertexID / gl_InstanceID.

import { bindTexture, createProgram, loadShader, unmaskedRenderer, withDefines } from "./gl.js";
import { SHADER_DEFINES } from "./splat-data.js";

export const DRAW_PATHS = ["indexed", "vertex", "instanced"];
export const SPLAT_SHAPES = ["auto", "triangle", "quad"];

/** Renderer strings of CPU rasterisers (WebGL without a GPU). */
const CPU_RASTERISER = /swiftshader|llvmpipe|softpipe|software|basic render/i;

/** "triangle" or "quad" for `shape` ("auto": triangles on a CPU rasteriser, quads on a GPU). */
export function resolveShape(gl, shape = "auto") {
  if (!SPLAT_SHAPES.includes(shape)) throw new Error(`unknown splat shape ${shape} (${SPLAT_SHAPES.join(", ")})`);
  if (shape !== "auto") return shape;
  return CPU_RASTERISER.test(unmaskedRenderer(gl) ?? String(gl.getParameter(gl.RENDERER))) ? "triangle" : "quad";
}

/** The programs of a draw path and shape ("triangle" or "quad"): `projection(sh)` (sh: "float" SH,
 * or the 1.1 quantised SH decoded in the pass from one packed texel, "packed", or two, "packed16";
 * see splat-data.js packSH), `splat` and `counting()` (the splat pass writing fragment counts;
 * benchmarks), each compiled once, when first asked for. */
export async function loadSplatProgram(gl, drawPath, shape) {
  if (!DRAW_PATHS.includes(drawPath)) throw new Error(`unknown draw path ${drawPath}`);
  if (shape !== "triangle" && shape !== "quad") throw new Error(`unknown splat shape ${shape}`);
  const names = ["fullscreen.vert.glsl", "project.frag.glsl", "splat.vert.glsl", "splat.frag.glsl"];
  const [fullscreen, project, vs, fs] = await Promise.all(names.map(loadShader));
  const cache = new Map();
  const once = (key, make) => {
    if (!cache.has(key)) cache.set(key, make());
    return cache.get(key);
  };
  const drawDefines = { ...SHADER_DEFINES, DRAW_INDEXED: drawPath === "indexed", DRAW_INSTANCED: drawPath === "instanced",
    SHAPE_TRIANGLE: shape === "triangle", SPLATS_PER_INSTANCE };
  const splat = (count) => createProgram(gl, withDefines(vs, drawDefines),
    withDefines(fs, { FRAGMENT_COUNT: count }), `splat (${drawPath}, ${shape}${count ? ", fragment count" : ""})`);
  const programs = {
    projection: (sh) => once(`projection:${sh}`, () => createProgram(gl, withDefines(fullscreen, SHADER_DEFINES),
      withDefines(project, { ...SHADER_DEFINES, SH_QUANTIZED: sh !== "float", SH_REST_16: sh === "packed16" }),
      `projection${sh !== "float" ? ` (quantised SH, ${sh})` : ""}`)),
    splat: once("splat", () => splat(false)),
    counting: () => once("counting", () => splat(true)),
  };
  programs.projection("float");
  return programs;
}

/** What the projection pass depends on, as a string (equal strings: the projected splats are current). */
function projectionKey(view, data, options) {
  return [view.width, view.height, view.fx, view.fy, view.cx, view.cy, ...view.R.flat(), ...view.t, ...view.eye,
    ...view.limits, data.animatedSerial, data.orderSerial, data.splatCount, options.eps2d, options.near,
    options.far].join(",");
}

export class SplatRenderer {
  constructor(gl, data, programs, drawPath, shape) {
    this.gl = gl;
    this.data = data;
    this.programs = programs;
    this.program = programs.splat;
    this.drawPath = drawPath;
    this.shape = shape;
    this.vao = gl.createVertexArray();
    this.eps2d = 0.3;
    this.near = 0.01;
    this.far = 100.0;
    this.projectedFor = "";
    this.projections = 0;
    if (shape === "quad" && drawPath !== "vertex") {
      gl.bindVertexArray(this.vao);
      this.indexBuffer = gl.createBuffer();
      gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.indexBuffer);
      gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, quadIndices(drawPath === "indexed" ? data.count : SPLATS_PER_INSTANCE),
        gl.STATIC_DRAW);
      gl.bindVertexArray(null);
    }
  }

  /** Run the projection pass for `view` unless its inputs are unchanged (or `force`); true if it ran. */
  project(view, force = false) {
    const d = this.data;
    const key = projectionKey(view, d, this);
    if (!force && key === this.projectedFor) return false;
    this.projectedFor = key;
    const count = d.splatCount || 0;
    if (count === 0) return false;
    const gl = this.gl;
    const p = this.programs.projection(!d.quantizedNeutral ? "float" : d.shPacked2 ? "packed16" : "packed");
    const target = d.projected;
    const scissor = gl.isEnabled(gl.SCISSOR_TEST);
    gl.disable(gl.SCISSOR_TEST);
    gl.disable(gl.BLEND);
    gl.bindFramebuffer(gl.FRAMEBUFFER, target.fbo);
    gl.viewport(0, 0, target.width, Math.ceil(count / target.width));
    gl.useProgram(p.program);
    gl.bindVertexArray(this.vao);
    bindTexture(gl, 0, d.order, p.u.uOrder);
    bindTexture(gl, 1, d.animated.textures[0], p.u.uMeanOpacity);
    bindTexture(gl, 2, d.animated.textures[1], p.u.uScale);
    bindTexture(gl, 3, d.animated.textures[2], p.u.uQuat);
    if (d.quantizedNeutral) {
      bindTexture(gl, 4, d.shPacked, p.u.uSHpacked);
      if (d.shPacked2) bindTexture(gl, 5, d.shPacked2, p.u.uSHpacked2);
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
    gl.uniform4fv(p.u.uLimits, view.limits);
    gl.uniform1f(p.u.uNear, this.near);
    gl.uniform1f(p.u.uFar, this.far);
    gl.uniform1f(p.u.uEps2d, this.eps2d);
    gl.uniform1i(p.u.uSplatCount, count);
    gl.drawArrays(gl.TRIANGLES, 0, 3);
    gl.bindVertexArray(null);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    if (scissor) gl.enable(gl.SCISSOR_TEST);
    this.projections++;
    return true;
  }

  /** Draw the current splats for `view` (camera.view(...)) over an opaque background, projecting
   * them first if needed. */
  draw(view, background) {
    const gl = this.gl;
    this.project(view);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    gl.viewport(0, 0, view.width, view.height);
    gl.disable(gl.DEPTH_TEST);
    gl.disable(gl.CULL_FACE);
    gl.clearColor(background[0], background[1], background[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.enable(gl.BLEND);
    gl.blendFuncSeparate(gl.ONE, gl.ONE_MINUS_SRC_ALPHA, gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    gl.blendEquation(gl.FUNC_ADD);
    this.drawSplats(this.program, view);
    gl.disable(gl.BLEND);
  }

  /** The splat pass's triangles or quads with program `p` into the bound framebuffer. */
  drawSplats(p, view) {
    const gl = this.gl;
    const d = this.data;
    const count = d.splatCount || 0;
    if (count === 0) return;
    gl.useProgram(p.program);
    gl.bindVertexArray(this.vao);
    bindTexture(gl, 0, d.projected.textures[0], p.u.uGeometry);
    bindTexture(gl, 1, d.projected.textures[1], p.u.uAppearance);
    gl.uniform2f(p.u.uViewport, view.width, view.height);
    gl.uniform1i(p.u.uSplatCount, count);
    const instances = Math.ceil(count / SPLATS_PER_INSTANCE);
    if (this.shape === "triangle") {
      if (this.drawPath === "instanced") gl.drawArraysInstanced(gl.TRIANGLES, 0, SPLATS_PER_INSTANCE * 3, instances);
      else gl.drawArrays(gl.TRIANGLES, 0, count * 3);
    } else if (this.drawPath === "indexed") gl.drawElements(gl.TRIANGLES, count * 6, gl.UNSIGNED_INT, 0);
    else if (this.drawPath === "instanced") {
      gl.drawElementsInstanced(gl.TRIANGLES, SPLATS_PER_INSTANCE * 6, gl.UNSIGNED_INT, 0, instances);
    } else gl.drawArrays(gl.TRIANGLES, 0, count * 6);
    gl.bindVertexArray(null);
  }

  /**
   * Fragments of one splat pass for `view` (benchmarks): `shaded` (rasterised, i.e. fragment shader
   * runs) and `kept` (alpha >= 1/255), counted with additive float blending into an RGBA32F target.
   * Needs EXT_color_buffer_float and EXT_float_blend (desktop browsers, SwiftShader); null without.
   */
  countFragments(view) {
    const gl = this.gl;
    if (!gl.getExtension("EXT_color_buffer_float") || !gl.getExtension("EXT_float_blend")) return null;
    this.project(view);
    const { width, height } = view;
    const tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, tex);
    gl.texStorage2D(gl.TEXTURE_2D, 1, gl.RGBA32F, width, height);
    const fbo = gl.createFramebuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, fbo);
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, tex, 0);
    gl.viewport(0, 0, width, height);
    gl.clearColor(0, 0, 0, 0);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.ONE, gl.ONE);
    gl.blendEquation(gl.FUNC_ADD);
    this.drawSplats(this.programs.counting(), view);
    gl.disable(gl.BLEND);
    const px = new Float32Array(width * height * 4);
    gl.readPixels(0, 0, width, height, gl.RGBA, gl.FLOAT, px);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    gl.deleteFramebuffer(fbo);
    gl.deleteTexture(tex);
    let shaded = 0;
    let kept = 0;
    for (let i = 0; i < px.length; i += 4) {
      shaded += px[i];
      kept += px[i + 1];
    }
    return { shaded, kept, pixels: width * height };
  }

  dispose() {
    this.gl.deleteVertexArray(this.vao);
    if (this.indexBuffer) this.gl.deleteBuffer(this.indexBuffer);
  }
}

/** Indices of `count` quads of 4 vertices each, as two triangles (0 1 2, 1 3 2). */
function quadIndices(count) {
  const idx = new Uint32Array(count * 6);
  for (let i = 0, v = 0, o = 0; i < count; i++, v += 4, o += 6) {
    idx[o] = v;
    idx[o + 1] = v + 1;
    idx[o + 2] = v + 2;
    idx[o + 3] = v + 1;
    idx[o + 4] = v + 3;
    idx[o + 5] = v + 2;
  }
  return idx;
}
