// Tracked ARKit-named values -> a bundle's parameter vector.
//
// Built-in head (ARKit-52 names): the ARKit names the tracker measures (face-params.js MEASURED), by name; the jaw joint
// follows jawOpen (jaw_x, the same JAW_ANGLE_PER_OPEN as the project's driving clips) and
// jawLeft/jawRight (jaw_y); the eyelid parameters stay at rest, since eyeBlink closes the eyes.
// FLAME-style bundles (exp_0..exp_N): the jaw joint (jaw_x from jawOpen, jaw_y from the sideways
// jaw) and the eyelids (eyelid_l/r from eyeBlinkLeft/Right); the exp_* components stay at rest
// (no fitted mapping from landmarks to FLAME's PCA components is shipped).

import { ARKIT_NAMES } from "../format/sequences.js";
import { MEASURED } from "./face-params.js";

export const JAW_ANGLE_PER_OPEN = 0.25; // radians of jaw_x per unit of jawOpen
export const JAW_ANGLE_SIDEWAYS = 0.15; // radians of jaw_y at jawLeft = 1

const ARKIT = new Set(ARKIT_NAMES);

/** What the drive can move in a bundle: {kind, driven: [names]} and a function values -> Float32Array. */
export function bundleMapping(parameters) {
  const index = new Map(parameters.map((p, i) => [p.name, i]));
  const arkit = parameters.filter((p) => ARKIT.has(p.name)).length >= 26;
  const rules = []; // [parameter index, values -> number]
  const add = (name, fn) => { if (index.has(name)) rules.push([index.get(name), fn]); };
  if (arkit) for (const name of MEASURED) add(name, (v) => v[name] ?? 0);
  add("jaw_x", (v) => JAW_ANGLE_PER_OPEN * (v.jawOpen ?? 0));
  add("jaw_y", (v) => JAW_ANGLE_SIDEWAYS * ((v.jawLeft ?? 0) - (v.jawRight ?? 0)));
  if (!arkit) {
    add("eyelid_l", (v) => v.eyeBlinkLeft ?? 0);
    add("eyelid_r", (v) => v.eyeBlinkRight ?? 0);
  }
  const rest = Float32Array.from(parameters, (p) => p.default);
  const apply = (values) => {
    const out = Float32Array.from(rest);
    for (const [i, fn] of rules) {
      const p = parameters[i];
      out[i] = Math.min(p.max, Math.max(p.min, fn(values)));
    }
    return out;
  };
  return { kind: arkit ? "arkit" : "flame", driven: rules.map(([i]) => parameters[i].name), rest, apply };
}
