// Orbit camera in the project's convention (agora_core/types/camera.py): world metres, +Y up, face +Z;
// the view matrix maps world to camera with OpenCV axes (+X right, +Y down, +Z forward), pinhole
// intrinsics with the principal point at the image centre.

const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
const add = (a, b) => [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
const scale = (a, s) => [a[0] * s, a[1] * s, a[2] * s];
const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
const norm = (a) => Math.sqrt(dot(a, a));
const normalize = (a) => scale(a, 1 / Math.max(norm(a), 1e-12));

export const DEFAULT_CAMERA = { position: [0, 0, 0.65], target: [0, 0, 0], up: [0, 1, 0], fov_y_deg: 20 };
export const FRUSTUM_MARGIN = 0.3; // Jacobian clip: 1.3x the field of view (3DGS/gsplat)

/** World->camera rotation rows (right, down, forward) and translation, like camera.look_at. */
export function lookAt(eye, target, up) {
  const forward = normalize(sub(target, eye));
  const right = normalize(cross(forward, up));
  const down = cross(forward, right);
  const R = [right, down, forward];
  const t = R.map((row) => -dot(row, eye));
  return { R, t };
}

/** A camera for a bundle: the header's camera, or one framing the neutral means' bounding box. */
export function cameraForBundle(bundle) {
  const c = bundle.camera;
  const ok = (v) => Array.isArray(v) && v.length === 3 && v.every(Number.isFinite);
  if (c && ok(c.position) && ok(c.target) && Number.isFinite(c.fov_y_deg) && norm(sub(c.position, c.target)) > 0) {
    return { position: c.position, target: c.target, up: ok(c.up) ? c.up : [0, 1, 0], fov_y_deg: c.fov_y_deg };
  }
  const m = bundle.identities[0].means;
  const lo = [Infinity, Infinity, Infinity];
  const hi = [-Infinity, -Infinity, -Infinity];
  for (let i = 0; i < m.length; i += 3) {
    for (let j = 0; j < 3; j++) {
      lo[j] = Math.min(lo[j], m[i + j]);
      hi[j] = Math.max(hi[j], m[i + j]);
    }
  }
  const centre = scale(add(lo, hi), 0.5);
  const radius = Math.max(0.5 * norm(sub(hi, lo)), 1e-3);
  const fov = 20;
  const dist = radius / Math.tan((fov * Math.PI) / 360) / 0.9;
  return { position: add(centre, [0, 0, dist]), target: centre, up: [0, 1, 0], fov_y_deg: fov };
}

export class OrbitCamera {
  constructor(spec = DEFAULT_CAMERA) {
    this.set(spec);
  }

  set(spec) {
    this.eye = [...spec.position];
    this.target = [...spec.target];
    this.up = [...(spec.up || [0, 1, 0])];
    this.fovY = spec.fov_y_deg;
    this.home = { position: [...this.eye], target: [...this.target], up: [...this.up], fov_y_deg: this.fovY };
    this.homeRadius = norm(sub(this.eye, this.target));
    this.version = (this.version || 0) + 1;
  }

  reset() {
    this.set(this.home);
  }

  get radius() {
    return norm(sub(this.eye, this.target));
  }

  /** Rotate around the target: yaw about world +Y, pitch about the camera's right axis (radians). */
  orbit(dyaw, dpitch) {
    const off = sub(this.eye, this.target);
    const r = norm(off);
    let yaw = Math.atan2(off[0], off[2]);
    let pitch = Math.asin(Math.max(-1, Math.min(1, off[1] / r)));
    yaw += dyaw;
    const limit = (85 * Math.PI) / 180;
    pitch = Math.max(-limit, Math.min(limit, pitch + dpitch));
    this.eye = add(this.target, [r * Math.cos(pitch) * Math.sin(yaw), r * Math.sin(pitch), r * Math.cos(pitch) * Math.cos(yaw)]);
    this.up = [0, 1, 0];
    this.version++;
  }

  /** Move towards the target by a factor (< 1 zooms in). */
  zoom(factor) {
    const off = sub(this.eye, this.target);
    const r = norm(off);
    const nr = Math.max(0.05 * this.homeRadius, Math.min(20 * this.homeRadius, r * factor));
    this.eye = add(this.target, scale(off, nr / r));
    this.version++;
  }

  /** Pan by a screen-space drag of (dx, dy) pixels in a viewport of height `heightPx`. */
  pan(dx, dy, viewport) {
    const { R } = lookAt(this.eye, this.target, this.up);
    const f = this.focal(viewport.width, viewport.height);
    const s = this.radius / f;
    const delta = add(scale(R[0], -dx * s), scale(R[1], -dy * s));
    this.eye = add(this.eye, delta);
    this.target = add(this.target, delta);
    this.version++;
  }

  /** Focal length in pixels: the vertical field of view for landscape, horizontal for portrait. */
  focal(width, height) {
    return (0.5 * Math.min(width, height)) / Math.tan((this.fovY * Math.PI) / 360);
  }

  /** Everything the splat pass and the sorter need for a width x height image. */
  view(width, height) {
    const { R, t } = lookAt(this.eye, this.target, this.up);
    const f = this.focal(width, height);
    const cx = width / 2;
    const cy = height / 2;
    const tanX = (0.5 * width) / f;
    const tanY = (0.5 * height) / f;
    return {
      R,
      t,
      eye: [...this.eye],
      fx: f,
      fy: f,
      cx,
      cy,
      width,
      height,
      limits: [-(cx / f + FRUSTUM_MARGIN * tanX), (width - cx) / f + FRUSTUM_MARGIN * tanX,
        -(cy / f + FRUSTUM_MARGIN * tanY), (height - cy) / f + FRUSTUM_MARGIN * tanY],
    };
  }

  toJSON() {
    return { position: [...this.eye], target: [...this.target], up: [...this.up], fov_y_deg: this.fovY };
  }
}
