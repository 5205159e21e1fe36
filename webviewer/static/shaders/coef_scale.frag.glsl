#version 300 es
#include "common.glsl"
// int8 bundles: the coefficients the blend pass uses, c_k * scale_k (the per-basis int8 scales
// folded in once per animation instead of once per Gaussian). One fragment per 4 coefficients.
precision highp sampler2D;
precision highp usampler2D;

uniform usampler2D uCoeffs;  // MLP output (float bits), padded group layout
uniform sampler2D uScales;   // RGBA32F per-basis scales, same layout
uniform int uTexels;

out uvec4 oValue;

void main() {
  int t = int(gl_FragCoord.y) * VEC_TW + int(gl_FragCoord.x);
  if (t >= uTexels) {
    oValue = uvec4(0u);
    return;
  }
  vec4 c = uintBitsToFloat(texelFetch(uCoeffs, at(t, VEC_TW), 0));
  oValue = floatBitsToUint(c * texelFetch(uScales, at(t, VEC_TW), 0));
}
