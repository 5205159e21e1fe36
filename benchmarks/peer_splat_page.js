// Init script of the peer renderer's page (benchmarks/peer_splat.py), run before its own scripts:
// wraps WebGL2's drawArraysInstanced - the peer's one draw call per frame - so that, while a timing
// is armed, each of its frames is timed like the viewer's: earlier work finished (a 1-pixel
// readPixels), then the draw (with a 1-pixel scissor in mode "scissor": its per-splat work alone),
// then a 1-pixel readPixels (gl.finish does not wait under SwiftShader). Its frame loop
// (requestAnimationFrame) is held between timings once it has drawn everything: it would otherwise
// keep the browser's one GPU process busy while the viewer's pages are timed. Nothing else of it
// is changed.
(() => {
  const raf = window.requestAnimationFrame.bind(window);
  const held = [];
  let holding = false;
  window.requestAnimationFrame = (callback) => {
    if (!holding) return raf(callback);
    held.push(callback);
    return 0;
  };
  const hold = (on) => {
    holding = on;
    if (!on) held.splice(0).forEach((callback) => raf(callback));
  };
  const draw = WebGL2RenderingContext.prototype.drawArraysInstanced;
  const state = { mode: null, times: [], want: 0, instances: 0, done: null };
  const px = new Uint8Array(4);
  WebGL2RenderingContext.prototype.drawArraysInstanced = function drawTimed(mode, first, count, instances) {
    state.instances = instances;
    if (!state.mode) return draw.call(this, mode, first, count, instances);
    const scissor = state.mode === "scissor";
    this.readPixels(0, 0, 1, 1, this.RGBA, this.UNSIGNED_BYTE, px);
    if (scissor) {
      this.enable(this.SCISSOR_TEST);
      this.scissor(0, 0, 1, 1);
    }
    const t0 = performance.now();
    draw.call(this, mode, first, count, instances);
    this.readPixels(0, 0, 1, 1, this.RGBA, this.UNSIGNED_BYTE, px);
    state.times.push(performance.now() - t0);
    if (scissor) this.disable(this.SCISSOR_TEST);
    if (state.times.length >= state.want) {
      state.mode = null;
      hold(true);
      state.done(state.times);
    }
    return undefined;
  };
  window.__peerBench = {
    /** Its camera's focal lengths (pixels), then its resize handler (projection, canvas size). */
    setFocal([fx, fy]) {
      camera.fx = fx; // eslint-disable-line no-undef -- the peer's global camera
      camera.fy = fy; // eslint-disable-line no-undef
      window.dispatchEvent(new Event("resize"));
    },
    /** Whether it has drawn all `count` splats (the whole file loaded and sorted); then its
     * frame loop is held until the next timing. */
    ready(count) {
      if (state.instances !== count) return false;
      hold(true);
      return true;
    },
    /** Time `frames` of its frames after `warmup`, in mode "full" or "scissor". */
    time({ mode, frames, warmup }) {
      return new Promise((resolve) => {
        state.times = [];
        state.want = frames + warmup;
        state.done = (times) => resolve(times.slice(warmup));
        state.mode = mode;
        hold(false);
      });
    },
  };
})();
