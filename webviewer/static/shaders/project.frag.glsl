#version 300 es
#include "common.glsl"
// The projection pass (the splats' "generator pass"): one fragment per splat RANK (GAUSS_TW per
// row, in the sorter's back-to-front order), run only when the camera, the animated Gaussians or
// the order changed. It does each splat's whole per-frame job once - the same conventions as
// agora_core/render/rasterizer.py: OpenCV pinhole camera, EWA covariance with the Jacobian clipped
// to a frustum 1.3x the image, a 0.3 px^2 dilation with the opacity compensation
// sqrt(det / det_dilated), culling outside [near, far] or under 1/255 opacity, SH degree-1 colour
// from the live camera + 0.5, clamped at 0 - and the quad: the box of the alpha >= 1/255 ellipse
// along the covariance's eigenvectors, half-axes h_i sigma_i with h_i = sqrt(2 ln(255 o)) x 1.001
// + 0.02 px / sigma_i (room for rounding; see splat.vert.glsl). It writes two RGBA32UI texels the
// splat pass's four quad corners read, so that a corner does no more than add them up:
//   texel 0: mean (x, y in pixels), a_1 = h_1 sigma_1 v_1 (the major half-axis, pixels), f32;
//   texel 1: h_1, h_2 (packHalf2x16), opacity (f32; 0 = culled), colour (packHalf2x16: r g, then
//            b and rho = |a_2| / |a_1|, the minor half-axis a_2 being rho times a_1 turned by 90
//            degrees).
precision highp sampler2D;
precision highp usampler2D;

uniform usampler2D uOrder;        // R32UI: splat rank -> Gaussian index
uniform usampler2D uMeanOpacity;  // animated Gaussians from the blend pass (float bits)
uniform usampler2D uScale;
uniform usampler2D uQuat;
#ifdef SH_QUANTIZED
uniform usampler2D uSHpacked;     // .agm 1.1: DC and bands 1-3 as stored, packed per Gaussian (GAUSS_TW
#ifdef SH_REST_16                 // per row; splat-data.js packSH)
uniform usampler2D uSHpacked2;    // 16-bit bands: bands r5..r8
#endif
uniform vec3 uShDcOrigin;
uniform vec3 uShDcStep;
uniform vec3 uShRestOrigin[3];
uniform vec3 uShRestStep[3];
#else
uniform sampler2D uSH;            // RGB16F: SH_PER_ROW Gaussians x 4 coefficients per row
#endif
uniform mat3 uRot;                // world -> camera rotation (rows: right, down, forward)
uniform vec3 uTrans;              // world -> camera translation
uniform vec3 uCamPos;             // camera centre (world)
uniform vec4 uIntrinsics;         // fx, fy, cx, cy (pixels)
uniform vec4 uLimits;             // Jacobian clip of X/Z (lo, hi) and Y/Z (lo, hi)
uniform float uNear;
uniform float uFar;
uniform float uEps2d;             // dilation (px^2)
uniform int uSplatCount;

const float FOOTPRINT_SLACK = 1.001;   // relative and absolute (px) room for rounding at the
const float FOOTPRINT_MARGIN = 0.02;   // ellipse's edge, where alpha is 1/255 anyway

layout(location = 0) out uvec4 oGeometry;
layout(location = 1) out uvec4 oAppearance;

void cull() {
  oGeometry = uvec4(0u);
  oAppearance = uvec4(0u);  // opacity 0: the splat pass drops the quad
}

mat3 quatToMat(vec4 q) {
  q = q / max(length(q), QUAT_NORM_EPS);
  float w = q.x, x = q.y, y = q.z, z = q.w;
  // columns
  return mat3(
    1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y + w * z), 2.0 * (x * z - w * y),
    2.0 * (x * y - w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z + w * x),
    2.0 * (x * z + w * y), 2.0 * (y * z - w * x), 1.0 - 2.0 * (x * x + y * y));
}

/** SH degree-1 colour of Gaussian `id` seen along unit direction `dir`, + 0.5, clamped at 0. */
vec3 shColour(int id, ivec2 g, vec3 dir) {
#ifdef SH_QUANTIZED
  uvec4 w = texelFetch(uSHpacked, g, 0);
  vec3 sh0 = uShDcOrigin + uShDcStep * vec3(uvec3(w.x, w.x >> 16u, w.y) & 0xFFFFu);
#ifdef SH_REST_16
  uvec4 w2 = texelFetch(uSHpacked2, g, 0);
  uvec3 q1 = uvec3(w.y >> 16u, w.z, w.z >> 16u) & 0xFFFFu;
  uvec3 q2 = uvec3(w.w, w.w >> 16u, w2.x) & 0xFFFFu;
  uvec3 q3 = uvec3(w2.x >> 16u, w2.y, w2.y >> 16u) & 0xFFFFu;
#else
  uvec3 q1 = uvec3(w.y >> 16u, w.y >> 24u, w.z) & 0xFFu;
  uvec3 q2 = uvec3(w.z >> 8u, w.z >> 16u, w.z >> 24u) & 0xFFu;
  uvec3 q3 = uvec3(w.w, w.w >> 8u, w.w >> 16u) & 0xFFu;
#endif
  vec3 sh1 = uShRestOrigin[0] + uShRestStep[0] * vec3(q1);
  vec3 sh2 = uShRestOrigin[1] + uShRestStep[1] * vec3(q2);
  vec3 sh3 = uShRestOrigin[2] + uShRestStep[2] * vec3(q3);
#else
  ivec2 sc = ivec2((id % SH_PER_ROW) * 4, id / SH_PER_ROW);
  vec3 sh0 = texelFetch(uSH, sc, 0).rgb;
  vec3 sh1 = texelFetch(uSH, sc + ivec2(1, 0), 0).rgb;
  vec3 sh2 = texelFetch(uSH, sc + ivec2(2, 0), 0).rgb;
  vec3 sh3 = texelFetch(uSH, sc + ivec2(3, 0), 0).rgb;
#endif
  vec3 rgb = SH_C0 * sh0 - SH_C1 * dir.y * sh1 + SH_C1 * dir.z * sh2 - SH_C1 * dir.x * sh3;
  return max(rgb + 0.5, vec3(0.0));
}

void main() {
  int splat = int(gl_FragCoord.y) * GAUSS_TW + int(gl_FragCoord.x);
  if (splat >= uSplatCount) { cull(); return; }
  int id = int(texelFetch(uOrder, at(splat, GAUSS_TW), 0).x);
  ivec2 g = at(id, GAUSS_TW);
  vec4 mo = uintBitsToFloat(texelFetch(uMeanOpacity, g, 0));
  vec3 pc = uRot * mo.xyz + uTrans;
  if (!(pc.z >= uNear && pc.z <= uFar)) { cull(); return; }
  vec3 s = uintBitsToFloat(texelFetch(uScale, g, 0).xyz);
  vec4 q = uintBitsToFloat(texelFetch(uQuat, g, 0));

  float rz = 1.0 / pc.z;
  float fx = uIntrinsics.x, fy = uIntrinsics.y;
  vec2 mean2d = vec2(fx * pc.x * rz + uIntrinsics.z, fy * pc.y * rz + uIntrinsics.w);
  float tx = min(max(pc.x * rz, uLimits.x), uLimits.y);
  float ty = min(max(pc.y * rz, uLimits.z), uLimits.w);
  // J (2x3, as the top of a 3x3, columns)
  mat3 J = mat3(fx * rz, 0.0, 0.0,
                0.0, fy * rz, 0.0,
                -fx * tx * rz, -fy * ty * rz, 0.0);
  mat3 M = quatToMat(q) * mat3(s.x, 0.0, 0.0, 0.0, s.y, 0.0, 0.0, 0.0, s.z);
  mat3 T = J * (uRot * M);
  mat3 cov = T * transpose(T);
  float c00 = cov[0][0];
  float c01 = cov[1][0];
  float c11 = cov[1][1];
  float detOrig = c00 * c11 - c01 * c01;
  c00 += uEps2d;
  c11 += uEps2d;
  float det = c00 * c11 - c01 * c01;
  if (!(det > 0.0)) { cull(); return; }
  float compensation = sqrt(max(detOrig / det, 1.1754944e-38));
  float opacity = mo.w * compensation;
  if (!(opacity >= ALPHA_MIN)) { cull(); return; }

  // the covariance's eigen-decomposition: lambda_1 >= lambda_2 along v1, v1 rotated by 90 degrees
  float mid = 0.5 * (c00 + c11);
  float rad = sqrt(max(0.25 * (c00 - c11) * (c00 - c11) + c01 * c01, 0.0));
  float l1 = mid + rad;
  float l2 = det / l1;                    // = mid - rad without the cancellation of thin ellipses
  vec2 v1 = abs(c01) > 1e-12 * mid ? normalize(vec2(c01, l1 - c00)) : (c00 >= c11 ? vec2(1.0, 0.0) : vec2(0.0, 1.0));

  vec2 sigma = sqrt(vec2(l1, l2));
  // footprint: 0.5 d^T C^-1 d <= ln(255 o); coverage and alpha are both taken at the pixel centre,
  // so the ellipse itself bounds the shaded pixels: the slack only absorbs float rounding
  vec2 h = sqrt(2.0 * log(opacity / ALPHA_MIN)) * FOOTPRINT_SLACK + FOOTPRINT_MARGIN / sigma;
  vec2 a1 = (h.x * sigma.x) * v1;
  float rho = (h.y * sigma.y) / (h.x * sigma.x);

  vec3 dir = mo.xyz - uCamPos;
  dir = dir / max(length(dir), 1e-12);
  vec3 rgb = shColour(id, g, dir);
  oGeometry = uvec4(floatBitsToUint(mean2d), floatBitsToUint(a1));
  oAppearance = uvec4(packHalf2x16(h), floatBitsToUint(opacity), packHalf2x16(rgb.rg), packHalf2x16(vec2(rgb.b, rho)));
}
