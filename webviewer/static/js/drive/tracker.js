// The camera and the tracker worker, main-thread side: opens the camera (front by default), hands
// frames to track-worker.js one at a time (a frame is captured only when the previous result has
// arrived, so tracking never queues up and never blocks the render loop), and reports each result
// with its tracking time (in the worker) and latency (capture to result).

const FRAME_WIDTH = 640; // frames larger than this are scaled down before tracking

/** A user-facing sentence for a getUserMedia failure. */
export function cameraErrorMessage(err) {
  const name = err && err.name;
  if (!window.isSecureContext) {
    return "The camera needs a secure page: open it over HTTPS (agora-export serve --https) or on localhost.";
  }
  if (name === "NotAllowedError" || name === "SecurityError") {
    return "Camera permission was denied. Allow the camera for this site in the browser's settings, then tap Camera again.";
  }
  if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") {
    return "No camera was found on this device.";
  }
  if (name === "NotReadableError" || name === "TrackStartError") {
    return "The camera is in use by another app, or the system blocked it.";
  }
  return `The camera could not be opened: ${err && err.message ? err.message : String(err)}`;
}

export class CameraError extends Error {}

export class FaceTracker {
  /** onResult({seq, t, ms, latency, face}), onError(message) */
  constructor({ onResult, onError }) {
    this.onResult = onResult;
    this.onError = onError;
    this.facing = "user";
    this.stream = null;
    this.video = null;
    this.worker = null;
    this.workerReady = null;
    this.backend = null;
    this.running = false;
    this.inFlight = false;
    this.seq = 0;
    this.captureFailures = 0;
    this.noResize = false;
    this.canvas = null;
    this.onCapture = null; // optional hook (bitmap, seq) before a frame goes to the worker (tests)
  }

  /** Start the worker (once) and load the models; resolves to {backend, initMs}. */
  startWorker() {
    if (this.workerReady) return this.workerReady;
    this.worker = new Worker(new URL("./track-worker.js", import.meta.url), { type: "module" });
    this.workerReady = new Promise((resolve, reject) => {
      this.worker.onmessage = (e) => {
        const msg = e.data;
        if (msg.type === "ready") {
          this.backend = msg.backend;
          this.worker.onmessage = (ev) => this.handle(ev.data);
          resolve(msg);
        } else if (msg.type === "error") reject(new Error(`the face tracker did not start: ${msg.message}`));
      };
      this.worker.onerror = (e) => reject(new Error(`the face tracker did not start: ${e.message || "worker error"}`));
    });
    this.worker.postMessage({ type: "init", base: new URL("../../../drive/", import.meta.url).href });
    return this.workerReady;
  }

  /** Open the camera facing `facing` ("user" | "environment"); throws CameraError with the message to show. */
  async openCamera(facing = this.facing) {
    if (!navigator.mediaDevices?.getUserMedia) throw new CameraError(cameraErrorMessage(null));
    this.closeCamera();
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: false, video: { facingMode: { ideal: facing }, width: { ideal: 640 }, height: { ideal: 480 } },
      });
    } catch (err) {
      throw new CameraError(cameraErrorMessage(err));
    }
    this.facing = facing;
    this.stream = stream;
    const video = this.video || document.createElement("video");
    video.muted = true;
    video.playsInline = true;
    video.setAttribute("playsinline", "");
    video.srcObject = stream;
    this.video = video;
    await video.play();
    stream.getVideoTracks()[0]?.addEventListener("ended", () => {
      if (this.running) this.onError("The camera stopped (unplugged, or taken by another app).");
    });
    return video;
  }

  closeCamera() {
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    this.stream = null;
    if (this.video) this.video.srcObject = null;
  }

  /** Whether the device has more than one camera (the switch button is shown only then). */
  static async cameraCount() {
    try {
      const devices = await navigator.mediaDevices.enumerateDevices();
      return devices.filter((d) => d.kind === "videoinput").length;
    } catch {
      return 0;
    }
  }

  start() {
    this.running = true;
    this.pump();
  }

  stop() {
    this.running = false;
    this.closeCamera();
  }

  /** Capture the next frame if none is being tracked (called again when each result arrives). */
  async pump() {
    if (!this.running || this.inFlight || !this.video || this.video.readyState < 2) {
      if (this.running && !this.inFlight) setTimeout(() => this.pump(), 30);
      return;
    }
    this.inFlight = true;
    const seq = ++this.seq;
    const t = performance.now();
    let bitmap;
    try {
      bitmap = await this.capture();
      this.captureFailures = 0;
    } catch (err) {
      this.inFlight = false;
      if (++this.captureFailures === 20) this.onError(`Camera frames cannot be read: ${err.message || err}`);
      setTimeout(() => this.pump(), 100);
      return;
    }
    this.onCapture?.(bitmap, seq);
    this.worker.postMessage({ type: "frame", seq, bitmap, t }, [bitmap]);
  }

  /** The video's current frame as an ImageBitmap, at most FRAME_WIDTH wide (scaled by the browser where it
   * can: older Safari lacks createImageBitmap's resize options, then a canvas does it). */
  async capture() {
    const v = this.video;
    const w = Math.min(FRAME_WIDTH, v.videoWidth);
    const h = Math.round((w * v.videoHeight) / v.videoWidth);
    if (!this.noResize) {
      try {
        return await createImageBitmap(v, { resizeWidth: w, resizeHeight: h });
      } catch {
        this.noResize = true;
      }
    }
    this.canvas = this.canvas || document.createElement("canvas");
    this.canvas.width = w;
    this.canvas.height = h;
    this.canvas.getContext("2d").drawImage(v, 0, 0, w, h);
    return createImageBitmap(this.canvas);
  }

  handle(msg) {
    this.inFlight = false;
    if (msg.type === "result") this.onResult({ ...msg, latency: performance.now() - msg.t });
    else if (msg.type === "error") this.onError(`Face tracking failed: ${msg.message}`);
    if (this.running) this.pump();
  }

  dispose() {
    this.stop();
    this.worker?.terminate();
    this.worker = null;
    this.workerReady = null;
  }
}
