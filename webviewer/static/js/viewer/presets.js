// Expression presets chosen by parameter name, and random expressions.
//
// The built-in head uses the 52 ARKit unit names (mouthSmileLeft, jawOpen, eyeBlinkLeft, ...) plus
// jaw_x/y/z and eyelid_l/r; FLAME-style bundles have exp_0..exp_N (no semantic names), so only the
// presets that the jaw and eyelid parameters can express are offered for them.

const ARKIT = {
  smile: { mouthSmileLeft: 0.85, mouthSmileRight: 0.85, cheekSquintLeft: 0.35, cheekSquintRight: 0.35,
    eyeSquintLeft: 0.2, eyeSquintRight: 0.2 },
  surprise: { browInnerUp: 0.9, browOuterUpLeft: 0.8, browOuterUpRight: 0.8, eyeWideLeft: 0.8, eyeWideRight: 0.8,
    jawOpen: 0.3 },
  "open mouth": { jawOpen: 0.8 },
  blink: { eyeBlinkLeft: 1.0, eyeBlinkRight: 1.0 },
  frown: { mouthFrownLeft: 0.8, mouthFrownRight: 0.8, browDownLeft: 0.6, browDownRight: 0.6 },
};
// fallbacks through the jaw joint and the eyelids (FLAME-style bundles)
const FALLBACK = {
  "open mouth": { jaw_x: 0.3 },
  blink: { eyelid_l: 1.0, eyelid_r: 1.0 },
};
const ORDER = ["neutral", "smile", "surprise", "open mouth", "blink", "frown"];

/** [{name, values: Float32Array}] for the presets this bundle's parameter names support. */
export function buildPresets(parameters) {
  const where = new Map(parameters.map((p, i) => [p.name, i]));
  const defaults = () => Float32Array.from(parameters.map((p) => p.default));
  const fill = (spec) => {
    const v = defaults();
    let hits = 0;
    for (const [name, value] of Object.entries(spec)) {
      if (!where.has(name)) continue;
      const p = parameters[where.get(name)];
      v[where.get(name)] = Math.min(p.max, Math.max(p.min, value));
      hits++;
    }
    return hits ? v : null;
  };
  const out = [];
  for (const name of ORDER) {
    if (name === "neutral") {
      out.push({ name, values: defaults() });
      continue;
    }
    const values = (ARKIT[name] && fill(ARKIT[name])) || (FALLBACK[name] && fill(FALLBACK[name]));
    if (values) out.push({ name, values });
  }
  return out;
}

/** A random but sensible expression: 2-5 distinct expression units, sometimes the jaw or the eyelids. */
export function randomExpression(parameters, rng = Math.random) {
  const v = Float32Array.from(parameters.map((p) => p.default));
  const expr = parameters.map((p, i) => [p, i]).filter(([p]) => p.group === "expression");
  const pick = Math.min(expr.length, 2 + Math.floor(rng() * 4));
  for (let n = 0; n < pick; n++) {
    // a partial Fisher-Yates shuffle: unit n is drawn from those not drawn yet
    const k = n + Math.floor(rng() * (expr.length - n));
    [expr[n], expr[k]] = [expr[k], expr[n]];
    const [p, i] = expr[n];
    if (p.min >= 0) v[i] = p.min + (0.35 + 0.65 * rng()) * (p.max - p.min);
    else v[i] = Math.min(p.max, Math.max(p.min, (2 * rng() - 1) * 0.6 * Math.max(-p.min, p.max)));
  }
  parameters.forEach((p, i) => {
    if (p.group === "jaw" && p.name.endsWith("_x") && rng() < 0.5) v[i] = Math.min(p.max, 0.5 * p.max * rng());
    if (p.group === "eyelids" && rng() < 0.15) v[i] = p.max;
  });
  return v;
}
