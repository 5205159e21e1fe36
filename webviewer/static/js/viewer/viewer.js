// The viewer: owns the WebGL2 context, the current bundle's splat data, the generator passes,
// the sorter and the splat renderer, and runs the frame loop.
//
// Per frame: if the parameters or the identity changed, run the generator (MLP + blend) once and
// start an asynchronous read-back of the animated positions (at most every `resortIntervalMs`, 100
// ms by default: under animation the depth order is refreshed ~10 times a second, not every frame;
// a moving camera re-sorts at once, with the latest positions); when read-back positions arrive or
// the camera changed, ask the worker for a new order (asynchronously: the frame draws with the order
// it has); then the splat rendering (projection pass if needed, splat pass). An idle avatar costs at
// most one splat pass per frame - none at all while nothing (camera, parameters, order, size)
// changes, since the browser keeps showing the last frame.

import { readAgm } from "../format/agm.js";
import { OrbitCamera, cameraForBundle } from "./camera.js";
import { Generator, loadGeneratorSources } from "../gpu/generator.js";
import { SplatRenderer, loadSplatProgram, resolveShape } from "../gpu/renderer.js";
import { PositionReadback } from "../gpu/readback.js";
import { Sorter } from "../gpu/sorter.js";
import { SplatData } from "../gpu/splat-data.js";

export class Viewer {
  constructor(canvas, { drawPath = "indexed", shape = "auto", background = [0.11, 0.11, 0.13], maxPixelRatio = 2,
    sortBits = 16, resortIntervalMs = 100, onError = null } = {}) {
    this.canvas = canvas;
    this.drawPath = drawPath;
    this.shape = shape;
    this.resortIntervalMs = resortIntervalMs;
    this.background = background;
    this.maxPixelRatio = maxPixelRatio;
    this.sortBits = sortBits;
    this.onError = onError;
    this.fixedSize = null;
    this.camera = new OrbitCamera();
    this.bundle = null;
    this.params = new Float32Array(0);
    this.paramsVersion = 0;
    this.identity = 0;
    this.animatedVersion = -1;
    this.sortedFor = "";
    this.running = false;
    this.listeners = new Set();
    this.stats = { fps: 0, animMs: 0, animSource: "cpu", animRuns: 0, gaussians: 0, visible: 0, sortMs: 0,
      readbackMs: 0, readbacks: 0, frames: 0 };
    this.frameTimes = [];
  }

  async init() {
    const gl = this.canvas.getContext("webgl2", { alpha: false, antialias: false, depth: false, stencil: false,
      premultipliedAlpha: true, preserveDrawingBuffer: false, powerPreference: "high-performance" });
    if (!gl) throw new Error("this viewer needs WebGL2, which this browser or device does not provide");
    this.gl = gl;
    this.timerExt = gl.getExtension("EXT_disjoint_timer_query_webgl2");
    this.queries = [];
    this.canvas.addEventListener("webglcontextlost", (e) => {
      e.preventDefault();
      this.fail(new Error("the WebGL context was lost (GPU reset or memory pressure); reload the page"));
    });
    this.shape = resolveShape(gl, this.shape);
    [this.genSources, this.splatProgram] = await Promise.all([loadGeneratorSources(),
      loadSplatProgram(gl, this.drawPath, this.shape)]);
  }

  fail(err) {
    this.onError?.(err);
  }

  /** Parse, validate and upload a bundle (ArrayBuffer); replaces the current one. Throws on a bad file. */
  open(buffer, label) {
    const bundle = readAgm(buffer, label);
    this.close();
    const gl = this.gl;
    const cam = cameraForBundle(bundle);
    const forward = cam.target.map((v, i) => v - cam.position[i]);
    const data = new SplatData(gl, bundle, { forward: forward.map((v) => v / Math.hypot(...forward)) });
    try {
      this.data = data;
      this.generator = new Generator(gl, data, this.genSources);
      this.renderer = new SplatRenderer(gl, data, this.splatProgram, this.drawPath, this.shape);
      this.readback = new PositionReadback(gl, data, { minIntervalMs: this.resortIntervalMs });
      this.sorter = new Sorter(bundle.gaussianCount, {
        bits: this.sortBits,
        onSorted: (order, count) => {
          if (this.data === data) data.setOrder(order, count);
        },
        onError: (err) => this.fail(err),
      });
    } catch (err) {
      data.dispose();
      this.data = null;
      throw err;
    }
    this.bundle = bundle;
    this.identity = 0;
    this.params = Float32Array.from(bundle.parameters.map((p) => p.default));
    this.paramsVersion++;
    this.camera.set(cameraForBundle(bundle));
    this.sortedFor = "";
    this.stats.gaussians = bundle.gaussianCount;
    this.emit("bundle");
    return bundle;
  }

  close() {
    if (!this.data) return;
    this.sorter?.dispose();
    this.readback?.dispose();
    this.renderer?.dispose();
    this.generator?.dispose();
    this.data.dispose();
    this.data = this.sorter = this.readback = this.renderer = this.generator = null;
    this.bundle = null;
  }

  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  emit(what) {
    for (const fn of this.listeners) fn(what, this);
  }

  // ------------------------------------------------------------------------------- animation state
  setParams(values) {
    if (!this.bundle) return;
    const P = this.params.length;
    let changed = false;
    for (let i = 0; i < P; i++) {
      const v = Number(values[i] ?? this.bundle.parameters[i].default);
      const f = Math.fround(Number.isFinite(v) ? v : 0);
      if (f !== this.params[i]) {
        this.params[i] = f;
        changed = true;
      }
    }
    if (changed) {
      this.paramsVersion++;
      this.emit("params");
    }
  }

  setParam(index, value) {
    const next = Float32Array.from(this.params);
    next[index] = value;
    this.setParams(next);
  }

  setIdentity(i) {
    if (!this.bundle || i === this.identity) return;
    if (!(i >= 0 && i < this.bundle.identities.length)) throw new Error(`no identity ${i}`);
    this.data.setIdentity(i);
    this.identity = i;
    this.paramsVersion++;
    this.emit("identity");
  }

  get animationKey() {
    return `${this.identity}:${this.paramsVersion}`;
  }

  /** Run the generator passes if the animation state changed since the last run. */
  animate(force = false) {
    if (!this.data || (!force && this.animatedVersion === this.paramsVersion)) return false;
    const gl = this.gl;
    this.data.setParams(this.params);
    const t0 = performance.now();
    const q = this.beginTimer();
    this.generator.run();
    this.endTimer(q);
    this.stats.animCpuMs = performance.now() - t0;
    if (!q) {
      this.stats.animMs = this.stats.animCpuMs;
      this.stats.animSource = "cpu";
    }
    this.stats.animRuns++;
    this.animatedVersion = this.paramsVersion;
    this.readback.request(this.data.animatedSerial, this.generator.lastRows);
    gl.flush();
    return true;
  }

  beginTimer() {
    const ext = this.timerExt;
    if (!ext || this.queries.length > 4) return null;
    const q = this.gl.createQuery();
    this.gl.beginQuery(ext.TIME_ELAPSED_EXT, q);
    return q;
  }

  endTimer(q) {
    if (!q) return;
    this.gl.endQuery(this.timerExt.TIME_ELAPSED_EXT);
    this.queries.push(q);
  }

  pollTimers() {
    const gl = this.gl;
    const ext = this.timerExt;
    if (!ext) return;
    while (this.queries.length) {
      const q = this.queries[0];
      if (!gl.getQueryParameter(q, gl.QUERY_RESULT_AVAILABLE)) break;
      const disjoint = gl.getParameter(ext.GPU_DISJOINT_EXT);
      const ns = gl.getQueryParameter(q, gl.QUERY_RESULT);
      if (!disjoint) {
        this.stats.animMs = ns / 1e6;
        this.stats.animSource = "gpu";
      }
      gl.deleteQuery(q);
      this.queries.shift();
    }
  }

  /** Hand finished read-back positions to the sorter, and ask it for a new order when they or the
   * camera changed. Never waits. */
  requestSort(view) {
    const got = this.readback.poll();
    if (got) this.sorter.setPositions(got.serial, got.positions);
    if (this.sorter.positionsKey === null) return;
    const key = `${this.sorter.positionsKey}|${this.camera.version}`;
    if (key === this.sortedFor) return;
    this.sortedFor = key;
    this.sorter.request(view, this.renderer.near, this.renderer.far);
  }

  /** Render, wait until the order for the current animation and camera is in use, render again. */
  async settled() {
    this.renderOnce();
    if (!this.data) return;
    const [w, h] = this.drawingSize();
    const data = this.data;
    while (this.data === data && !this.readback.current) {
      this.readback.flush(); // no waiting out the re-sort interval here
      await new Promise((resolve) => setTimeout(resolve, 1));
      if (this.data === data) this.requestSort(this.camera.view(w, h));
    }
    if (this.data !== data) return; // another bundle was opened meanwhile
    this.requestSort(this.camera.view(w, h));
    await this.sorter.settled();
    this.renderOnce();
  }

  // ----------------------------------------------------------------------------------- rendering
  drawingSize() {
    if (this.fixedSize) return this.fixedSize;
    const dpr = Math.min(window.devicePixelRatio || 1, this.maxPixelRatio);
    const w = Math.max(1, Math.round(this.canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(this.canvas.clientHeight * dpr));
    return [w, h];
  }

  /** Fix the drawing buffer to width x height pixels (null: follow the element size). */
  setFixedSize(size) {
    this.fixedSize = size;
  }

  /** One frame: animation if needed, sort request, splat pass. With `skipIfIdle`, nothing is drawn
   * when nothing changed since the last frame (the browser keeps showing it: an idle avatar costs
   * nothing). */
  renderOnce({ skipIfIdle = false } = {}) {
    const [w, h] = this.drawingSize();
    if (this.data) this.requestSort(this.camera.view(w, h)); // even when idle: positions may have arrived
    const key = `${w}x${h}|${this.animationKey}|${this.camera.version}|${this.data?.orderSerial}|${this.background}|` +
      `${this.renderer?.eps2d}|${Boolean(this.data)}`;
    if (skipIfIdle && key === this.lastFrameKey) {
      this.stats.idle = true;
      return null;
    }
    this.stats.idle = false;
    this.lastFrameKey = key;
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    const gl = this.gl;
    if (!this.data) {
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      gl.viewport(0, 0, w, h);
      gl.clearColor(...this.background, 1);
      gl.clear(gl.COLOR_BUFFER_BIT);
      return null;
    }
    this.animate();
    const view = this.camera.view(w, h);
    this.renderer.draw(view, this.background);
    this.pollTimers();
    this.stats.visible = this.data.splatCount || 0;
    this.stats.sortMs = this.sorter.stats.sortMs;
    this.stats.readbackMs = this.readback.copyMs;
    this.stats.readbacks = this.readback.copies;
    return view;
  }

  /** The drawing buffer as top-down RGBA bytes (call right after renderOnce, same task). */
  readPixels() {
    const gl = this.gl;
    const w = this.canvas.width;
    const h = this.canvas.height;
    const buf = new Uint8Array(w * h * 4);
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, null);
    gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, buf);
    const out = new Uint8Array(w * h * 4);
    for (let y = 0; y < h; y++) out.set(buf.subarray((h - 1 - y) * w * 4, (h - y) * w * 4), y * w * 4);
    return { width: w, height: h, pixels: out };
  }

  /** Wait for the GPU to finish (a 1-pixel readPixels: gl.finish does not wait everywhere), from
   * the canvas or from an RGBA32UI target. */
  syncGpu(target = null) {
    const gl = this.gl;
    if (target) {
      const px = new Uint32Array(4);
      gl.bindFramebuffer(gl.READ_FRAMEBUFFER, target.fbo);
      gl.readBuffer(gl.COLOR_ATTACHMENT0);
      gl.readPixels(0, 0, 1, 1, gl.RGBA_INTEGER, gl.UNSIGNED_INT, px);
      gl.bindFramebuffer(gl.READ_FRAMEBUFFER, null);
      return px;
    }
    const px = new Uint8Array(4);
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, null);
    gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
    return px;
  }

  start(onFrame) {
    if (this.running) return;
    this.running = true;
    const loop = (t) => {
      if (!this.running) return;
      try {
        onFrame?.(t);
        this.renderOnce({ skipIfIdle: true });
        this.tick(t);
      } catch (err) {
        this.running = false;
        this.fail(err);
        return;
      }
      requestAnimationFrame(loop);
    };
    requestAnimationFrame(loop);
  }

  stop() {
    this.running = false;
  }

  tick(t) {
    this.stats.frames++;
    const times = this.frameTimes;
    times.push(t);
    while (times.length > 2 && t - times[0] > 1000) times.shift();
    if (times.length > 1) this.stats.fps = ((times.length - 1) * 1000) / (t - times[0]);
  }
}
