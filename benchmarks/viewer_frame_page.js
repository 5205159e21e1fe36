// Page side of benchmarks/viewer_frame.py, evaluated in the viewer page (window.agora.viewer) by
// Playwright. It uses only what the viewer had before the projection pass (issue 18) too, so the
// same code times the current viewer and an older revision served side by side:
//   viewer.renderer.draw(view, background), viewer.renderOnce(), viewer.animate(), viewer.syncGpu(),
//   viewer.camera.orbit(), viewer.params / paramsVersion, viewer.sorter.
// One call times one mode: `frames` frames (of each kind, for "loop") after `warmup`, each ended by
// a 1-pixel readPixels (gl.finish does not wait under SwiftShader). Modes:
//   scissor   the camera moves a little, then the splat rendering with a 1-pixel scissor: per-splat
//             work only (projection + vertex stage), almost no fragments; order fixed;
//   full      the camera moves a little, then the splat rendering of the whole canvas; order fixed;
//   loop      the frame loop, three kinds of frame in turn (returns {orbit, animated, redraw}, so
//             that their ratios compare frames taken under the same machine load), each followed by
//             one macrotask so that sort orders arrive; the figure is the wall-clock interval per
//             frame, worker contention included:
//               orbit     camera moved, viewer.renderOnce() (sort requests go to the worker);
//               animated  new expression parameters, viewer.renderOnce();
//               redraw    the still frame of an idle avatar: one untimed redraw takes in whatever
//                         order arrived since, then the timed one changes nothing;
//   blend     new expression parameters, the MLP and blend passes alone (synced on their target).
async (o) => {
  const viewer = window.agora.viewer;
  const gl = viewer.gl;
  window.agora.pause();
  const params = viewer.bundle.parameters;
  const P = params.length;
  const [w, h] = viewer.drawingSize();
  if (viewer.canvas.width !== w || viewer.canvas.height !== h) {
    viewer.canvas.width = w;
    viewer.canvas.height = h;
  }
  // one macrotask (a MessageChannel message: a chain of setTimeout(0) is clamped to 4 ms per call
  // after five, which would add 4 ms of idle time to every frame of a loop)
  const channel = new MessageChannel();
  const nextTask = () => new Promise((resolve) => {
    channel.port1.onmessage = () => resolve();
    channel.port2.postMessage(null);
  });
  let sign = 1;
  const moveCamera = () => {
    sign = -sign;
    viewer.camera.orbit(0.002 * sign, 0);
  };
  const newParams = (f) => {
    const values = new Float32Array(P);
    for (let i = 0; i < P; i++) {
      values[i] = params[i].min + ((params[i].max - params[i].min) * ((f * 7919 + i * 104729) % 1000)) / 1000;
    }
    viewer.setParams(values);
  };
  if (o.count) {
    const r = viewer.renderer;
    return r.countFragments ? r.countFragments(viewer.camera.view(w, h)) : null;
  }
  const times = [];
  const kinds = ["orbit", "animated", "redraw"];
  const loopTimes = { orbit: [], animated: [], redraw: [] };
  viewer.syncGpu(); // whatever an earlier call left queued is not this mode's
  const loop = o.mode === "loop";
  let serial = 1000 * (o.round || 0);
  for (let f = 0; f < (o.warmup + o.frames) * (loop ? kinds.length : 1); f++) {
    if (loop) {
      const kind = kinds[f % kinds.length];
      const view = viewer.camera.view(w, h);
      if (kind === "redraw") {
        viewer.renderer.draw(view, viewer.background); // takes in an order that arrived meanwhile
        viewer.syncGpu();
      }
      const t0 = performance.now();
      if (kind === "redraw") viewer.renderer.draw(view, viewer.background);
      else {
        if (kind === "animated") newParams(++serial);
        else moveCamera();
        viewer.renderOnce();
      }
      viewer.syncGpu();
      await nextTask();
      if (f >= o.warmup * kinds.length) loopTimes[kind].push(performance.now() - t0);
      continue;
    }
    if (o.mode === "blend") {
      const t0 = performance.now();
      newParams(++serial);
      viewer.animate();
      viewer.syncGpu(viewer.data.animated);
      if (f >= o.warmup) times.push(performance.now() - t0);
      continue;
    }
    moveCamera();
    const t0 = performance.now();
    const view = viewer.camera.view(w, h);
    if (o.mode === "scissor") {
      gl.enable(gl.SCISSOR_TEST);
      gl.scissor(0, 0, 1, 1);
    }
    viewer.renderer.draw(view, viewer.background);
    viewer.syncGpu();
    gl.disable(gl.SCISSOR_TEST);
    if (f >= o.warmup) times.push(performance.now() - t0);
  }
  // leave the viewer settled on its current state for the next mode
  viewer.renderOnce();
  await (viewer.settled ? viewer.settled() : viewer.sorter.settled());
  viewer.syncGpu();
  return loop ? loopTimes : times;
}
