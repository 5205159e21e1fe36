// Small WebGL2 helpers: shader loading (.glsl files by fetch), programs, textures and targets.
//
// Only what iOS Safari 16+ and every WebGL2 device guarantee is used: float and half-float
// textures are sampled with texelFetch (no filtering), outputs are written to integer RGBA32UI
// targets (floatBitsToUint) or the RGBA8 canvas; no float colour buffers, no float blending.

const shaderCache = new Map();
const INCLUDE = /^#include "([\w.-]+)"[ \t]*$/m;

/** A shader source from static/shaders (cached), its `#include "file"` lines replaced by those files
 * (every shader includes common.glsl: precision, the texel index helper `at`, shared constants). */
export async function loadShader(name) {
  if (!shaderCache.has(name)) {
    const url = new URL(`../../shaders/${name}`, import.meta.url);
    shaderCache.set(name, fetch(url).then((r) => {
      if (!r.ok) throw new Error(`could not load shader ${name} (HTTP ${r.status})`);
      return r.text();
    }).then(withIncludes));
  }
  return shaderCache.get(name);
}

async function withIncludes(source) {
  const parts = source.split(INCLUDE); // text, file, text, file, ..., text
  for (let i = 1; i < parts.length; i += 2) parts[i] = await loadShader(parts[i]);
  return parts.join("");
}

/** Insert `#define`s after the #version line of a shader source. */
export function withDefines(source, defines = {}) {
  const lines = Object.entries(defines)
    .filter(([, v]) => v !== false && v !== undefined && v !== null)
    .map(([k, v]) => (v === true ? `#define ${k}` : `#define ${k} ${v}`));
  if (!lines.length) return source;
  const nl = source.indexOf("\n");
  return source.slice(0, nl + 1) + lines.join("\n") + "\n" + source.slice(nl + 1);
}

function compile(gl, type, source, name) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) {
    const log = gl.getShaderInfoLog(shader);
    gl.deleteShader(shader);
    throw new Error(`shader ${name} does not compile: ${log}`);
  }
  return shader;
}

/** A linked program with a uniform-location lookup (`prog.u.name`). */
export function createProgram(gl, vsSource, fsSource, name = "program") {
  const vs = compile(gl, gl.VERTEX_SHADER, vsSource, `${name} (vertex)`);
  const fs = compile(gl, gl.FRAGMENT_SHADER, fsSource, `${name} (fragment)`);
  const program = gl.createProgram();
  gl.attachShader(program, vs);
  gl.attachShader(program, fs);
  gl.linkProgram(program);
  gl.deleteShader(vs);
  gl.deleteShader(fs);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) {
    throw new Error(`program ${name} does not link: ${gl.getProgramInfoLog(program)}`);
  }
  const u = {};
  const n = gl.getProgramParameter(program, gl.ACTIVE_UNIFORMS);
  for (let i = 0; i < n; i++) {
    const info = gl.getActiveUniform(program, i);
    const base = info.name.replace(/\[0\]$/, "");
    u[base] = gl.getUniformLocation(program, info.name);
  }
  return { program, u, name };
}

// internal format -> [format, type, components, bytes per component]
export const FORMATS = {
  R32F: ["RED", "FLOAT", 1],
  RGB32F: ["RGB", "FLOAT", 3],
  RGBA32F: ["RGBA", "FLOAT", 4],
  R16F: ["RED", "HALF_FLOAT", 1],
  RGB16F: ["RGB", "HALF_FLOAT", 3],
  RGBA16F: ["RGBA", "HALF_FLOAT", 4],
  R8UI: ["RED_INTEGER", "UNSIGNED_BYTE", 1],
  RGB8UI: ["RGB_INTEGER", "UNSIGNED_BYTE", 3],
  R16UI: ["RED_INTEGER", "UNSIGNED_SHORT", 1],
  RGB16UI: ["RGB_INTEGER", "UNSIGNED_SHORT", 3],
  R8I: ["RED_INTEGER", "BYTE", 1],
  RGB8I: ["RGB_INTEGER", "BYTE", 3],
  RGBA8I: ["RGBA_INTEGER", "BYTE", 4],
  RGBA32I: ["RGBA_INTEGER", "INT", 4],
  R32UI: ["RED_INTEGER", "UNSIGNED_INT", 1],
  RGBA32UI: ["RGBA_INTEGER", "UNSIGNED_INT", 4],
};

function setNearest(gl, target) {
  gl.texParameteri(target, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
  gl.texParameteri(target, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
  gl.texParameteri(target, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
  gl.texParameteri(target, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
}

/** An immutable-size 2D texture (NEAREST, no mipmaps). */
export function createTexture2D(gl, internal, width, height, data = null) {
  const [format, type, comps] = FORMATS[internal];
  const tex = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_2D, tex);
  setNearest(gl, gl.TEXTURE_2D);
  gl.texStorage2D(gl.TEXTURE_2D, 1, gl[internal], width, height);
  if (data) {
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, width, height, gl[format], gl[type], data);
  }
  return { tex, internal, width, height, comps, target: gl.TEXTURE_2D };
}

/** A 2D-array texture (one layer per basis), NEAREST. */
export function createTexture3D(gl, internal, width, height, depth) {
  const tex = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_2D_ARRAY, tex);
  setNearest(gl, gl.TEXTURE_2D_ARRAY);
  gl.texStorage3D(gl.TEXTURE_2D_ARRAY, 1, gl[internal], width, height, depth);
  return { tex, internal, width, height, depth, comps: FORMATS[internal][2], target: gl.TEXTURE_2D_ARRAY };
}

/**
 * Upload `count` items of `comps` components, laid out row-major `width` items per row, into rows
 * starting at 0 of a texture (layer `layer` of an array texture): full rows in one call, the last
 * partial row in another, so the source array needs no padding or copy.
 */
export function uploadRows(gl, t, data, count, layer = -1) {
  const [format, type, comps] = FORMATS[t.internal];
  const w = t.width;
  const full = Math.floor(count / w);
  const rest = count - full * w;
  gl.bindTexture(t.target, t.tex);
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
  const put = (y, width, height, src) => {
    if (layer >= 0) {
      gl.texSubImage3D(t.target, 0, 0, y, layer, width, height, 1, gl[format], gl[type], src);
    } else {
      gl.texSubImage2D(t.target, 0, 0, y, width, height, gl[format], gl[type], src);
    }
  };
  if (full > 0) put(0, w, full, data.subarray(0, full * w * comps));
  if (rest > 0) put(full, rest, 1, data.subarray(full * w * comps, count * comps));
}

/** A framebuffer with the given textures as colour attachments 0..n-1. */
export function createTarget(gl, textures) {
  const fbo = gl.createFramebuffer();
  gl.bindFramebuffer(gl.FRAMEBUFFER, fbo);
  const buffers = textures.map((t, i) => {
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0 + i, gl.TEXTURE_2D, t.tex, 0);
    return gl.COLOR_ATTACHMENT0 + i;
  });
  gl.drawBuffers(buffers);
  const status = gl.checkFramebufferStatus(gl.FRAMEBUFFER);
  gl.bindFramebuffer(gl.FRAMEBUFFER, null);
  if (status !== gl.FRAMEBUFFER_COMPLETE) throw new Error(`framebuffer incomplete (0x${status.toString(16)})`);
  return { fbo, textures, width: textures[0].width, height: textures[0].height, buffers };
}

/** Bind `tex` to texture unit `unit` and point sampler uniform `loc` at it. */
export function bindTexture(gl, unit, t, loc) {
  gl.activeTexture(gl.TEXTURE0 + unit);
  gl.bindTexture(t.target, t.tex);
  if (loc !== undefined && loc !== null) gl.uniform1i(loc, unit);
}

/** Read an RGBA32UI attachment back as float bits (Float32Array of width*height*4). */
export function readFloatTarget(gl, target, attachment = 0) {
  const { width, height } = target;
  const out = new Uint32Array(width * height * 4);
  gl.bindFramebuffer(gl.READ_FRAMEBUFFER, target.fbo);
  gl.readBuffer(gl.COLOR_ATTACHMENT0 + attachment);
  gl.readPixels(0, 0, width, height, gl.RGBA_INTEGER, gl.UNSIGNED_INT, out);
  gl.bindFramebuffer(gl.READ_FRAMEBUFFER, null);
  return new Float32Array(out.buffer);
}

export function deleteTexture(gl, t) {
  if (t) gl.deleteTexture(t.tex);
}

/** The GPU's (unmasked) renderer name where the browser exposes WEBGL_debug_renderer_info, else null. */
export function unmaskedRenderer(gl) {
  const info = gl.getExtension("WEBGL_debug_renderer_info");
  return info ? String(gl.getParameter(info.UNMASKED_RENDERER_WEBGL)) : null;
}
