// Shared by every shader: each says #include "common.glsl" after its #version line and the loader
// (js/gpu/gl.js loadShader) puts this file there. The constants are agora_core's (checked against the
// Python values by tests/test_spec.py): SH degree-1 basis (agora_core/types/gaussians.py), the alpha
// cut and clamp (agora_core/render/rasterizer.py), the quaternion norm floor (agora_core/types/spec.py).
precision highp float;
precision highp int;

const float SH_C0 = 0.28209479177387814;
const float SH_C1 = 0.4886025119029199;
const float ALPHA_MIN = 1.0 / 255.0;  // splat-pixel pairs below this alpha are skipped
const float ALPHA_MAX = 0.999;        // alpha is clamped to this
const float QUAT_NORM_EPS = 1e-12;    // floor of a quaternion's norm before normalising

// Texel of linear index i in a texture w texels wide (row-major).
ivec2 at(int i, int w) { return ivec2(i % w, i / w); }
