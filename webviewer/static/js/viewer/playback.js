// Driving-sequence playback: a JSON {num_frames, params_dim, fps, frames[num_frames][params_dim]}
// with optional "names" (params_dim parameter names; then frames are mapped onto the bundle's
// parameters by name, unknown names ignored, missing ones at their default). Without names the
// sequence must have exactly the bundle's parameter count, in the bundle's order; a 55-value frame
// without names is the authors' layout (exp_0..exp_49, jaw, eyelids). Sequences converted from
// another format ("source" other than "agora", see sequences.js) and the authors' layout are matched
// strictly by name: a layout that does not fit the bundle is refused, naming the mismatch.

import { flameNames, matchLayout } from "../format/sequences.js";

export class SequenceError extends Error {}

export function parseSequence(json, parameters, label = "sequence") {
  const fail = (msg) => { throw new SequenceError(`${label}: ${msg}`); };
  if (!json || typeof json !== "object" || Array.isArray(json)) fail("not a JSON object");
  const n = json.num_frames;
  const dim = json.params_dim;
  const fps = json.fps;
  if (!Number.isInteger(n) || n < 1) fail("num_frames must be a positive integer");
  if (!Number.isInteger(dim) || dim < 1) fail("params_dim must be a positive integer");
  if (typeof fps !== "number" || !(fps > 0) || !Number.isFinite(fps)) fail("fps must be a positive number");
  if (!Array.isArray(json.frames) || json.frames.length !== n) fail(`frames must be a list of ${n} frames`);
  const P = parameters.length;
  let map;
  let matched;
  if (json.names !== undefined) {
    if (!Array.isArray(json.names) || json.names.length !== dim || !json.names.every((s) => typeof s === "string")) {
      fail(`names must be a list of ${dim} strings`);
    }
    const where = new Map(parameters.map((p, i) => [p.name, i]));
    if (typeof json.source === "string" && json.source !== "agora") {
      ({ index: map, matched } = strictMatch(json.names, parameters, label));
    } else {
      map = json.names.map((name) => (where.has(name) ? where.get(name) : -1));
      matched = map.filter((i) => i >= 0).length;
      if (matched === 0) fail("none of its parameter names is in this bundle");
    }
  } else if (dim === P) {
    map = [...Array(P).keys()];
    matched = P;
  } else if (dim === AUTHORS_DIM) {
    ({ index: map, matched } = strictMatch(flameNames(AUTHORS_DIM - 5), parameters, label));
  } else {
    fail(`has ${dim} parameters per frame but the bundle has ${P} (add "names" to map by name)`);
  }
  const defaults = parameters.map((p) => p.default);
  const frames = json.frames.map((row, f) => {
    if (!Array.isArray(row) || row.length !== dim) fail(`frame ${f} must have ${dim} numbers`);
    const v = Float32Array.from(defaults);
    row.forEach((x, j) => {
      if (typeof x !== "number" || !Number.isFinite(x)) fail(`frame ${f} has a non-number`);
      if (map[j] >= 0) v[map[j]] = x;
    });
    return v;
  });
  return { label, numFrames: n, fps, frames, matched, total: dim };
}

const AUTHORS_DIM = 55;

function strictMatch(names, parameters, label) {
  try {
    return matchLayout(names, parameters.map((p) => p.name), label);
  } catch (err) {
    throw new SequenceError(err.message);
  }
}

export class Player {
  constructor(onFrame) {
    this.onFrame = onFrame;
    this.sequence = null;
    this.playing = false;
    this.loop = true;
    this.speed = 1;
    this.time = 0; // seconds into the sequence
    this.last = null;
  }

  load(sequence) {
    this.sequence = sequence;
    this.time = 0;
    this.playing = false;
    this.last = null;
  }

  get duration() {
    return this.sequence ? this.sequence.numFrames / this.sequence.fps : 0;
  }

  get frame() {
    return this.sequence ? Math.min(this.sequence.numFrames - 1, this.time * this.sequence.fps) : 0;
  }

  play() {
    if (!this.sequence) return;
    if (this.frame >= this.sequence.numFrames - 1 && !this.loop) this.time = 0;
    this.playing = true;
    this.last = null;
  }

  pause() {
    this.playing = false;
  }

  seek(frame) {
    if (!this.sequence) return;
    this.time = Math.max(0, Math.min(this.sequence.numFrames - 1, frame)) / this.sequence.fps;
    this.emit();
  }

  /** Advance by the wall-clock time since the last call (ms timestamps) and emit the frame. */
  update(nowMs) {
    if (!this.playing || !this.sequence) return;
    if (this.last !== null) {
      this.time += ((nowMs - this.last) / 1000) * this.speed;
      const end = (this.sequence.numFrames - 1) / this.sequence.fps;
      if (this.time > end) {
        if (this.loop && end > 0) this.time %= end;
        else {
          this.time = end;
          this.playing = false;
        }
      }
    }
    this.last = nowMs;
    this.emit();
  }

  /** Parameters at the current (fractional) frame, linearly interpolated. */
  values() {
    const s = this.sequence;
    const f = this.frame;
    const i = Math.floor(f);
    const j = Math.min(s.numFrames - 1, i + 1);
    const a = f - i;
    const out = new Float32Array(s.frames[i].length);
    for (let k = 0; k < out.length; k++) out[k] = s.frames[i][k] * (1 - a) + s.frames[j][k] * a;
    return out;
  }

  emit() {
    if (this.sequence) this.onFrame?.(this.values(), this.frame);
  }
}
