#version 300 es
#include "common.glsl"
// The splat pass, vertex stage: one screen-space quad per splat rank (back to front). All the
// per-splat work was done once by the projection pass (project.frag.glsl); a corner reads that
// splat's two texels and places itself on the box of the alpha >= 1/255 ellipse along its axes:
// half-axes sqrt(2 ln(255 o)) sigma_i (x1.001 + 0.02 px for rounding). Its varying is the pixel's
// position in the ellipse's frame in units of sigma, so the fragment's exponent is half its squared
// length - an affine function of the pixel, exact under linear interpolation.
precision highp usampler2D;

uniform usampler2D uGeometry;     // projection pass: mean (px), sigma_1, sigma_2 (f32)
uniform usampler2D uAppearance;   // axis (snorm16 x2), opacity (f32, 0 = culled), colour (half x3)
uniform vec2 uViewport;           // width, height (pixels)
uniform int uSplatCount;

flat out vec3 vColor;
flat out float vOpacity;
out vec2 vLocal;

const float FOOTPRINT_SLACK = 1.001;   // relative and absolute (px) room for rounding at the
const float FOOTPRINT_MARGIN = 0.02;   // ellipse's edge, where alpha is 1/255 anyway

void cull() {
  gl_Position = vec4(0.0, 0.0, 2.0, 1.0);  // outside the clip volume
  vColor = vec3(0.0);
  vOpacity = 0.0;
  vLocal = vec2(0.0);
}

void main() {
#if defined(DRAW_INSTANCED)
  // QUADS_PER_INSTANCE quads per instance (4 vertices + 6 indices each, as "indexed")
  int splat = gl_InstanceID * QUADS_PER_INSTANCE + (gl_VertexID >> 2);
  int corner = gl_VertexID & 3;
#elif defined(DRAW_INDEXED)
  int splat = gl_VertexID >> 2;           // index buffer: 4 vertices per quad, 6 indices
  int corner = gl_VertexID & 3;
#else
  int splat = gl_VertexID / 6;            // plain drawArrays of 6 vertices per quad
  int corner = gl_VertexID - splat * 6;
  corner = corner < 3 ? corner : corner - 2;   // 0 1 2 | 1 2 3
#endif
  if (splat >= uSplatCount) { cull(); return; }
  ivec2 t = at(splat, GAUSS_TW);
  uvec4 look = texelFetch(uAppearance, t, 0);
  float opacity = uintBitsToFloat(look.y);
  if (!(opacity >= ALPHA_MIN)) { cull(); return; }
  vec4 geo = uintBitsToFloat(texelFetch(uGeometry, t, 0));
  vec2 v1 = unpackSnorm2x16(look.x);
  vec2 v2 = vec2(-v1.y, v1.x);
  // footprint: 0.5 d^T C^-1 d <= ln(255 o). Coverage and alpha are both taken at the pixel centre,
  // so the ellipse itself bounds the shaded pixels; the margin only absorbs float rounding.
  float reach = sqrt(2.0 * log(opacity / ALPHA_MIN)) * FOOTPRINT_SLACK;
  vec2 half_ = reach + FOOTPRINT_MARGIN / geo.zw;   // half-axes in units of sigma
  vec2 cxy = vec2((corner & 1) == 1 ? 1.0 : -1.0, corner >= 2 ? 1.0 : -1.0) * half_;
  vec2 pix = geo.xy + (cxy.x * geo.z) * v1 + (cxy.y * geo.w) * v2;
  gl_Position = vec4(pix.x / uViewport.x * 2.0 - 1.0, 1.0 - pix.y / uViewport.y * 2.0, 0.0, 1.0);
  vColor = vec3(unpackHalf2x16(look.z), unpackHalf2x16(look.w).x);
  vOpacity = opacity;
  vLocal = cxy;
}
