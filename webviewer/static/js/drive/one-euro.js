// The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012): a low-pass filter whose cut-off rises
// with the signal's speed, so a still face does not jitter and a fast blink is not delayed much.

const TAU = 2 * Math.PI;

function smoothing(cutoff, dt) {
  const r = TAU * cutoff * dt;
  return r / (r + 1);
}

export class OneEuroFilter {
  /** minCutoff (Hz): smoothing at rest; beta: how much speed raises the cut-off; dCutoff (Hz): of the speed. */
  constructor({ minCutoff = 1.5, beta = 0.4, dCutoff = 1.0 } = {}) {
    Object.assign(this, { minCutoff, beta, dCutoff });
    this.reset();
  }

  reset() {
    this.x = null;
    this.dx = 0;
    this.t = null;
  }

  /** The filtered value of sample `x` taken at time `t` (seconds). */
  filter(x, t) {
    if (this.x === null || this.t === null || t <= this.t) {
      if (this.x === null) this.x = x;
      this.t = t;
      return this.x;
    }
    const dt = t - this.t;
    this.t = t;
    const dx = (x - this.x) / dt;
    this.dx += smoothing(this.dCutoff, dt) * (dx - this.dx);
    const cutoff = this.minCutoff + this.beta * Math.abs(this.dx);
    this.x += smoothing(cutoff, dt) * (x - this.x);
    return this.x;
  }
}

/** One filter per key of an object of numbers. */
export class OneEuroBank {
  constructor(options) {
    this.options = options;
    this.filters = new Map();
  }

  reset() {
    this.filters.clear();
  }

  filter(values, t) {
    const out = {};
    for (const [key, v] of Object.entries(values)) {
      if (!this.filters.has(key)) this.filters.set(key, new OneEuroFilter(this.options));
      out[key] = this.filters.get(key).filter(v, t);
    }
    return out;
  }
}
