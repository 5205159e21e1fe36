#version 300 es
#include "common.glsl"
// The splat pass, vertex stage: one screen-space triangle or quad per splat rank (back to front).
// All the per-splat work, the box included, was done once by the projection pass
// (project.frag.glsl): a corner reads that splat's two texels and adds up the centre and the
// half-axes a_1, a_2 of the box of the alpha >= 1/255 ellipse (h_i sigma_i along the covariance's
// eigenvectors, h_i = sqrt(2 ln(255 o)) x 1.001 + 0.02 px / sigma_i for rounding). In that box's
// frame (corners at (+-1, +-1), the ellipse the unit circle) a quad is the box itself and a
// triangle the equilateral one around the circle, corners (0, 2) and (+-sqrt 3, -1): 1.3x the
// box's area, half its primitives. The varying is the pixel's position in the ellipse's frame in
// units of sigma ((+-h_1, +-h_2) at the box's corners), so the fragment's exponent is half its
// squared length - an affine function of the pixel, exact under linear interpolation.
precision highp usampler2D;

uniform usampler2D uGeometry;     // projection pass: mean (px), major half-axis a_1 (px), f32
uniform usampler2D uAppearance;   // h_1 h_2 (half x2), opacity (f32, 0 = culled), colour + rho (half x4)
uniform vec2 uViewport;           // width, height (pixels)
uniform int uSplatCount;

flat out vec3 vColor;
flat out float vOpacity;
out vec2 vLocal;

void cull() {
  gl_Position = vec4(0.0, 0.0, 2.0, 1.0);  // outside the clip volume
  vColor = vec3(0.0);
  vOpacity = 0.0;
  vLocal = vec2(0.0);
}

void main() {
#if defined(SHAPE_TRIANGLE)
  // plain drawArrays of 3 vertices per splat, or SPLATS_PER_INSTANCE triangles per instance
#if defined(DRAW_INSTANCED)
  int vertex = gl_InstanceID * (3 * SPLATS_PER_INSTANCE) + gl_VertexID;
#else
  int vertex = gl_VertexID;
#endif
  int splat = vertex / 3;
  int corner = vertex - splat * 3;
#elif defined(DRAW_INSTANCED)
  // SPLATS_PER_INSTANCE quads per instance (4 vertices + 6 indices each, as "indexed")
  int splat = gl_InstanceID * SPLATS_PER_INSTANCE + (gl_VertexID >> 2);
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
  vec2 h = unpackHalf2x16(look.x);
  vec2 bRho = unpackHalf2x16(look.w);   // blue, |a_2| / |a_1|
#if defined(SHAPE_TRIANGLE)
  vec2 side = corner == 0 ? vec2(0.0, 2.0) : vec2(corner == 1 ? 1.7320508 : -1.7320508, -1.0);
#else
  vec2 side = vec2((corner & 1) == 1 ? 1.0 : -1.0, corner >= 2 ? 1.0 : -1.0);
#endif
  vec2 pix = geo.xy + side.x * geo.zw + (side.y * bRho.y) * vec2(-geo.w, geo.z);
  gl_Position = vec4(pix.x / uViewport.x * 2.0 - 1.0, 1.0 - pix.y / uViewport.y * 2.0, 0.0, 1.0);
  vColor = vec3(unpackHalf2x16(look.z), bRho.x);
  vOpacity = opacity;
  vLocal = side * h;
}
