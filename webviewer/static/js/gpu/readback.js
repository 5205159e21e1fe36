// Asynchronous read-back of the animated positions for the depth sorter: after the blend pass the
// means + opacity target is copied into a pixel-pack buffer with a fence behind it, and the copy is
// fetched (getBufferSubData) only once the fence has signalled - the frame never waits for the GPU.
// At most one copy is in flight; a newer animation while one is pending is read as soon as that
// one is done (the target then holds the newest Gaussians), so a steady animation is never starved.
// A copy covers only the rows the blend passes since the last copy wrote (after the first full run
// of an identity: the carried Gaussians' rows, see splat-data.js); the sorter keeps the rest.
// Copies start at most every `minIntervalMs` (a bounded re-sort rate under animation: an expression
// moves the Gaussians by millimetres, so the depth order of a few frames ago is still the order;
// a later poll starts the copy the interval held back, and `flush()` starts it at once).

export class PositionReadback {
  /** `data`: SplatData (its `animated` target, GAUSS_TW x rows RGBA32UI, attachment 0 = means + opacity). */
  constructor(gl, data, { minIntervalMs = 0 } = {}) {
    this.gl = gl;
    this.data = data;
    this.minIntervalMs = minIntervalMs;
    this.lastIssue = -Infinity;
    this.copies = 0;      // copies started (stats, tests)
    const t = data.animated;
    this.texels = t.width * t.height;
    this.buffer = gl.createBuffer();
    gl.bindBuffer(gl.PIXEL_PACK_BUFFER, this.buffer);
    gl.bufferData(gl.PIXEL_PACK_BUFFER, this.texels * 16, gl.STREAM_READ);
    gl.bindBuffer(gl.PIXEL_PACK_BUFFER, null);
    this.fence = null;
    this.inFlight = -1;   // animation serial of the copy in flight
    this.inFlightRows = 0;
    this.wanted = -1;     // newest animation serial asked for
    this.wantedRows = 0;  // rows written since the last copy was issued
    this.delivered = -1;  // animation serial of the last positions handed out
    this.copyMs = 0;
  }

  /** The animated target now holds animation `serial`, its first `rows` rows rewritten (all by
   * default): read it back (now, or after the pending copy). */
  request(serial, rows = this.data.animated.height) {
    this.wanted = serial;
    this.wantedRows = Math.max(this.wantedRows, rows);
    this.start(false);
  }

  /** Start the copy of the newest animation now, interval or not, unless one is in flight. */
  flush() {
    this.start(true);
  }

  /** Start a copy if one is wanted, none is in flight and (unless `now`) the interval has passed. */
  start(now) {
    if (this.fence || this.wanted <= this.inFlight) return;
    if (!now && performance.now() - this.lastIssue < this.minIntervalMs) return;
    this.issue();
  }

  issue() {
    const gl = this.gl;
    const t = this.data.animated;
    const rows = Math.min(t.height, this.wantedRows);
    this.wantedRows = 0;
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, t.fbo);
    gl.readBuffer(gl.COLOR_ATTACHMENT0);
    gl.bindBuffer(gl.PIXEL_PACK_BUFFER, this.buffer);
    gl.readPixels(0, 0, t.width, rows, gl.RGBA_INTEGER, gl.UNSIGNED_INT, 0);
    gl.bindBuffer(gl.PIXEL_PACK_BUFFER, null);
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, null);
    this.fence = gl.fenceSync(gl.SYNC_GPU_COMMANDS_COMPLETE, 0);
    this.inFlight = this.wanted;
    this.inFlightRows = rows;
    this.lastIssue = performance.now();
    this.copies++;
    gl.flush();
  }

  /** If the copy in flight is complete: {serial, positions} (Float32Array, x y z opacity per
   * Gaussian of the first rows copied, in the GPU order - all Gaussians after a full run - a fresh
   * buffer the caller may transfer), and the next copy is started if one is wanted and the interval
   * allows; else null (and a copy the interval held back starts once it allows). Never blocks. */
  poll() {
    const gl = this.gl;
    if (!this.fence) {
      this.start(false);
      return null;
    }
    const status = gl.clientWaitSync(this.fence, 0, 0);
    if (status !== gl.ALREADY_SIGNALED && status !== gl.CONDITION_SATISFIED) return null;
    gl.deleteSync(this.fence);
    this.fence = null;
    const t0 = performance.now();
    const positions = new Float32Array(Math.min(this.data.count, this.inFlightRows * this.data.animated.width) * 4);
    gl.bindBuffer(gl.PIXEL_PACK_BUFFER, this.buffer);
    gl.getBufferSubData(gl.PIXEL_PACK_BUFFER, 0, positions);
    gl.bindBuffer(gl.PIXEL_PACK_BUFFER, null);
    this.copyMs = performance.now() - t0;
    const serial = this.inFlight;
    this.delivered = serial;
    this.start(false);
    return { serial, positions };
  }

  /** Whether the newest requested animation has been handed out. */
  get current() {
    return this.delivered >= this.wanted;
  }

  dispose() {
    if (this.fence) this.gl.deleteSync(this.fence);
    this.gl.deleteBuffer(this.buffer);
  }
}
