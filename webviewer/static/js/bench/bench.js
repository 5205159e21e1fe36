// The benchmark page (/bench): AGORA-M against the onnxruntime-web AGORA baseline on this device.
//
// One viewer, one bundle, one canvas, one camera, one depth order, one driving sequence. Three runs
// one after the other, each `frames` frames after `warmup` frames, every frame ended by a 1-pixel
// readPixels (honest GPU completion; gl.finish does not wait everywhere):
//   static    the splat pass alone (an idle avatar);
//   agora-m   new parameters -> MLP + blend passes (animation, timed up to the animated targets being
//             complete) -> splat pass;
//   baseline  new parameters -> onnxruntime-web runs the full AGORA expression path -> upload into the
//             same animated targets (animation, timed the same way) -> the same splat pass.
// The depth order is computed once before the runs and kept (the sort runs in a worker in the viewer
// and is in no mode's time). "Send results" posts the JSON to the server, which keeps it.
//
// URL parameters: frames, warmup, size (WxH drawing buffer; default the canvas's size), ep (wasm |
// webgpu | webgl), threads, bundle, sequence, draw, autorun (1: run at load).

import { parseSequence } from "../viewer/playback.js";
import { Viewer } from "../viewer/viewer.js";
import { OrtBaseline, defaultThreads } from "./ort-baseline.js";
import {
  SCHEMA_ID, TABLE_HEADERS, describeDevice, drivingFrames, modeResult, positionAgreement, ratios, tableRows,
  textureBytes,
} from "./bench-stats.js";

const query = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const viewer = new Viewer(canvas, { drawPath: query.get("draw") || "indexed", shape: query.get("shape") || "auto",
  onError: (err) => fail(err) });

const api = { state: "starting", error: null, result: null, saved: null, progress: "" };
window.agoraBench = api;
let env = null; // bundle, sequence, baseline info, ORT file sizes
let resolveReady;
api.ready = new Promise((r) => { resolveReady = r; });

function setState(state, error = null) {
  api.state = state;
  api.error = error;
  document.documentElement.dataset.state = state;
  if (state !== "starting" && state !== "loading" && resolveReady) {
    resolveReady(state);
    resolveReady = null;
  }
}

function status(text) {
  api.progress = text;
  $("status").textContent = text;
}

function fail(err) {
  const message = err?.message ?? String(err);
  console.error(err);
  $("error").textContent = message;
  $("error").hidden = false;
  setState("error", message);
}

const nextTask = () => new Promise((r) => setTimeout(r, 0));

async function fetchJson(url) {
  const r = await fetch(url);
  return r.ok ? r.json() : null;
}

async function fetchBuffer(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.arrayBuffer();
}

function clampInt(value, fallback, min, max) {
  const v = Number(value);
  return value !== null && value !== "" && Number.isInteger(v) && v >= min && v <= max ? v : fallback;
}

const intParam = (name, fallback, min, max) => clampInt(query.get(name), fallback, min, max);

// ------------------------------------------------------------------------------ loading
async function load() {
  setState("loading");
  await viewer.init();
  const size = /^(\d+)x(\d+)$/.exec(query.get("size") || "");
  if (size) viewer.setFixedSize([Number(size[1]), Number(size[2])]);
  let url = query.get("bundle");
  if (url && !url.includes("/")) url = `bundles/${encodeURIComponent(url)}`;
  const list = (await fetchJson("bundles.json")) || [];
  const entry = url ? { name: decodeURIComponent(url.split("/").pop()), url } : list[0];
  if (!entry) throw new Error("this server serves no bundle");
  status(`Loading ${entry.name}…`);
  const seqUrl = query.get("sequence") || "static/sequences/demo.json";
  const [buffer, seqJson, baseline, ort] = await Promise.all([fetchBuffer(entry.url), fetchJson(seqUrl),
    fetchJson("baseline.json"), fetchJson("bench/ort.json")]);
  const bundle = viewer.open(buffer, entry.name);
  let sequence = null;
  try {
    sequence = seqJson ? parseSequence(seqJson, bundle.parameters, seqUrl.split("/").pop()) : null;
  } catch (err) {
    console.warn(err.message);
  }
  env = { name: entry.name, bytes: buffer.byteLength, bundle, sequence, baseline, ort };
  await viewer.settled();
  describePage();
  status("");
  setState("ready");
}

function describePage() {
  const b = env.bundle;
  const lines = [`${env.name}: ${b.gaussianCount.toLocaleString("en-US")} Gaussians, ${(env.bytes / 1e6).toFixed(2)} MB`,
    env.sequence ? `driving sequence: ${env.sequence.label} (${env.sequence.numFrames} frames)` : "driving sequence: none (pseudo-random parameters)",
    env.baseline ? `ONNX baseline: ${(env.baseline.model_bytes / 1e6).toFixed(2)} MB, ${env.baseline.source}`
      : "ONNX baseline: not served (start the server with --bench)",
    isolationLine(defaultThreads())];
  $("info").textContent = lines.join("\n");
  const select = $("ep");
  for (const option of select.options) {
    option.disabled = !env.ort?.providers?.[option.value] || (option.value === "webgpu" && !navigator.gpu);
  }
  select.value = query.get("ep") || "wasm";
  $("frames").value = String(intParam("frames", 30, 1, 1000));
}

/**
 * Whether the page is cross-origin isolated and how many onnxruntime-web (wasm) threads that allows;
 * over plain HTTP from another machine (a phone on the LAN) the page is not a secure context, so not
 * isolated, and onnxruntime-web runs one thread.
 */
function isolationLine(threads) {
  const isolated = Boolean(globalThis.crossOriginIsolated);
  const how = isolated ? "cross-origin isolated" : globalThis.isSecureContext
    ? "NOT cross-origin isolated" : "NOT cross-origin isolated (not a secure context: use agora-export serve --https)";
  return `${how}; onnxruntime-web wasm threads: ${threads}`;
}

// ------------------------------------------------------------------------------ the runs
/** Time `frames` frames after `warmup`; `animate(f)` (may be async) produces frame f's Gaussians. */
async function timeFrames(label, frames, warmup, animate) {
  const gl = viewer.gl;
  const [w, h] = viewer.drawingSize();
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const view = viewer.camera.view(w, h);
  const anim = [];
  const frame = [];
  for (let f = 0; f < warmup + frames; f++) {
    status(`${label}: frame ${f + 1} of ${warmup + frames}${f < warmup ? " (warm-up)" : ""}`);
    await nextTask(); // keep the page responsive between frames (not timed)
    const t0 = performance.now();
    if (animate) {
      await animate(f);
      viewer.syncGpu(viewer.data.animated);
    }
    const t1 = performance.now();
    viewer.renderer.draw(view, viewer.background);
    viewer.syncGpu();
    const t2 = performance.now();
    if (f >= warmup) {
      if (animate) anim.push(t1 - t0);
      frame.push(t2 - t0);
    }
  }
  gl.flush();
  return { animation: animate ? anim : null, frame };
}

function setViewerParams(values) {
  viewer.params.set(values);
  viewer.paramsVersion++;
}

async function runBaseline(options, frames, driving, errors) {
  if (!env.baseline) {
    errors.push("baseline not run: the server serves no ONNX baseline (agora-export serve --bench)");
    return null;
  }
  status(`Loading onnxruntime-web (${options.ep}) and the ONNX model…`);
  let baseline;
  try {
    baseline = await OrtBaseline.create(env.baseline, env.bundle.parameters, { ep: options.ep, threads: options.threads });
  } catch (err) {
    errors.push(`baseline not run: ${err.message}`);
    return null;
  }
  const gl = viewer.gl;
  const data = viewer.data;
  const times = await timeFrames(`ONNX baseline (${options.ep})`, options.frames, options.warmup, async (f) => {
    baseline.upload(gl, data, await baseline.run(driving[f]));
  });
  // the animated targets now hold baseline Gaussians: make the viewer recompute its own next time
  viewer.animatedVersion = -1;
  const ortFiles = env.ort?.files?.[options.ep] ?? [];
  const ortBytes = ortFiles.reduce((s, name) => s + (env.ort.bytes[name] || 0), 0);
  // the colour (SH as stored: f16, or .agm 1.1 quantised), constant: not in the ONNX path
  const q = env.bundle.identities[0].neutralQ;
  const shBytes = q ? q.sh_dc.data.byteLength + q.sh_rest.data.byteLength : env.bundle.gaussianCount * 4 * 3 * 2;
  const used = [...data.animated.textures, ...(data.quantizedNeutral ? [data.shPacked, data.shPacked2].filter(Boolean) : [data.sh]), data.order];
  return {
    baseline,
    mode: modeResult({ name: "baseline", label: "AGORA, onnxruntime-web", gaussians: baseline.count,
      animation: times.animation, frame: times.frame,
      downloadBytes: baseline.meta.modelBytes + baseline.meta.inputBytes + ortBytes + shBytes,
      textureBytes: textureBytes(used), setupMs: baseline.meta.setupMs,
      backend: `onnxruntime-web ${baseline.ort.env.versions?.web ?? ""} ${options.ep}, ${baseline.meta.threads} thread(s)` }),
  };
}

/** Positions from both paths for the same parameters (read back from the GPU). */
async function agreement(baseline, params, frameIndex) {
  setViewerParams(params);
  viewer.animate(true);
  const ours = viewer.generator.readBlended().means;
  baseline.upload(viewer.gl, viewer.data, await baseline.run(params));
  const theirs = viewer.generator.readBlended().means;
  viewer.animatedVersion = -1;
  return { ...positionAgreement(ours, theirs, viewer.data.count), frame: frameIndex };
}

async function run(opts = {}) {
  if (api.state === "running") throw new Error("a run is already in progress");
  try {
    return await runModes(opts);
  } finally {
    $("run").disabled = false;
  }
}

async function runModes(opts) {
  if (!env) throw new Error(`the page is not ready (${api.state})`);
  const options = {
    frames: opts.frames ?? clampInt($("frames").value, 30, 1, 1000),
    warmup: opts.warmup ?? intParam("warmup", 3, 0, 100),
    ep: opts.ep ?? $("ep").value,
    threads: opts.threads ?? intParam("threads", defaultThreads(), 1, 64),
  };
  setState("running");
  $("run").disabled = $("send").disabled = true;
  $("error").hidden = true;
  api.saved = null;
  $("saved").textContent = "";
  const b = env.bundle;
  const data = viewer.data;
  const driving = drivingFrames(env.sequence, b.parameters, options.warmup + options.frames);
  const errors = [];
  const modes = [];
  const [w, h] = viewer.drawingSize();

  const stat = await timeFrames("static frame", options.frames, options.warmup, null);
  modes.push(modeResult({ name: "static", label: "static frame (splat pass)", gaussians: b.gaussianCount,
    animation: null, frame: stat.frame, downloadBytes: env.bytes, textureBytes: data.gpuBytes(),
    backend: `WebGL2 ${viewer.drawPath} ${viewer.shape}` }));

  const agm = await timeFrames("AGORA-M", options.frames, options.warmup, (f) => {
    setViewerParams(driving[f]);
    viewer.animate();
  });
  modes.push(modeResult({ name: "agora-m", label: "AGORA-M (WebGL2 MLP + blend)", gaussians: b.gaussianCount,
    animation: agm.animation, frame: agm.frame, downloadBytes: env.bytes, textureBytes: data.gpuBytes(),
    backend: `WebGL2 ${viewer.drawPath} ${viewer.shape}` }));

  const base = await runBaseline(options, options.frames, driving, errors);
  let agree = null;
  if (base) {
    modes.push(base.mode);
    const k = Math.floor(driving.length / 2);
    agree = await agreement(base.baseline, driving[k], k);
    await base.baseline.dispose();
  }
  const device = describeDevice(viewer.gl);
  api.result = {
    schema: SCHEMA_ID,
    created: new Date().toISOString(),
    user_agent: navigator.userAgent.slice(0, 512),
    device,
    bundle: { name: env.name.slice(0, 512), gaussians: b.gaussianCount, bytes: env.bytes, identity: viewer.identity },
    settings: { frames: options.frames, warmup: options.warmup, width: w, height: h, draw_path: viewer.drawPath,
      sequence: env.sequence ? env.sequence.label : "pseudo-random", ep: options.ep,
      threads: base ? base.baseline.meta.threads : options.threads, order: "fixed (sorted once before the runs)" },
    modes,
    ratios: ratios(modes),
    agreement: agree,
    baseline: env.baseline ? { source: env.baseline.source.slice(0, 512), model_bytes: env.baseline.model_bytes,
      match_max_m: env.baseline.match_max_m } : null,
    errors: errors.map((e) => e.slice(0, 512)),
  };
  showResult(api.result);
  viewer.renderOnce();
  status(errors.length ? errors.join("; ") : "Done. Tap “Send results” to keep them on the computer.");
  $("run").disabled = false;
  $("send").disabled = false;
  setState("done");
  return api.result;
}

function showResult(result) {
  const table = $("results");
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  for (const h of TABLE_HEADERS) head.append(Object.assign(document.createElement("th"), { textContent: h }));
  const body = table.createTBody();
  for (const row of tableRows(result)) {
    const tr = body.insertRow();
    row.forEach((cell) => { tr.insertCell().textContent = cell; });
  }
  const r = result.ratios;
  const a = result.agreement;
  $("summary").textContent = [
    `Ran ${result.device.cross_origin_isolated ? "" : "NOT "}cross-origin isolated, onnxruntime-web ${result.settings.ep} with ${result.settings.threads} thread(s).`,
    r.animation_speedup !== null ? `AGORA-M animates ${r.animation_speedup}x faster than the ONNX baseline (medians).` : "",
    r.animated_over_static !== null ? `An AGORA-M animated frame costs ${r.animated_over_static}x a static frame.` : "",
    a ? `Same avatar: positions of both paths agree to ${a.means_rms_mm.toFixed(3)} mm RMS (max ${a.means_max_mm.toFixed(3)} mm).` : "",
    `GPU: ${result.device.gpu ?? result.device.gl_renderer}. ${result.settings.width}x${result.settings.height}, ${result.settings.frames} frames per mode.`,
  ].filter(Boolean).join("\n");
}

async function send() {
  if (!api.result) throw new Error("nothing to send: run the benchmark first");
  $("send").disabled = true;
  status("Sending…");
  const r = await fetch("bench/results", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(api.result) });
  const reply = await r.json().catch(() => null);
  $("send").disabled = false;
  if (!r.ok && reply === null) return download(api.result); // a static site (agora-export site): no server to keep it
  if (!r.ok) throw new Error(`the server did not keep the result: ${reply.error ?? `HTTP ${r.status}`}`);
  api.saved = reply.saved;
  $("saved").textContent = `Saved on the computer as ${reply.saved}`;
  status("");
  return reply.saved;
}

/** Offer the result as a JSON file (where no agora server takes posts). */
function download(result) {
  const name = `agora-bench-${result.created.replace(/[^0-9A-Za-z]+/g, "-")}.json`;
  const link = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(new Blob([JSON.stringify(result, null, 2)], { type: "application/json" })), download: name });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  api.saved = name;
  $("saved").textContent = `No server keeps results here: downloaded as ${name}`;
  status("");
  return name;
}

Object.assign(api, {
  run,
  send,
  /** Parameters of frame k of a run of `count` frames (warm-up included), as the runs use them. */
  drivingFrame: (k, count) => drivingFrames(env.sequence, env.bundle.parameters, count)[k],
  /** The baseline's Gaussians for a bundle-ordered parameter vector (tests): plain arrays. */
  baselineGaussians: async (params, ep = "wasm") => {
    const baseline = await OrtBaseline.create(env.baseline, env.bundle.parameters, { ep, threads: 1 });
    const g = await baseline.run(Float32Array.from(params));
    await baseline.dispose();
    return Object.fromEntries(Object.entries(g).map(([k, v]) => [k, Array.from(v)]));
  },
});

$("run").addEventListener("click", () => run().catch(fail));
$("send").addEventListener("click", () => send().catch(fail));

load().then(() => {
  if (query.get("autorun") === "1") return run();
  return null;
}).catch(fail);
