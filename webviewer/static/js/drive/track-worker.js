// Face tracking off the main thread: a module Web Worker running @vladmandic/human (TensorFlow.js:
// its WebAssembly backend, else WebGL on an OffscreenCanvas, else plain JavaScript) with the
// BlazeFace detector, the 468-point FaceMesh and the iris model, all served by our own server
// (/drive/human/ and /drive/tfjs-wasm/, from the pinned npm packages: nothing from a CDN or a model hub).
//
// Messages in:  {type: "init", base, backends?}           base: URL of /drive/ (human/, tfjs-wasm/)
//               {type: "frame", seq, bitmap, t}           an ImageBitmap (transferred; closed here)
// Messages out: {type: "ready", backend, initMs}
//               {type: "error", message}
//               {type: "result", seq, t, ms, face: null | {mesh: Float32Array(3 * 478), rotation: [yaw, pitch, roll],
//                 score, box: [x, y, w, h], width, height}}

let human = null;
// TensorFlow.js backends, fastest first: WebAssembly (SIMD, threads when cross-origin isolated),
// WebGL on an OffscreenCanvas, plain JavaScript
const BACKENDS = ["wasm", "webgl", "cpu"];

/** The tracker's settings: only the face models, no warm-up, nothing cached in IndexedDB. */
function trackerConfig(base, backend) {
  const off = { enabled: false };
  return {
    backend,
    modelBasePath: new URL("human/models/", base).href,
    wasmPath: new URL("tfjs-wasm/", base).href,
    wasmPlatformFetch: false,
    cacheModels: false,
    warmup: "none",
    debug: false,
    async: true,
    filter: { enabled: false },
    gesture: off,
    body: off,
    hand: off,
    object: off,
    segmentation: off,
    face: {
      enabled: true,
      detector: { rotation: true, maxDetected: 1, minConfidence: 0.2, skipFrames: 15, skipTime: 1000, return: false },
      mesh: { enabled: true },
      iris: { enabled: true },
      attention: off,
      emotion: off,
      description: off,
      antispoof: off,
      liveness: off,
    },
  };
}

async function start(base, backends = BACKENDS) {
  const t0 = performance.now();
  const { Human } = await import(new URL("human/dist/human.esm.js", base).href);
  let lastError = null;
  for (const backend of backends) {
    try {
      const h = new Human(trackerConfig(base, backend));
      // one wasm thread: tfjs's threaded build starts its threads from blob: URLs, which the CSP refuses
      h.tf.env().set("WASM_HAS_MULTITHREAD_SUPPORT", false);
      await h.load();
      await h.tf.ready();
      if (h.tf.getBackend() !== backend) throw new Error(`backend ${backend} did not start`);
      human = h;
      return { backend, initMs: performance.now() - t0 };
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError || new Error("no TensorFlow.js backend started");
}

function toResult(face, width, height) {
  if (!face || !face.mesh || face.mesh.length < 468) return null;
  const mesh = new Float32Array(face.mesh.length * 3);
  face.mesh.forEach((p, i) => { mesh[3 * i] = p[0]; mesh[3 * i + 1] = p[1]; mesh[3 * i + 2] = p[2] || 0; });
  const angle = face.rotation?.angle || { yaw: 0, pitch: 0, roll: 0 };
  return { mesh, rotation: [angle.yaw, angle.pitch, angle.roll], score: face.score ?? 0, box: face.box, width, height };
}

async function track(msg) {
  const t0 = performance.now();
  const { bitmap } = msg;
  try {
    const res = await human.detect(bitmap);
    const face = toResult(res.face?.[0], bitmap.width, bitmap.height);
    const out = { type: "result", seq: msg.seq, t: msg.t, ms: performance.now() - t0, face };
    postMessage(out, face ? [face.mesh.buffer] : []);
  } finally {
    bitmap.close();
  }
}

onmessage = async (e) => {
  const msg = e.data;
  try {
    if (msg.type === "init") postMessage({ type: "ready", ...(await start(msg.base, msg.backends)) });
    else if (msg.type === "frame") await track(msg);
  } catch (err) {
    if (msg.bitmap) msg.bitmap.close();
    postMessage({ type: "error", seq: msg.seq, message: err && err.message ? err.message : String(err) });
  }
};
