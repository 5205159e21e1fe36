// Helpers of the benchmark page: sample statistics, the device description, the driving frames,
// memory figures and the result document (schema "agora-bench/1", checked by the server:
// webviewer/bench_results.py).

import { unmaskedRenderer } from "../gpu/gl.js";

export const SCHEMA_ID = "agora-bench/1";

const round = (x, digits = 4) => (Number.isFinite(x) ? Number(x.toFixed(digits)) : 0);

/** Median, p95 (nearest rank), min, max, mean and the samples (ms, rounded to 0.1 us). */
export function summarize(samples) {
  const s = [...samples].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return { median: 0, p95: 0, min: 0, max: 0, mean: 0, samples: [] };
  const median = n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
  const p95 = s[Math.min(n - 1, Math.round(0.95 * (n - 1)))];
  const mean = s.reduce((a, b) => a + b, 0) / n;
  return { median: round(median), p95: round(p95), min: round(s[0]), max: round(s[n - 1]), mean: round(mean),
    samples: samples.map((x) => round(x)) };
}

/** The smallest step of performance.now() seen in a short loop (5 us when cross-origin isolated). */
export function timerResolution() {
  let best = Infinity;
  for (let i = 0; i < 50; i++) {
    const a = performance.now();
    let b = performance.now();
    while (b === a) b = performance.now();
    best = Math.min(best, b - a);
  }
  return round(best, 5);
}

/** GPU and browser description (WEBGL_debug_renderer_info where the browser exposes it). */
export function describeDevice(gl) {
  return {
    gpu: unmaskedRenderer(gl),
    gl_vendor: String(gl.getParameter(gl.VENDOR)),
    gl_renderer: String(gl.getParameter(gl.RENDERER)),
    max_texture_size: gl.getParameter(gl.MAX_TEXTURE_SIZE),
    cross_origin_isolated: Boolean(globalThis.crossOriginIsolated),
    hardware_concurrency: Number.isInteger(navigator.hardwareConcurrency) ? navigator.hardwareConcurrency : null,
    device_pixel_ratio: window.devicePixelRatio || 1,
    timer_resolution_ms: timerResolution(),
  };
}

/** Used JS heap in bytes where the browser exposes it (Chromium's performance.memory), else null. */
export function jsHeapBytes() {
  const m = performance.memory;
  return m && Number.isFinite(m.usedJSHeapSize) ? Math.round(m.usedJSHeapSize) : null;
}

const TEXEL_BYTES = { R32F: 4, RGB32F: 12, RGBA32F: 16, RGB16F: 6, RGBA16F: 8, RGBA32I: 16, R32UI: 4, RGBA32UI: 16,
  R8UI: 1, RGB8UI: 3, R16UI: 2, RGB16UI: 6, RGBA8I: 4 };

/** Bytes of some textures of a SplatData (the baseline uses only the animated targets, SH and order). */
export function textureBytes(textures) {
  return textures.reduce((s, t) => s + t.width * t.height * (t.depth || 1) * TEXEL_BYTES[t.internal], 0);
}

/**
 * `count` parameter vectors from a parsed driving sequence, spread evenly over it (the same list for
 * every mode); without a sequence, deterministic pseudo-random values within each parameter's range.
 */
export function drivingFrames(sequence, parameters, count) {
  if (sequence && sequence.frames.length) {
    const n = sequence.frames.length;
    return Array.from({ length: count }, (_, f) => sequence.frames[Math.floor((f * n) / count) % n]);
  }
  return Array.from({ length: count }, (_, f) => Float32Array.from(parameters, (p, i) =>
    p.min + ((p.max - p.min) * ((f * 7919 + i * 104729) % 1000)) / 1000));
}

/** RMS and max distance (mm) between two [G*3] position arrays. */
export function positionAgreement(a, b, G) {
  let sum = 0;
  let max = 0;
  for (let i = 0; i < G; i++) {
    const dx = a[3 * i] - b[3 * i];
    const dy = a[3 * i + 1] - b[3 * i + 1];
    const dz = a[3 * i + 2] - b[3 * i + 2];
    const d2 = dx * dx + dy * dy + dz * dz;
    sum += d2;
    if (d2 > max) max = d2;
  }
  return { means_rms_mm: round(1e3 * Math.sqrt(sum / Math.max(1, G)), 6), means_max_mm: round(1e3 * Math.sqrt(max), 6) };
}

/** Speed-up and frame ratios between the measured modes (null where a mode is missing). */
export function ratios(modes) {
  const by = Object.fromEntries(modes.map((m) => [m.name, m]));
  const div = (a, b) => (a && b && b > 0 ? round(a / b, 3) : null);
  return {
    animation_speedup: div(by.baseline?.animation_ms?.median, by["agora-m"]?.animation_ms?.median),
    animated_over_static: div(by["agora-m"]?.frame_ms.median, by.static?.frame_ms.median),
    frame_speedup: div(by.baseline?.frame_ms.median, by["agora-m"]?.frame_ms.median),
  };
}

/** One mode's entry of the result document. */
export function modeResult({ name, label, gaussians, animation, frame, downloadBytes, textureBytes: tex, setupMs = 0,
  backend }) {
  const frameStats = summarize(frame);
  return {
    name, label, gaussians, frames: frame.length,
    animation_ms: animation ? summarize(animation) : null,
    frame_ms: frameStats,
    fps: frameStats.median > 0 ? round(1000 / frameStats.median, 2) : 0,
    download_bytes: Math.round(downloadBytes), texture_bytes: Math.round(tex), js_heap_bytes: jsHeapBytes(),
    setup_ms: round(setupMs, 2), backend,
  };
}

const ms = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const mb = (b) => `${(b / 1e6).toFixed(2)} MB`;

/** Table rows for the page: [label, cells...]. */
export function tableRows(result) {
  const rows = result.modes.map((m) => [
    m.label,
    m.animation_ms ? `${ms(m.animation_ms.median)} / ${ms(m.animation_ms.p95)}` : "–",
    `${ms(m.frame_ms.median)} / ${ms(m.frame_ms.p95)}`,
    m.fps.toFixed(1),
    m.gaussians.toLocaleString("en-US"),
    mb(m.download_bytes),
    `${mb(m.texture_bytes)}${m.js_heap_bytes !== null ? ` + heap ${mb(m.js_heap_bytes)}` : ""}`,
    m.backend,
  ]);
  return rows;
}

export const TABLE_HEADERS = ["mode", "animation ms (median / p95)", "frame ms (median / p95)", "FPS", "Gaussians",
  "download", "memory (textures + JS heap)", "backend"];
