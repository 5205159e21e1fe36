#version 300 es
#include "common.glsl"
// The blend pass: one fragment per Gaussian (GAUSS_TW per row). For each group g:
//   A_g = neutral_g + sum_k c_g[k] U_g[k, slot]   (Gaussians without a slot keep the neutral value)
// then the constraints (scale floor, unit quaternion, opacity clamp).
// Bases are RGBA32UI 2D arrays: texel (slot, layer j * T + q) packs 16 int8 values (BASES_INT8) or
// 8 fp16 values of component j for bases 16q.. (8q..), see splat-data.js. Per block of 16 (8)
// bases the coefficients (int8: already multiplied by the per-basis scales) are fetched once and
// shared by the group's components (no local arrays: dynamic indexing of those, or of a uniform
// block, measured 2-3x slower under SwiftShader); each texel adds 16 (8) products with 4 (2) dot products. The
// animated Gaussians go to three RGBA32UI targets as float bits. With uSkipStatic the Gaussians no
// group carries (their animated values are their neutral ones) are left as the last full run wrote
// them: the pass then costs them one slot fetch.
precision highp sampler2D;
precision highp isampler2D;
precision highp usampler2D;
precision highp usampler2DArray;

#ifdef NEUTRAL_QUANTIZED
// .agm 1.1 quantised neutral attributes, decoded here (docs/agm-format.md)
uniform usampler2D uMeans;      // R/RGB 8UI or 16UI: origin + step * q
uniform usampler2D uScales;     // log-scales: exp(origin + step * q)
uniform usampler2D uQuats;      // R32UI smallest-three quaternions
uniform usampler2D uOpacities;  // origin + step * q
uniform vec3 uMeanOrigin;
uniform vec3 uMeanStep;
uniform vec3 uLogScaleOrigin;
uniform vec3 uLogScaleStep;
uniform vec2 uOpacityRange;     // origin, step
#else
uniform sampler2D uMeans;      // RGB32F neutral positions
uniform sampler2D uScales;     // RGB32F neutral scales
uniform sampler2D uQuats;      // RGBA32F neutral quaternions (w x y z)
uniform sampler2D uOpacities;  // R32F neutral opacities
#endif
uniform isampler2D uSlots;     // RGBA32I: slot m of the Gaussian in each group's basis, -1 if none
uniform usampler2D uCoeffs;    // blend coefficients (float bits; int8: times the per-basis scales),
                               // group g from texel uStart[g] / 4
uniform usampler2DArray uBasisXyz;
uniform usampler2DArray uBasisScale;
uniform usampler2DArray uBasisRotation;
uniform usampler2DArray uBasisOpacity;
uniform ivec4 uTexelsPerComp;  // per group: packed texels per component
uniform ivec4 uStart;          // per group: first coefficient (a multiple of 16)
uniform int uCount;
uniform bool uSkipStatic;      // the targets hold this identity's blend: leave uncarried Gaussians
uniform float uScaleMin;
uniform float uOpacityMin;
uniform float uOpacityMax;

layout(location = 0) out uvec4 oMeanOpacity;
layout(location = 1) out uvec4 oScale;
layout(location = 2) out uvec4 oQuat;

vec4 coeff(int texel) { return uintBitsToFloat(texelFetch(uCoeffs, at(texel, VEC_TW), 0)); }

#ifdef BASES_INT8
// the 4 signed bytes of w, lowest first
vec4 bytes4(uint w) {
  vec4 v = vec4(uvec4(w, w >> 8u, w >> 16u, w >> 24u) & 0xFFu);
  return v - 256.0 * step(128.0, v);
}
#define VALUES_PER_TEXEL 16
#else
#define VALUES_PER_TEXEL 8
#endif

// sum over the bases of one packed texel; c0..c3 are the coefficients of its 16 bases (int8),
// c0, c1 of its 8 bases (fp16)
float texelDot(uvec4 w, vec4 c0, vec4 c1, vec4 c2, vec4 c3) {
#ifdef BASES_INT8
  return dot(c0, bytes4(w.x)) + dot(c1, bytes4(w.y)) + dot(c2, bytes4(w.z)) + dot(c3, bytes4(w.w));
#else
  return dot(c0, vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y))) + dot(c1, vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w)));
#endif
}

// sum_k c[k] U[k, slot, 0..dim-1]: one pass over the group's coefficient blocks, each block's
// coefficients fetched once and shared by the dim components (no arrays: no dynamic indexing)
vec4 blendGroup(usampler2DArray basis, int slot, int dim, int perComp, int start) {
  vec4 acc = vec4(0.0);
  ivec2 xy = at(slot, GAUSS_TW);
  int t = start >> 2;
  for (int q = 0; q < perComp; q++) {
    vec4 c0 = coeff(t);
    vec4 c1 = coeff(t + 1);
#ifdef BASES_INT8
    vec4 c2 = coeff(t + 2);
    vec4 c3 = coeff(t + 3);
    t += 4;
#else
    vec4 c2 = vec4(0.0);
    vec4 c3 = vec4(0.0);
    t += 2;
#endif
    acc.x += texelDot(texelFetch(basis, ivec3(xy, q), 0), c0, c1, c2, c3);
    if (dim > 1) {
      acc.y += texelDot(texelFetch(basis, ivec3(xy, perComp + q), 0), c0, c1, c2, c3);
      acc.z += texelDot(texelFetch(basis, ivec3(xy, 2 * perComp + q), 0), c0, c1, c2, c3);
    }
    if (dim > 3) acc.w += texelDot(texelFetch(basis, ivec3(xy, 3 * perComp + q), 0), c0, c1, c2, c3);
  }
  return acc;
}

#ifdef NEUTRAL_QUANTIZED
// smallest-three: bits 30-31 the left-out (largest, >= 0) component, three 10-bit fields of the
// others in w x y z order, each u / 1023 * 2r - r with r = 1/sqrt(2)
vec4 decodeQuat(uint w) {
  const float R = 0.7071067811865476;
  vec3 a = vec3(uvec3(w >> 20u, w >> 10u, w) & 1023u) / 1023.0 * (2.0 * R) - R;
  float big = sqrt(max(0.0, 1.0 - dot(a, a)));
  uint i = w >> 30u;
  if (i == 0u) return vec4(big, a);
  if (i == 1u) return vec4(a.x, big, a.yz);
  if (i == 2u) return vec4(a.xy, big, a.z);
  return vec4(a, big);
}
#endif

void main() {
  ivec2 px = ivec2(gl_FragCoord.xy);
  int i = px.y * GAUSS_TW + px.x;
  if (i >= uCount) {
    oMeanOpacity = uvec4(0u);
    oScale = uvec4(0u);
    oQuat = uvec4(0u);
    return;
  }
  ivec4 slot = texelFetch(uSlots, px, 0);
  if (uSkipStatic && all(lessThan(slot, ivec4(0)))) discard;
#ifdef NEUTRAL_QUANTIZED
  vec3 mean = uMeanOrigin + uMeanStep * vec3(texelFetch(uMeans, px, 0).xyz);
  vec3 scale = exp(uLogScaleOrigin + uLogScaleStep * vec3(texelFetch(uScales, px, 0).xyz));
  vec4 quat = decodeQuat(texelFetch(uQuats, px, 0).x);
  float opacity = uOpacityRange.x + uOpacityRange.y * float(texelFetch(uOpacities, px, 0).x);
#else
  vec3 mean = texelFetch(uMeans, px, 0).xyz;
  vec3 scale = texelFetch(uScales, px, 0).xyz;
  vec4 quat = texelFetch(uQuats, px, 0);
  float opacity = texelFetch(uOpacities, px, 0).x;
#endif
  if (slot.x >= 0) mean += blendGroup(uBasisXyz, slot.x, 3, uTexelsPerComp.x, uStart.x).xyz;
  if (slot.y >= 0) scale += blendGroup(uBasisScale, slot.y, 3, uTexelsPerComp.y, uStart.y).xyz;
  if (slot.z >= 0) quat += blendGroup(uBasisRotation, slot.z, 4, uTexelsPerComp.z, uStart.z);
  if (slot.w >= 0) opacity += blendGroup(uBasisOpacity, slot.w, 1, uTexelsPerComp.w, uStart.w).x;
  scale = max(scale, vec3(uScaleMin));
  quat = quat / max(length(quat), QUAT_NORM_EPS);
  opacity = clamp(opacity, uOpacityMin, uOpacityMax);
  oMeanOpacity = floatBitsToUint(vec4(mean, opacity));
  oScale = floatBitsToUint(vec4(scale, 0.0));
  oQuat = floatBitsToUint(quat);
}
