// "Record": the take's parameter vectors with their times, resampled to a fixed rate and saved as the
// viewer's driving-sequence JSON {num_frames, params_dim, fps, frames, names} (docs/viewer.md),
// which the viewer opens and `agora-export sequence` reads.

export const RECORD_FPS = 30;
const MAX_SECONDS = 600;

export class TakeRecorder {
  constructor() {
    this.samples = null; // [{t (s), values: Float32Array}]
  }

  get recording() {
    return this.samples !== null;
  }

  start() {
    this.samples = [];
  }

  /** One sample at time `t` (seconds); ignored unless recording (at most MAX_SECONDS long). */
  add(t, values) {
    if (!this.samples) return;
    if (this.samples.length && t - this.samples[0].t > MAX_SECONDS) return;
    if (this.samples.length && t <= this.samples[this.samples.length - 1].t) return;
    this.samples.push({ t, values: Float32Array.from(values) });
  }

  /** Stop; the take as sequence JSON for parameters `names` (null when nothing was recorded), with
   * `tracking`: what the tracker measured over the take (see LiveDrive.trackingSummary). */
  stop(names, tracking = null, fps = RECORD_FPS) {
    const samples = this.samples;
    this.samples = null;
    if (!samples || samples.length === 0) return null;
    return { ...resample(samples, names, fps), ...(tracking ? { tracking } : {}) };
  }
}

/** Linear interpolation of the samples at `fps`, from the first sample to the last. */
export function resample(samples, names, fps = RECORD_FPS) {
  const t0 = samples[0].t;
  const count = Math.max(1, Math.floor((samples[samples.length - 1].t - t0) * fps) + 1);
  const frames = [];
  let j = 0;
  for (let k = 0; k < count; k++) {
    const t = t0 + k / fps;
    while (j + 1 < samples.length && samples[j + 1].t < t) j++;
    const a = samples[j];
    const b = samples[Math.min(j + 1, samples.length - 1)];
    const w = b.t > a.t ? Math.min(1, Math.max(0, (t - a.t) / (b.t - a.t))) : 0;
    frames.push(Array.from(a.values, (v, i) => Math.round((v + w * (b.values[i] - v)) * 1e5) / 1e5));
  }
  return { num_frames: frames.length, params_dim: names.length, fps, frames, names: [...names], source: "agora",
    description: "a live-drive take (camera face tracking), recorded by the agora viewer" };
}

/** Offer `json` as a download named `name`. */
export function downloadJson(json, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([JSON.stringify(json)], { type: "application/json" }));
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
