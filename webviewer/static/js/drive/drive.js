// Live drive: the device's camera animates the avatar. Tracking results (tracker.js, in a worker)
// become ARKit-named values (face-params.js) against the user's resting face, are filtered (One-Euro)
// and mapped onto the open bundle's parameters (bundle-map.js). A loop of its own, at the display's
// rate, eases the avatar towards the latest tracked expression (and back to neutral when the face is
// lost) and turns the view with the head; "Record" keeps the take as a sequence JSON (recorder.js).
//
// The page's panel has the buttons (index.html, #drive); the overlay (#drive-overlay) shows the
// tracking rate, the tracker's time per frame and the latency; #drive-message says what is wrong.

import { DEFAULT_NEUTRAL, arkitFromMeasures, measure, mirrored } from "./face-params.js";
import { OneEuroBank } from "./one-euro.js";
import { TakeRecorder, downloadJson } from "./recorder.js";
import { CameraError, FaceTracker } from "./tracker.js";
import { bundleMapping } from "./bundle-map.js";

const LOST_AFTER_MS = 400; // no face for this long: "face lost", ease to neutral
const EASE_TRACKED_S = 0.045; // time constant of the display-rate easing towards the tracked values
const EASE_NEUTRAL_S = 0.35; // ... and back to neutral
const CALIBRATION_FRAMES = 6; // "neutral": the median of this many tracked frames...
const CALIBRATION_MS = 500; // ... or of those of this long (at least 2)
const HEAD_GAIN = 1.0; // view rotation per radian of head rotation
const HEAD_LIMIT = 0.6; // radians
const LOG_LIMIT = 4000;

const $ = (id) => document.getElementById(id);
const median = (xs) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
};

export class LiveDrive {
  constructor(viewer, { onStart } = {}) {
    this.viewer = viewer;
    this.onStart = onStart; // called when the drive takes over the parameters (e.g. pause playback)
    this.tracker = new FaceTracker({ onResult: (r) => this.onResult(r), onError: (m) => this.fail(m) });
    this.filters = new OneEuroBank({ minCutoff: 1.5, beta: 0.4 });
    this.recorder = new TakeRecorder();
    this.rest = { ...DEFAULT_NEUTRAL };
    this.calibrated = false;
    this.calibration = null; // measurements being averaged
    this.active = false;
    this.target = {}; // filtered tracked values
    this.shown = {}; // eased values on screen
    this.appliedHead = [0, 0];
    this.lastFace = -Infinity;
    this.lastFrame = null;
    this.log = []; // {seq, t, ms, latency, face, values} per result (tests, stats)
    this.recent = []; // {at, ms, latency}
    this.message = "";
    this.mapping = null;
  }

  get mirror() {
    return this.tracker.facing === "user";
  }

  /** Open the camera, start the tracker; resolves to true when running (false: see `message`). */
  async start() {
    if (this.active) return true;
    if (!this.viewer.bundle) return this.fail("Open a bundle first.");
    this.setMessage("Starting the camera…");
    try {
      await this.tracker.openCamera();
    } catch (err) {
      return this.fail(err instanceof CameraError ? err.message : String(err.message || err));
    }
    this.updateSwitch(); // the cameras are listed once the permission is granted
    this.setMessage("Loading the face tracker…");
    try {
      await this.tracker.startWorker();
    } catch (err) {
      this.tracker.dispose(); // a later tap starts a new worker
      return this.fail(`${err.message}. The tracker's files come with the server (npm ci in a clone).`);
    }
    this.mapping = this.remap();
    this.onStart?.();
    this.active = true;
    this.filters.reset();
    this.lastFace = performance.now();
    this.tracker.start();
    this.setMessage(this.calibrated ? "" : "Look at the camera with a relaxed face and tap Neutral.");
    this.loop();
    this.syncButtons();
    return true;
  }

  stop() {
    this.tracker.stop();
    this.active = false;
    if (this.recorder.recording) this.stopRecording();
    this.target = {};
    this.setMessage("");
    this.syncButtons();
    this.loop(); // ease back to neutral, then stop
  }

  /** (Re)start the display-rate loop. */
  loop() {
    cancelAnimationFrame(this.frame);
    this.lastFrame = null;
    this.frame = requestAnimationFrame((t) => this.tick(t));
  }

  async switchCamera() {
    const facing = this.tracker.facing === "user" ? "environment" : "user";
    try {
      await this.tracker.openCamera(facing);
      this.filters.reset();
      this.setMessage("");
    } catch (err) {
      this.fail(err instanceof CameraError ? err.message : String(err.message || err));
    }
    this.syncButtons();
  }

  /** Take the next frames' measurements as the user's resting face. */
  calibrate() {
    this.calibration = [];
    this.calibrationStart = performance.now();
    this.setMessage("Hold still…");
  }

  fail(message) {
    this.active = false;
    this.target = {};
    this.setMessage(message, true);
    this.syncButtons();
    return false;
  }

  // ---------------------------------------------------------------------------- tracking results
  onResult(r) {
    const now = performance.now();
    this.recent.push({ at: now, ms: r.ms, latency: r.latency });
    while (this.recent.length && now - this.recent[0].at > 2000) this.recent.shift();
    const entry = { seq: r.seq, t: r.t, ms: r.ms, latency: r.latency, face: !!r.face, values: null };
    if (r.face) {
      const m = measure(r.face.mesh, r.face.rotation);
      if (this.calibration) this.addCalibration(m);
      let values = arkitFromMeasures(m, this.rest);
      if (this.mirror) values = mirrored(values);
      this.target = this.filters.filter(values, r.t / 1000);
      entry.values = this.target;
      entry.raw = values;
      entry.measures = m;
      if (this.keepMeshes) entry.mesh = Array.from(r.face.mesh);
      this.lastFace = now;
      if (this.message && !this.calibration && !this.messageIsError && this.calibrated) this.setMessage("");
      if (this.recorder.recording && this.mapping) this.recorder.add(r.t / 1000, this.mapping.apply(this.target));
    } else if (now - this.lastFace > LOST_AFTER_MS) {
      this.target = {};
      this.filters.reset();
      this.setMessage("Face lost: look at the camera.");
    }
    this.log.push(entry);
    if (this.log.length > LOG_LIMIT) this.log.shift();
  }

  addCalibration(m) {
    this.calibration.push(m);
    const n = this.calibration.length;
    if (n < CALIBRATION_FRAMES && (n < 2 || performance.now() - this.calibrationStart < CALIBRATION_MS)) return;
    const rest = {};
    for (const key of Object.keys(DEFAULT_NEUTRAL)) rest[key] = median(this.calibration.map((c) => c[key]));
    this.rest = rest;
    this.calibration = null;
    this.calibrated = true;
    this.filters.reset();
    this.setMessage("");
  }

  /** The mapping onto the open bundle's parameters (again when another bundle is opened). */
  remap() {
    const bundle = this.viewer.bundle;
    return bundle ? { ...bundleMapping(bundle.parameters), bundle } : null;
  }

  // ---------------------------------------------------------------------------- display-rate loop
  tick(t) {
    if (this.mapping && this.mapping.bundle !== this.viewer.bundle) this.mapping = this.remap();
    const dt = this.lastFrame === null ? 0 : Math.min(0.2, (t - this.lastFrame) / 1000);
    this.lastFrame = t;
    const tracked = Object.keys(this.target).length > 0;
    const k = 1 - Math.exp(-dt / (tracked ? EASE_TRACKED_S : EASE_NEUTRAL_S));
    let moving = false;
    for (const key of new Set([...Object.keys(this.shown), ...Object.keys(this.target)])) {
      const from = this.shown[key] ?? 0;
      const next = from + k * ((this.target[key] ?? 0) - from);
      if (Math.abs(next - from) > 1e-4) moving = true;
      this.shown[key] = next;
    }
    if (this.mapping && (moving || dt === 0)) {
      this.viewer.setParams(this.mapping.apply(this.shown));
      this.turnView();
    }
    if (this.viewer.stats.frames % 15 === 0) this.updateOverlay();
    if (this.active || moving) this.frame = requestAnimationFrame((tt) => this.tick(tt));
    else {
      this.lastFrame = null;
      this.updateOverlay();
    }
  }

  /** Orbit the view by the change of the eased head yaw and pitch since the last frame. */
  turnView() {
    const clampHead = (x) => Math.max(-HEAD_LIMIT, Math.min(HEAD_LIMIT, x || 0));
    const yaw = HEAD_GAIN * clampHead(this.shown.headYaw);
    const pitch = HEAD_GAIN * clampHead(this.shown.headPitch);
    const [y0, p0] = this.appliedHead;
    if (Math.abs(yaw - y0) + Math.abs(pitch - p0) < 1e-5) return;
    this.viewer.camera.orbit(yaw - y0, pitch - p0);
    this.appliedHead = [yaw, pitch];
  }

  // ---------------------------------------------------------------------------- recording
  startRecording() {
    this.recorder.start();
    this.recordFrom = this.log.length ? this.log[this.log.length - 1].seq : 0;
    this.syncButtons();
  }

  /** Stop recording; the take as sequence JSON (also offered as a download unless `download` is false). */
  stopRecording(download = true) {
    const take = this.recorder.stop(this.viewer.bundle.parameters.map((p) => p.name), this.trackingSummary());
    this.syncButtons();
    if (!take) {
      this.setMessage("Nothing was recorded (no face was tracked).", true);
      return null;
    }
    if (download) downloadJson(take, `agora-take-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
    return take;
  }

  /** The tracker's figures over the take being recorded (stored in the take: numbers from a phone). */
  trackingSummary() {
    const results = this.log.filter((e) => e.seq > (this.recordFrom ?? 0));
    const span = results.length > 1 ? (results[results.length - 1].t - results[0].t) / 1000 : 0;
    const ms = results.map((e) => e.ms).sort((a, b) => a - b);
    const round = (x) => Math.round(x * 10) / 10;
    return {
      results: results.length, faces: results.filter((e) => e.face).length,
      fps: span > 0 ? round((results.length - 1) / span) : 0,
      track_ms_median: round(median(ms)), track_ms_p95: round(ms[Math.floor(0.95 * (ms.length - 1))] ?? NaN),
      latency_ms_median: round(median(results.map((e) => e.latency))), backend: this.tracker.backend,
      user_agent: navigator.userAgent,
    };
  }

  // ---------------------------------------------------------------------------- stats and UI
  stats() {
    const n = this.recent.length;
    const span = n > 1 ? (this.recent[n - 1].at - this.recent[0].at) / 1000 : 0;
    return {
      active: this.active, backend: this.tracker.backend, facing: this.tracker.facing, calibrated: this.calibrated,
      fps: span > 0 ? (n - 1) / span : 0, trackMs: median(this.recent.map((r) => r.ms)),
      latencyMs: median(this.recent.map((r) => r.latency)), results: this.log.length,
      faces: this.log.filter((e) => e.face).length, message: this.message, driven: this.mapping?.driven ?? [],
      recording: this.recorder.recording,
    };
  }

  updateOverlay() {
    const el = $("drive-overlay");
    if (!el) return;
    el.hidden = !this.active;
    if (!this.active) return;
    const s = this.stats();
    const face = performance.now() - this.lastFace > LOST_AFTER_MS ? "no face" : "face";
    el.textContent = `tracking ${s.fps.toFixed(1)} fps · ${s.trackMs.toFixed(0)} ms/frame · latency ` +
      `${s.latencyMs.toFixed(0)} ms · ${s.backend ?? "…"} · ${face}${s.recording ? " · ● REC" : ""}`;
  }

  setMessage(text, isError = false) {
    this.message = text;
    this.messageIsError = isError && !!text;
    const el = $("drive-message");
    if (el) {
      el.textContent = text;
      el.classList.toggle("error", this.messageIsError);
    }
  }

  syncButtons() {
    const set = (id, fn) => { const el = $(id); if (el) fn(el); };
    set("drive-btn", (b) => { b.textContent = this.active ? "Stop camera" : "Camera"; b.setAttribute("aria-pressed", String(this.active)); });
    set("drive-neutral-btn", (b) => { b.disabled = !this.active; });
    set("drive-record-btn", (b) => { b.disabled = !this.active; b.textContent = this.recorder.recording ? "Stop & save" : "Record"; });
    set("drive-switch-btn", (b) => { b.disabled = !this.active; });
    this.updateOverlay();
  }

  /** Wire the panel's buttons (ids in index.html). */
  attachUI() {
    $("drive-btn")?.addEventListener("click", () => (this.active ? this.stop() : this.start()));
    $("drive-neutral-btn")?.addEventListener("click", () => this.calibrate());
    $("drive-record-btn")?.addEventListener("click", () => (this.recorder.recording ? this.stopRecording() : this.startRecording()));
    $("drive-switch-btn")?.addEventListener("click", () => this.switchCamera());
    this.updateSwitch();
    this.syncButtons();
  }

  /** Show "Switch camera" when the device has two or more cameras. */
  updateSwitch() {
    FaceTracker.cameraCount().then((n) => { const b = $("drive-switch-btn"); if (b) b.hidden = n < 2; });
  }
}
