#version 300 es
#include "common.glsl"
// One layer of the coefficient MLP, y = act(W x + b): each fragment computes 4 consecutive outputs.
// Vectors live in RGBA32UI textures as float bits (4 values per texel, VEC_TW texels per row), so
// no float colour buffer is needed. Layer 0's bias is the identity's mlp_bias0 (latent folded in).
// The last layer writes each blend group from a multiple of 4 (uRemap), so the blend pass reads 4
// coefficients of one group per texel fetch.
precision highp sampler2D;
precision highp usampler2D;

uniform usampler2D uInput;   // x (float bits), zero past the layer's input width
#ifdef WEIGHTS_INT8
precision highp isampler2D;
uniform isampler2D uWeight;  // RGBA8I: the stored int8 weights, laid out as below
uniform sampler2D uRowScale; // RGBA32F: per-row scales, 4 per texel (row r of W = weight[r] * scale[r])
#else
uniform sampler2D uWeight;   // RGBA32F (RGBA16F for fp16 bundles): row r of W is uInTexels texels from
                             // texel r * uInTexels (WEIGHT_TW per row)
#endif
uniform sampler2D uBias;     // RGBA32F: 4 biases per texel (VEC_TW per row)
uniform int uInTexels;       // ceil(in / 4)
uniform int uOut;            // outputs of the layer
uniform int uOutTexels;      // texels to write
uniform int uActivation;     // 0: none, 1: leaky_relu
uniform float uSlope;        // leaky_relu negative slope
uniform bool uRemap;         // last layer: groups start at multiples of 4
uniform ivec4 uRank;         // group ranks K_xyz, K_scale, K_rotation, K_opacity
uniform ivec4 uDst;          // padded start of each group

out uvec4 oValue;

// Row of W (and b) that feeds output slot q, or -1 for padding.
int sourceRow(int q) {
  if (!uRemap) return q < uOut ? q : -1;
  int src = 0;
  for (int g = 0; g < 4; g++) {
    int r = q - uDst[g];
    if (r >= 0 && r < uRank[g]) return src + r;
    src += uRank[g];
  }
  return -1;
}

void main() {
  int t = int(gl_FragCoord.y) * VEC_TW + int(gl_FragCoord.x);
  vec4 result = vec4(0.0);
  if (t < uOutTexels) {
    for (int l = 0; l < 4; l++) {
      int row = sourceRow(t * 4 + l);
      if (row < 0) continue;
      int base = row * uInTexels;
      float acc = 0.0;
      for (int m = 0; m < uInTexels; m++) {
        vec4 w = vec4(texelFetch(uWeight, at(base + m, WEIGHT_TW), 0));
        vec4 x = uintBitsToFloat(texelFetch(uInput, at(m, VEC_TW), 0));
        acc += dot(w, x);
      }
#ifdef WEIGHTS_INT8
      acc *= texelFetch(uRowScale, at(row >> 2, VEC_TW), 0)[row & 3];
#endif
      acc += texelFetch(uBias, at(row >> 2, VEC_TW), 0)[row & 3];
      if (uActivation == 1 && acc < 0.0) acc *= uSlope;
      result[l] = acc;
    }
  }
  oValue = floatBitsToUint(result);
}
