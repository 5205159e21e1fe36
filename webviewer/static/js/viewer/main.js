// Entry point: builds the viewer and its UI, opens the bundle (?bundle= URL, the server's first
// bundle, a picked or dropped file), loads the demo driving sequence, and exposes a small API on
// window.agora for tests and benchmarks.
//
// URL parameters: bundle (URL or served name), identity, sequence (URL of a JSON sequence),
// draw (indexed | vertex | instanced), shape (auto | triangle | quad: each splat's primitive, see
// gpu/renderer.js), bg (r,g,b in 0..1), size (WxH fixed drawing buffer),
// sortbits (16..32), autoplay (1).

import { Player, parseSequence } from "./playback.js";
import { isSequenceFile, readSequenceFile } from "../format/sequences.js";
import { attachControls } from "./controls.js";
import { ViewerUI } from "./ui.js";
import { Viewer } from "./viewer.js";
import { LiveDrive } from "../drive/drive.js";

const query = new URLSearchParams(location.search);
const canvas = document.getElementById("canvas");

function parseBackground(text) {
  if (!text) return undefined;
  const v = text.split(",").map(Number);
  return v.length === 3 && v.every((x) => Number.isFinite(x) && x >= 0 && x <= 1) ? v : undefined;
}

const viewer = new Viewer(canvas, {
  drawPath: query.get("draw") || "indexed",
  shape: query.get("shape") || "auto",
  background: parseBackground(query.get("bg")),
  sortBits: Number(query.get("sortbits")) || 16,
  onError: (err) => report("Viewer error", err),
});
const player = new Player((values) => {
  viewer.setParams(values);
  ui?.syncPlayback();
});
let ui = null;
let loadSerial = 0;
let readyResolve = null;

const api = {
  state: "starting",
  error: null,
  label: null,
  ready: null,
  viewer,
};
window.agora = api;

function newReadyPromise() {
  if (readyResolve) return; // the current promise is still pending: keep it
  api.ready = new Promise((resolve) => { readyResolve = resolve; });
}
newReadyPromise();

function setState(state, error = null) {
  api.state = state;
  api.error = error;
  document.documentElement.dataset.state = state;
  if ((state === "ready" || state === "error" || state === "empty") && readyResolve) {
    readyResolve(state);
    readyResolve = null;
  }
}

function report(title, err) {
  const message = err && err.message ? err.message : String(err);
  console.error(title, err);
  ui?.showError(title, message);
  if (!ui) {
    document.getElementById("error-title").textContent = title;
    document.getElementById("error-message").textContent = message;
    document.getElementById("error").hidden = false;
  }
  setState("error", message);
}

window.addEventListener("error", (e) => report("Unexpected error", e.error || e.message));
window.addEventListener("unhandledrejection", (e) => report("Unexpected error", e.reason));

function baseName(url) {
  try {
    return decodeURIComponent(new URL(url, location.href).pathname.split("/").pop()) || url;
  } catch {
    return url;
  }
}

/** Fetch with a progress line in the status box. */
async function fetchBuffer(url, what) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${baseName(url)}: HTTP ${response.status} ${response.statusText}`);
  // a compressed transfer (Content-Encoding br/gzip) announces its compressed length; the server
  // adds the decoded length for the progress line
  const encoded = response.headers.get("Content-Encoding");
  const total = Number(response.headers.get(encoded ? "X-Agora-Decoded-Length" : "Content-Length")) || 0;
  if (!response.body) return response.arrayBuffer();
  const reader = response.body.getReader();
  // write into one buffer of the announced size (no second copy of a 100+ MB bundle); chunks only
  // if the length is unknown or wrong
  let buffer = total ? new Uint8Array(total) : null;
  const chunks = [];
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (buffer && got + value.length <= buffer.length) buffer.set(value, got);
    else {
      if (buffer) chunks.push(buffer.subarray(0, got));
      buffer = null;
      chunks.push(value);
    }
    got += value.length;
    ui?.setStatus(total ? `Loading ${what}… ${Math.min(100, Math.round((100 * got) / total))}%`
      : `Loading ${what}… ${(got / 1e6).toFixed(1)} MB`);
  }
  if (buffer) return got === buffer.length ? buffer.buffer : buffer.slice(0, got).buffer;
  const out = new Uint8Array(got);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out.buffer;
}

/** Open a bundle from bytes; shows a clear message for a bad file. Resolves to the state. */
async function openBytes(buffer, label) {
  const serial = ++loadSerial;
  newReadyPromise();
  setState("loading");
  ui?.clearError();
  ui?.setStatus(`Checking ${label}…`);
  await new Promise((r) => setTimeout(r, 0)); // let the status paint
  try {
    viewer.open(buffer, label);
    api.label = label;
    const identity = Number(query.get("identity"));
    if (identity > 0 && identity < viewer.bundle.identities.length) viewer.setIdentity(identity);
    if (api.sequenceJson) applySequence(api.sequenceJson, api.sequenceLabel, true);
    viewer.renderOnce();
    await viewer.sorter.settled();
    if (serial !== loadSerial) return api.state;
    ui?.setStatus("");
    setState("ready");
    if (!api.paused) viewer.start(onFrame); // (again, if an earlier error stopped the loop)
  } catch (err) {
    // a file that fails validation leaves the current avatar (if any) on screen
    if (serial !== loadSerial) return api.state;
    ui?.setStatus("");
    report(`Could not open ${label}`, err);
  }
  return api.state;
}

async function openUrl(url) {
  const label = baseName(url);
  newReadyPromise();
  setState("loading");
  try {
    ui?.setStatus(`Loading ${label}…`);
    const buffer = await fetchBuffer(url, label);
    return await openBytes(buffer, label);
  } catch (err) {
    ui?.setStatus("");
    report(`Could not open ${label}`, err);
    return api.state;
  }
}

function applySequence(json, label, quiet = false) {
  api.sequenceJson = json;
  api.sequenceLabel = label;
  if (!viewer.bundle) return;
  try {
    ui.setSequence(parseSequence(json, viewer.bundle.parameters, label));
  } catch (err) {
    ui.setSequence(null);
    if (!quiet) report("Could not use the sequence", err);
    else console.warn(err.message);
  }
}

async function openFile(file) {
  if (isSequenceFile(file.name)) { // .json, .csv (ARKit), .npz (VHAP, SMIRK): see sequences.js
    try {
      applySequence(await readSequenceFile(file.name, await file.arrayBuffer()), file.name);
    } catch (err) {
      report(`Could not read ${file.name}`, err);
    }
    return api.state;
  }
  return openBytes(await file.arrayBuffer(), file.name);
}

function screenshot() {
  viewer.renderOnce();
  const name = `${(api.label || "agora").replace(/\.agm$/i, "")}-${new Date().toISOString().replace(/[:.]/g, "-")}.png`;
  canvas.toBlob((blob) => {
    if (!blob) return report("Screenshot failed", new Error("the canvas could not be encoded"));
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }, "image/png");
}

// ------------------------------------------------------------------------------ test / bench API
const b64 = (typed) => {
  const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
};

Object.assign(api, {
  load: (url) => openUrl(url),
  loadBytes: (base64, label = "bytes.agm") => {
    const bin = atob(base64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return openBytes(bytes.buffer, label);
  },
  parameters: () => viewer.bundle?.parameters ?? [],
  getParams: () => Array.from(viewer.params),
  setParams: (values) => {
    if (values && !Array.isArray(values) && !ArrayBuffer.isView(values)) {
      const next = Float32Array.from(viewer.params);
      viewer.bundle.parameters.forEach((p, i) => { if (p.name in values) next[i] = values[p.name]; });
      values = next;
    }
    viewer.setParams(values);
    return Array.from(viewer.params);
  },
  setIdentity: (i) => viewer.setIdentity(i),
  getCamera: () => viewer.camera.toJSON(),
  setCamera: (spec) => viewer.camera.set(spec),
  setSize: (w, h) => viewer.setFixedSize(w && h ? [w, h] : null),
  setBackground: (rgb) => { viewer.background = rgb; },
  setRenderOptions: (opts) => Object.assign(viewer.renderer, opts),
  pause: () => { api.paused = true; viewer.stop(); },
  resume: () => { api.paused = false; viewer.start(onFrame); },
  renderOnce: () => { viewer.renderOnce(); return viewer.stats.visible; },
  /** Render, wait for the order of the current camera and parameters, render again. */
  settled: async () => {
    await viewer.settled();
    return viewer.stats.visible;
  },
  readCoefficients: () => {
    viewer.animate();
    const c = viewer.generator.readCoefficients();
    return Object.fromEntries(Object.entries(c).map(([k, v]) => [k, Array.from(v)]));
  },
  readBlended: () => {
    viewer.animate();
    const r = viewer.generator.readBlended();
    return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, b64(v)]));
  },
  readPixels: () => {
    viewer.renderOnce();
    const { width, height, pixels } = viewer.readPixels();
    return { width, height, pixels: b64(pixels) };
  },
  stats: () => ({ ...viewer.stats, sorts: viewer.sorter?.stats.sorts ?? 0, drawPath: viewer.drawPath,
    shape: viewer.shape, gpuBytes: viewer.data?.gpuBytes() ?? 0 }),
  player,
  openSequence: async (url) => applySequence(await readSequenceFile(baseName(url), await (await fetch(url)).arrayBuffer()),
    baseName(url)),
  /**
   * Frame-time benchmark: `frames` frames after `warmup`, each forced to finish on the GPU with a
   * 1-pixel readPixels (gl.finish does not wait under SwiftShader). mode "static": one splat pass;
   * "animated": new parameters every frame, MLP + blend + splat pass; "blend": MLP + blend only.
   * The sort is in neither (it runs in the worker); the order stays fixed during a run.
   */
  bench: ({ frames = 10, mode = "static", warmup = 2 } = {}) => {
    viewer.stop();
    player.pause();
    const P = viewer.params.length;
    const params = viewer.bundle.parameters;
    const times = [];
    for (let f = 0; f < warmup + frames; f++) {
      const t0 = performance.now();
      if (mode !== "static") {
        for (let i = 0; i < P; i++) {
          viewer.params[i] = params[i].min + ((params[i].max - params[i].min) * ((f * 7919 + i * 104729) % 1000)) / 1000;
        }
        viewer.paramsVersion++;
        viewer.animate();
      }
      if (mode === "blend") {
        viewer.syncGpu(viewer.data.animated);
      } else {
        const [w, h] = viewer.drawingSize();
        viewer.renderer.draw(viewer.camera.view(w, h), viewer.background);
        viewer.syncGpu();
      }
      if (f >= warmup) times.push(performance.now() - t0);
    }
    return times;
  },
  /** Sorter stats (worker sort time) of `n` sorts with new parameters. */
  benchSort: async (n = 3) => {
    const out = [];
    for (let k = 0; k < n; k++) {
      const v = Float32Array.from(viewer.bundle.parameters, (p, i) => p.min + (p.max - p.min) * (((k + 1) * 31 + i * 17) % 100) / 100);
      viewer.setParams(v);
      await viewer.settled();
      out.push({ ...viewer.sorter.stats });
    }
    return out;
  },
});

function onFrame(t) {
  player.update(t);
  if (ui && viewer.stats.frames % 10 === 0) ui.updateHud(viewer.stats);
}

async function boot() {
  try {
    await viewer.init();
  } catch (err) {
    report("WebGL2 is not available", err);
    return;
  }
  ui = new ViewerUI(viewer, player, { onOpenFile: openFile, onScreenshot: screenshot });
  attachControls(canvas, viewer);
  api.drive = new LiveDrive(viewer, { onStart: () => { player.pause(); ui.syncPlayback(); } });
  api.drive.attachUI();
  const size = /^(\d+)x(\d+)$/.exec(query.get("size") || "");
  if (size) viewer.setFixedSize([Number(size[1]), Number(size[2])]);
  viewer.start(onFrame);

  const sequenceUrl = query.get("sequence") || "static/sequences/demo.json";
  const sequence = fetch(sequenceUrl)
    .then(async (r) => (r.ok ? readSequenceFile(baseName(sequenceUrl), await r.arrayBuffer()) : null))
    .catch((err) => { console.warn(err.message); return null; });

  let url = query.get("bundle");
  if (url && !url.includes("/")) url = `bundles/${encodeURIComponent(url)}`;
  if (!url) {
    try {
      const list = await (await fetch("bundles.json")).json();
      url = list[0]?.url;
    } catch {
      url = null;
    }
  }
  const seqJson = await sequence;
  if (seqJson) {
    api.sequenceJson = seqJson;
    api.sequenceLabel = baseName(sequenceUrl);
  }
  if (!url) {
    setState("empty");
    ui.setStatus("Open or drop an .agm bundle");
    return;
  }
  await openUrl(url);
  if (query.get("autoplay") === "1" && player.sequence) {
    player.play();
    ui.syncPlayback();
  }
}

boot();
