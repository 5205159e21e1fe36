// Orbit, zoom and pan with mouse and touch (pointer events):
//   one finger / left mouse: orbit; two fingers: pinch zoom + pan; right or middle mouse, or
//   shift + left: pan; wheel: zoom; double click / double tap: reset the view.

export function attachControls(canvas, viewer) {
  const pointers = new Map();
  let last = null; // {x, y, dist} of the previous gesture state
  const cam = () => viewer.camera;
  const size = () => ({ width: canvas.clientWidth || 1, height: canvas.clientHeight || 1 });

  const gesture = () => {
    const pts = [...pointers.values()];
    if (pts.length === 1) return { x: pts[0].x, y: pts[0].y, dist: 0, n: 1, pan: pts[0].pan };
    const [a, b] = pts;
    return { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2, dist: Math.hypot(a.x - b.x, a.y - b.y), n: 2, pan: true };
  };

  canvas.addEventListener("pointerdown", (e) => {
    try {
      canvas.setPointerCapture(e.pointerId);
    } catch {
      // synthetic or already released pointers cannot be captured; the gesture works without
    }
    pointers.set(e.pointerId, { x: e.clientX, y: e.clientY, x0: e.clientX, y0: e.clientY, t0: performance.now(),
      pan: e.button === 1 || e.button === 2 || e.shiftKey });
    if (pointers.size > 1) multi = true;
    last = gesture();
    e.preventDefault();
  });
  let multi = false; // the current gesture used two fingers (not a tap)
  let lastTap = null;
  const end = (e) => {
    const p = pointers.get(e.pointerId);
    pointers.delete(e.pointerId);
    last = pointers.size ? gesture() : null;
    // double tap (touch): two short, still, single-finger taps close together reset the view
    if (p && e.type === "pointerup" && e.pointerType === "touch" && !multi && !pointers.size) {
      const now = performance.now();
      const still = Math.hypot(e.clientX - p.x0, e.clientY - p.y0) < 10 && now - p.t0 < 300;
      if (still && lastTap && now - lastTap.t < 350 && Math.hypot(e.clientX - lastTap.x, e.clientY - lastTap.y) < 30) {
        cam().reset();
        lastTap = null;
      } else {
        lastTap = still ? { t: now, x: e.clientX, y: e.clientY } : null;
      }
    }
    if (!pointers.size) multi = false;
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("pointermove", (e) => {
    if (!pointers.has(e.pointerId)) return;
    const p = pointers.get(e.pointerId);
    p.x = e.clientX;
    p.y = e.clientY;
    const g = gesture();
    if (!last || g.n !== last.n) {
      last = g;
      return;
    }
    const dx = g.x - last.x;
    const dy = g.y - last.y;
    const { width, height } = size();
    if (g.n === 2) {
      if (last.dist > 0 && g.dist > 0) cam().zoom(last.dist / g.dist);
      cam().pan(dx, dy, { width, height });
    } else if (g.pan) {
      cam().pan(dx, dy, { width, height });
    } else {
      const speed = (2 * Math.PI) / Math.max(300, Math.min(width, height) * 1.5);
      cam().orbit(-dx * speed, dy * speed);
    }
    last = g;
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const delta = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
    cam().zoom(Math.exp(delta * 0.0015));
  }, { passive: false });
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("dblclick", (e) => {
    if (e.pointerType !== "touch") cam().reset();
  });
}
