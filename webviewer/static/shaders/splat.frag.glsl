#version 300 es
#include "common.glsl"
// The splat pass, fragment stage: alpha = min(0.999, o exp(-0.5 d^T C^-1 d)) at the pixel centre
// (image coordinates, y down, centres at +0.5), pixels under 1/255 discarded; premultiplied
// output, composited back to front with ONE, ONE_MINUS_SRC_ALPHA into the RGBA8 canvas.

uniform vec2 uViewport;

flat in vec3 vColor;
flat in float vOpacity;
flat in vec3 vConic;
flat in vec2 vMean;

out vec4 fragColor;

void main() {
  vec2 d = vec2(gl_FragCoord.x, uViewport.y - gl_FragCoord.y) - vMean;
  float sigma = 0.5 * (vConic.x * d.x * d.x + vConic.z * d.y * d.y) + vConic.y * d.x * d.y;
  float alpha = min(ALPHA_MAX, vOpacity * exp(-sigma));
  if (alpha < ALPHA_MIN) discard;
  fragColor = vec4(vColor * alpha, alpha);
}
