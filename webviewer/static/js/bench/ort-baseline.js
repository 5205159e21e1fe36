// The onnxruntime-web baseline of the benchmark page: the full AGORA expression path exported by
// `agora-export onnx` (deformation branch + composition + head-model LBS and 3D lifting) runs in
// onnxruntime-web every frame; its Gaussians are uploaded into the viewer's animated-Gaussian
// targets (the textures the blend pass writes), so the SAME splat renderer draws them.
//
// onnxruntime-web comes from the npm package (package.json, `npm ci`) and is served by the Flask
// server under /ort/ - one ES module bundle and its wasm per execution provider, nothing from a CDN.
// wasm: threads when the page is cross-origin isolated (the server sends COOP/COEP); webgpu and
// webgl: where the browser has them.

import { uploadRows } from "../gpu/gl.js";

export const ORT_MODULES = { wasm: "ort.wasm.bundle.min.mjs", webgpu: "ort.webgpu.bundle.min.mjs", webgl: "ort.webgl.min.mjs" };
const ORT_FILES_WASM = { wasm: "ort-wasm-simd-threaded.wasm", webgpu: "ort-wasm-simd-threaded.asyncify.wasm", webgl: null };
const ORT_BASE = new URL("../../../ort/", import.meta.url);

/** Threads for the wasm backend: up to 4 when cross-origin isolated (SharedArrayBuffer), else 1. */
export function defaultThreads() {
  if (!globalThis.crossOriginIsolated) return 1;
  return Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
}

/** Map the bundle's parameters onto the ONNX condition vector by name (throws if one is missing). */
export function conditionMap(parameters, conditionNames) {
  const where = new Map(conditionNames.map((n, i) => [n, i]));
  return parameters.map((p) => {
    if (!where.has(p.name)) throw new Error(`the ONNX baseline has no condition entry "${p.name}"`);
    return where.get(p.name);
  });
}

async function fetchArrayBuffer(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.arrayBuffer();
}

export class OrtBaseline {
  /**
   * Load onnxruntime-web for `ep`, the model and the identity inputs described by `info` (the
   * server's /baseline JSON, URLs relative to `base`), and create the session.
   */
  static async create(info, parameters, { ep = "wasm", threads = defaultThreads(), base = location.href } = {}) {
    if (!(ep in ORT_MODULES)) throw new Error(`unknown execution provider "${ep}" (wasm, webgpu, webgl)`);
    if (ep === "webgpu" && !navigator.gpu) throw new Error("this browser has no WebGPU");
    const t0 = performance.now();
    const ort = await import(new URL(ORT_MODULES[ep], ORT_BASE).href);
    // only the .wasm is fetched: the bundle carries its own glue module (a prefix string would make
    // it import the separate ort-wasm-*.mjs instead)
    const wasm = ORT_FILES_WASM[ep];
    if (wasm) ort.env.wasm.wasmPaths = { wasm: new URL(wasm, ORT_BASE).href };
    ort.env.wasm.numThreads = ep === "wasm" ? threads : 1;
    ort.env.wasm.proxy = false;
    const [model, inputs] = await Promise.all([fetchArrayBuffer(new URL(info.model_url, base)),
      fetchArrayBuffer(new URL(info.inputs_url, base))]);
    const session = await ort.InferenceSession.create(new Uint8Array(model), {
      executionProviders: [ep], graphOptimizationLevel: "all" });
    return new OrtBaseline(ort, session, info, parameters, inputs, { ep, threads: ort.env.wasm.numThreads,
      setupMs: performance.now() - t0, modelBytes: model.byteLength, inputBytes: inputs.byteLength });
  }

  constructor(ort, session, info, parameters, inputs, meta) {
    this.ort = ort;
    this.session = session;
    this.info = info;
    this.meta = meta;
    this.count = info.num_gaussians;
    this.map = conditionMap(parameters, info.condition_names);
    const fShape = info.inputs.features;
    const wShape = info.inputs.w;
    const nF = fShape.reduce((a, b) => a * b, 1);
    const nW = wShape.reduce((a, b) => a * b, 1);
    if (inputs.byteLength !== 4 * (nF + nW)) throw new Error("the baseline's identity inputs have the wrong size");
    this.features = new ort.Tensor("float32", new Float32Array(inputs, 0, nF), fShape);
    this.w = new ort.Tensor("float32", new Float32Array(inputs, 4 * nF, nW), wShape);
    this.condition = new Float32Array(info.condition_names.length);
    this.packed = null;
  }

  /** Run the expression path for the bundle-ordered parameter vector `params`. */
  async run(params) {
    this.condition.fill(0);
    for (let i = 0; i < this.map.length; i++) this.condition[this.map[i]] = params[i];
    const feeds = {
      condition: new this.ort.Tensor("float32", Float32Array.from(this.condition), [1, this.condition.length]),
      features: this.features,
      w: this.w,
    };
    const out = await this.session.run(feeds);
    const get = async (name) => (out[name].location === "cpu" ? out[name].data : await out[name].getData(true));
    return { means: await get("means"), scales: await get("scales"), quats: await get("quats"),
      opacities: await get("opacities") };
  }

  /** Upload one result into the splat data's animated targets (the blend pass's layout, in the
   * GPU order of the Gaussians). */
  upload(gl, data, g) {
    const G = this.count;
    if (data.count !== G) throw new Error(`the baseline has ${G} Gaussians, the bundle ${data.count}`);
    if (!this.packed) this.packed = [0, 1, 2].map(() => new Float32Array(G * 4));
    const [mo, sc, q] = this.packed;
    for (let i = 0, j = 0; i < G; i++, j += 4) {
      const b = data.perm ? data.perm[i] : i; // bundle index of GPU index i
      const k = b * 3;
      mo[j] = g.means[k];
      mo[j + 1] = g.means[k + 1];
      mo[j + 2] = g.means[k + 2];
      mo[j + 3] = g.opacities[b];
      sc[j] = g.scales[k];
      sc[j + 1] = g.scales[k + 1];
      sc[j + 2] = g.scales[k + 2];
      for (let c = 0; c < 4; c++) q[j + c] = g.quats[b * 4 + c];
    }
    data.animated.textures.forEach((t, a) => uploadRows(gl, t, new Uint32Array(this.packed[a].buffer), G));
    data.animatedSerial++; // the splat renderer projects them again
  }

  async dispose() {
    await this.session.release?.();
  }
}
