#version 300 es
#include "common.glsl"
// The splat pass, fragment stage: alpha = min(0.999, o exp(-0.5 d^T C^-1 d)) at the pixel centre,
// with d^T C^-1 d = |vLocal|^2 (the pixel in the ellipse's frame, in units of sigma, interpolated
// from the quad's corners); pixels under 1/255 write (0, 0), which leaves the canvas as it was;
// premultiplied output, composited back to front with ONE, ONE_MINUS_SRC_ALPHA into the RGBA8
// canvas. With FRAGMENT_COUNT (benchmarks) it writes 1 per shaded fragment and 1 per kept one, for
// additive float blending.

flat in vec3 vColor;
flat in float vOpacity;
in vec2 vLocal;

out vec4 fragColor;

void main() {
  float alpha = min(ALPHA_MAX, vOpacity * exp(-0.5 * dot(vLocal, vLocal)));
#ifdef FRAGMENT_COUNT
  fragColor = vec4(1.0, alpha < ALPHA_MIN ? 0.0 : 1.0, 0.0, 0.0);
#else
  // under the cut the fragment adds nothing: (0, 0) leaves the canvas exactly as it was, and costs
  // less than a discard (a 235K frame's redraw 440-466 -> 383-395 ms under SwiftShader)
  alpha = alpha >= ALPHA_MIN ? alpha : 0.0;
  fragColor = vec4(vColor * alpha, alpha);
#endif
}
