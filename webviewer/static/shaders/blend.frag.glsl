#version 300 es
#include "common.glsl"
// The blend pass: one fragment per Gaussian (GAUSS_TW per row, GPU order). For each group g:
//   A_g = neutral_g + sum_k c_g[k] U_g[k, slot]   (Gaussians without a slot keep the neutral value)
// then the constraints (scale floor, unit quaternion, opacity clamp).
// Bases are RGBA32UI 2D arrays: texel (slot, layer j * T + q) packs 16 int8 values (BASES_INT8) or
// 8 fp16 values of component j for bases 16q.. (8q..), see splat-data.js; each texel adds 16 (8)
// products with 4 (2) dot products, skipping the words of a group's last block past its rank.
// The coefficients (int8: already multiplied by the per-basis scales) are a uniform block: the MLP
// output copied into a buffer on the GPU (generator.js). The bundle's layout is compiled in
// (COEFF_TEXELS; per group START_* its first coefficient texel, BLOCKS_* = T its texels per
// component, RANK_* its rank, CARRIES_* whether its basis carries any Gaussian) and each group's
// blocks are unrolled by the preprocessor, so every coefficient is read at a constant index (no
// fetch per Gaussian; dynamic indexing - of local arrays or a uniform block - measured 2-3x slower
// under SwiftShader). Groups of more than UNROLLED_BLOCKS texels per component loop instead.
// The animated Gaussians go to three RGBA32UI targets as float bits. SKIP_STATIC (the targets hold
// this identity's blend): only the first rows, where the GPU order puts the carried Gaussians, are
// drawn; the uncarried ones there are discarded, and only the targets some group moves are written
// (the generator turns the other draw buffers off).
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
uniform usampler2DArray uBasisXyz;
uniform usampler2DArray uBasisScale;
uniform usampler2DArray uBasisRotation;
uniform usampler2DArray uBasisOpacity;
uniform int uCount;
uniform float uScaleMin;
uniform float uOpacityMin;
uniform float uOpacityMax;

// the blend coefficients, 4 per texel (float bits as floats), group g from texel START_g
layout(std140) uniform Coefficients {
  vec4 uC[COEFF_TEXELS];
};

layout(location = 0) out uvec4 oMeanOpacity;
layout(location = 1) out uvec4 oScale;
layout(location = 2) out uvec4 oQuat;

#define UNROLLED_BLOCKS 16
// coefficient texel i (a constant expression; clamped so that the blocks an unrolled group does
// not have still compile)
#define C(i) uC[min((i), COEFF_TEXELS - 1)]

#ifdef BASES_INT8
// the 4 signed bytes of w, lowest first
vec4 bytes4(uint w) {
  vec4 v = vec4(uvec4(w, w >> 8u, w >> 16u, w >> 24u) & 0xFFu);
  return v - 256.0 * step(128.0, v);
}
// block q (bases 16q..16q+15) of a group of rank K from coefficient texel S: the words with bases < K
#define BLOCK_DOT(U, S, q, K) (dot(C((S) + 4 * (q)), bytes4((U).x)) \
  + (16 * (q) + 4 < (K) ? dot(C((S) + 4 * (q) + 1), bytes4((U).y)) : 0.0) \
  + (16 * (q) + 8 < (K) ? dot(C((S) + 4 * (q) + 2), bytes4((U).z)) : 0.0) \
  + (16 * (q) + 12 < (K) ? dot(C((S) + 4 * (q) + 3), bytes4((U).w)) : 0.0))
#define TEXEL_COEFFS 4
#else
vec4 halves4(uint a, uint b) { return vec4(unpackHalf2x16(a), unpackHalf2x16(b)); }
// texel q (bases 8q..8q+7) of a group of rank K from coefficient texel S
#define BLOCK_DOT(U, S, q, K) (dot(C((S) + 2 * (q)), halves4((U).x, (U).y)) \
  + (8 * (q) + 4 < (K) ? dot(C((S) + 2 * (q) + 1), halves4((U).z, (U).w)) : 0.0))
#define TEXEL_COEFFS 2
#endif

// block q of a group (basis texture B, slot texel xy, T texels per component, DIM components) into acc
#define BLOCK(acc, B, xy, S, T, K, DIM, q) if ((q) < (T)) { \
  acc.x += BLOCK_DOT(texelFetch(B, ivec3(xy, (q)), 0), S, q, K); \
  if ((DIM) > 1) { \
    acc.y += BLOCK_DOT(texelFetch(B, ivec3(xy, (T) + (q)), 0), S, q, K); \
    acc.z += BLOCK_DOT(texelFetch(B, ivec3(xy, 2 * (T) + (q)), 0), S, q, K); \
  } \
  if ((DIM) > 3) acc.w += BLOCK_DOT(texelFetch(B, ivec3(xy, 3 * (T) + (q)), 0), S, q, K); \
}
#define BLOCKS4(acc, B, xy, S, T, K, DIM, q) BLOCK(acc, B, xy, S, T, K, DIM, q) \
  BLOCK(acc, B, xy, S, T, K, DIM, (q) + 1) BLOCK(acc, B, xy, S, T, K, DIM, (q) + 2) \
  BLOCK(acc, B, xy, S, T, K, DIM, (q) + 3)
#define BLOCKS16(acc, B, xy, S, T, K, DIM) BLOCKS4(acc, B, xy, S, T, K, DIM, 0) \
  BLOCKS4(acc, B, xy, S, T, K, DIM, 4) BLOCKS4(acc, B, xy, S, T, K, DIM, 8) BLOCKS4(acc, B, xy, S, T, K, DIM, 12)

// a group of more than UNROLLED_BLOCKS texels per component: the same sum in a loop
vec4 blendLoop(usampler2DArray B, ivec2 xy, int S, int T, int dim) {
  vec4 acc = vec4(0.0);
  for (int q = 0; q < T; q++) {
    for (int j = 0; j < TEXEL_COEFFS; j++) {
      vec4 c = uC[S + TEXEL_COEFFS * q + j];
      vec4 x = vec4(0.0);
      for (int d = 0; d < dim; d++) {
        uvec4 w = texelFetch(B, ivec3(xy, d * T + q), 0);
#ifdef BASES_INT8
        x[d] = dot(c, bytes4(w[j]));
#else
        x[d] = dot(c, vec4(unpackHalf2x16(w[2 * j]), unpackHalf2x16(w[2 * j + 1])));
#endif
      }
      acc += x;
    }
  }
  return acc;
}

// sum_k c[k] U[k, slot, 0..DIM-1] of a group
#define BLEND_GROUP(acc, B, slot, S, T, K, DIM) { \
  ivec2 xy = at(slot, GAUSS_TW); \
  if ((T) > UNROLLED_BLOCKS) acc += blendLoop(B, xy, S, T, DIM); \
  else { BLOCKS16(acc, B, xy, S, T, K, DIM) } \
}

// dst += the group's blend (components `sw` of the sum) where the Gaussian has a slot `s` in it
#define ADD_GROUP(dst, sw, s, B, S, T, K, DIM) if ((s) >= 0) { \
  vec4 acc = vec4(0.0); \
  BLEND_GROUP(acc, B, s, S, T, K, DIM) \
  dst += acc.sw; \
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
#ifdef SKIP_STATIC
  if (all(lessThan(slot, ivec4(0)))) discard;
#endif
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
#ifdef CARRIES_XYZ
  ADD_GROUP(mean, xyz, slot.x, uBasisXyz, START_XYZ, BLOCKS_XYZ, RANK_XYZ, 3)
#endif
#ifdef CARRIES_SCALE
  ADD_GROUP(scale, xyz, slot.y, uBasisScale, START_SCALE, BLOCKS_SCALE, RANK_SCALE, 3)
#endif
#ifdef CARRIES_ROTATION
  ADD_GROUP(quat, xyzw, slot.z, uBasisRotation, START_ROTATION, BLOCKS_ROTATION, RANK_ROTATION, 4)
#endif
#ifdef CARRIES_OPACITY
  ADD_GROUP(opacity, x, slot.w, uBasisOpacity, START_OPACITY, BLOCKS_OPACITY, RANK_OPACITY, 1)
#endif
  scale = max(scale, vec3(uScaleMin));
  quat = quat / max(length(quat), QUAT_NORM_EPS);
  opacity = clamp(opacity, uOpacityMin, uOpacityMax);
#if !defined(SKIP_STATIC) || defined(CARRIES_XYZ) || defined(CARRIES_OPACITY)
  oMeanOpacity = floatBitsToUint(vec4(mean, opacity));
#endif
#if !defined(SKIP_STATIC) || defined(CARRIES_SCALE)
  oScale = floatBitsToUint(vec4(scale, 0.0));
#endif
#if !defined(SKIP_STATIC) || defined(CARRIES_ROTATION)
  oQuat = floatBitsToUint(quat);
#endif
}
