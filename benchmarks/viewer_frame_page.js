// Page side of benchmarks/viewer_frame.py, evaluated in the viewer page (window.agora.viewer) by
// Playwright. It uses only what the viewer had before the projection pass (issue 18) too, so the
// same code times the current viewer and an older revision served side by side:
//   viewer.renderer.draw(view, background), viewer.renderOnce(), viewer.animate(), viewer.syncGpu(),
//   viewer.camera.orbit(), viewer.params / paramsVersion, viewer.sorter.
// One call times one mode: `frames` frames after `warmup`, each ended by a 1-pixel readPixels
// (gl.finish does not wait under SwiftShader). Modes:
//   scissor   the camera moves a little, then the splat rendering with a 1-pixel scissor: per-splat
//             work only (projection + vertex stage), almost no fragments; order fixed;
//   full      the camera moves a little, then the splat rendering of the whole canvas; order fixed;
//   redraw    nothing changes, the splat rendering again (an earlier projection is reused if any);
//   orbit     the frame loop: camera moved, viewer.renderOnce() (sort requests go to the worker,
//             orders arrive while it runs), one macrotask between frames; the figure is the
//             wall-clock interval per frame, worker contention included;
//   animated  the same loop with new expression parameters every frame instead of a camera move;
//   loop      orbit, animated and redraw frames in turn in one call (returns {orbit, animated,
//             redraw}), so that their ratios compare frames taken under the same machine load; its
//             redraw is the still frame of an idle avatar: one untimed redraw first takes in
//             whatever order arrived since, then the timed one changes nothing (and is followed by
//             one macrotask, like every frame of the loop);
//   blend     new expression parameters, the MLP and blend passes alone (synced on their target).
// `count: true` returns the fragments of one full frame instead (renderer.countFragments, where
// the viewer has it).
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
  const animatedTimes = [];
  const redrawTimes = [];
  viewer.syncGpu(); // whatever an earlier call left queued is not this mode's
  const mixed = o.mode === "loop";
  const loop = mixed || o.mode === "orbit" || o.mode === "animated";
  const perFrame = mixed ? 3 : 1;
  let serial = 1000 * (o.round || 0);
  for (let f = 0; f < (o.warmup + o.frames) * perFrame; f++) {
    const timed = f >= o.warmup * perFrame;
    if (mixed && f % 3 === 2) {
      const view = viewer.camera.view(w, h);
      viewer.renderer.draw(view, viewer.background); // takes in an order that arrived meanwhile
      viewer.syncGpu();
      const t0 = performance.now();
      viewer.renderer.draw(view, viewer.background);
      viewer.syncGpu();
      await nextTask(); // like the loop's other frames
      if (timed) redrawTimes.push(performance.now() - t0);
      continue;
    }
    if (loop) {
      const animating = mixed ? f % 3 === 1 : o.mode === "animated";
      const t0 = performance.now();
      if (animating) newParams(++serial);
      else moveCamera();
      viewer.renderOnce();
      viewer.syncGpu();
      await nextTask();
      if (timed) (mixed && animating ? animatedTimes : times).push(performance.now() - t0);
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
    if (o.mode !== "redraw") moveCamera();
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
  return mixed ? { orbit: times, animated: animatedTimes, redraw: redrawTimes } : times;
}
