// The control panel and the HUD: sliders per parameter (the bundle's names and ranges), presets,
// random expression, sequence playback with a timeline, identity picker, screenshot, open/drop.

import { buildPresets, randomExpression } from "./presets.js";

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

const fmt = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(2));

export class ViewerUI {
  constructor(viewer, player, { onOpenFile, onScreenshot }) {
    this.viewer = viewer;
    this.player = player;
    this.sliders = [];
    this.onOpenFile = onOpenFile;

    $("open-btn").addEventListener("click", () => $("file-input").click());
    $("file-input").addEventListener("change", (e) => {
      const file = e.target.files[0];
      e.target.value = "";
      if (file) onOpenFile(file);
    });
    $("screenshot-btn").addEventListener("click", () => onScreenshot());
    $("reset-view-btn").addEventListener("click", () => viewer.camera.reset());
    $("error-dismiss").addEventListener("click", () => this.clearError());
    $("panel-toggle").addEventListener("click", () => {
      const body = $("panel-body");
      body.hidden = !body.hidden;
      $("panel-toggle").setAttribute("aria-expanded", String(!body.hidden));
    });
    $("identity-select").addEventListener("change", (e) => {
      try {
        viewer.setIdentity(Number(e.target.value));
      } catch (err) {
        this.showError("Could not switch identity", err.message);
      }
    });

    // playback
    $("play-btn").addEventListener("click", () => {
      if (player.playing) player.pause();
      else player.play();
      this.syncPlayback();
    });
    $("timeline").addEventListener("input", (e) => {
      player.pause();
      player.seek(Number(e.target.value));
      this.syncPlayback();
    });
    $("loop-check").addEventListener("change", (e) => { player.loop = e.target.checked; });
    $("speed-select").addEventListener("change", (e) => { player.speed = Number(e.target.value); });

    // drag and drop anywhere on the page
    let depth = 0;
    window.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; $("drop-hint").hidden = false; });
    window.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) $("drop-hint").hidden = true; });
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => {
      e.preventDefault();
      depth = 0;
      $("drop-hint").hidden = true;
      const file = e.dataTransfer?.files?.[0];
      if (file) onOpenFile(file);
    });

    viewer.on((what) => {
      if (what === "bundle") this.buildForBundle(viewer.bundle);
      if (what === "params") this.syncSliders();
    });
  }

  // ------------------------------------------------------------------------------------- bundle
  buildForBundle(bundle) {
    const v = this.viewer;
    $("bundle-name").textContent = bundle.label;
    $("bundle-name").title = bundle.label;

    // identities
    const select = $("identity-select");
    select.replaceChildren(...bundle.identities.map((ident, i) =>
      el("option", { value: String(i), textContent: ident.name || `identity ${i}` })));
    $("identity-row").hidden = bundle.identities.length < 2;

    // presets
    const presets = buildPresets(bundle.parameters);
    $("presets").replaceChildren(
      ...presets.map((p) => el("button", { type: "button", textContent: p.name, dataset: { preset: p.name },
        onclick: () => { this.player.pause(); this.syncPlayback(); v.setParams(p.values); } })),
      el("button", { type: "button", id: "random-btn", textContent: "random",
        onclick: () => { this.player.pause(); this.syncPlayback(); v.setParams(randomExpression(bundle.parameters)); } }),
    );

    // sliders, grouped
    const groups = new Map();
    bundle.parameters.forEach((p, i) => {
      if (!groups.has(p.group)) groups.set(p.group, []);
      groups.get(p.group).push([p, i]);
    });
    this.sliders = [];
    const blocks = [...groups.entries()].map(([group, items]) => {
      const rows = items.map(([p, i]) => {
        const span = p.max - p.min;
        const input = el("input", { type: "range", min: String(p.min), max: String(p.max),
          step: String(span > 0 ? span / 200 : 0.01), value: String(v.params[i]), name: p.name,
          dataset: { index: String(i), param: p.name }, "aria-label": p.name });
        const out = el("output", { textContent: fmt(v.params[i]) });
        input.addEventListener("input", () => {
          this.player.pause();
          this.syncPlayback();
          v.setParam(i, Number(input.value));
        });
        this.sliders[i] = { input, out };
        return el("label", { className: "param", title: `${p.name} [${p.min}, ${p.max}]` },
          el("span", { textContent: p.name }), input, out);
      });
      return el("details", { open: group !== "expression" || items.length <= 12 },
        el("summary", { textContent: `${group} (${items.length})` }), ...rows);
    });
    $("sliders").replaceChildren(...blocks);

    // info
    const ranks = bundle.groups.map((g) => `${g.name} ${g.rank}`).join(", ");
    const fid = bundle.fidelity && Object.keys(bundle.fidelity).length
      ? `fidelity: ${JSON.stringify(bundle.fidelity).slice(0, 300)}` : "";
    $("info").replaceChildren(
      el("div", { textContent: `.agm ${bundle.version.join(".")} · ${(bundle.byteLength / 1e6).toFixed(2)} MB · ` +
        `${bundle.gaussianCount.toLocaleString()} Gaussians · ${bundle.identities.length} identit${bundle.identities.length === 1 ? "y" : "ies"}` }),
      el("div", { textContent: `bases ${bundle.quantization}${bundle.sparse ? " sparse" : ""}: ${ranks}` }),
      el("div", { textContent: `.agm ${bundle.version.join(".")} · neutral ${bundle.neutralStorage} · MLP weights ${bundle.mlpStorage}` }),
      el("div", { textContent: `MLP ${bundle.mlp.layers.map((l) => l.out).join("→")} · GPU ${(v.data.gpuBytes() / 1e6).toFixed(0)} MB` }),
      el("div", { textContent: fid }),
    );
    this.syncPlayback();
  }

  syncSliders() {
    const params = this.viewer.params;
    this.sliders.forEach((s, i) => {
      if (!s) return;
      if (document.activeElement !== s.input) s.input.value = String(params[i]);
      s.out.textContent = fmt(params[i]);
    });
  }

  // ----------------------------------------------------------------------------------- playback
  setSequence(seq) {
    this.player.load(seq);
    $("sequence-name").textContent = seq ? `${seq.label} (${seq.numFrames} frames, ${seq.fps} fps` +
      `${seq.matched < seq.total ? `, ${seq.matched}/${seq.total} parameters matched` : ""})` : "";
    this.syncPlayback();
  }

  syncPlayback() {
    const p = this.player;
    const has = Boolean(p.sequence && this.viewer.bundle);
    $("play-btn").disabled = !has;
    $("timeline").disabled = !has;
    $("play-btn").textContent = p.playing ? "Pause" : "Play";
    $("play-btn").classList.toggle("active", p.playing);
    if (has) {
      $("timeline").max = String(p.sequence.numFrames - 1);
      $("timeline").value = String(Math.round(p.frame));
      $("frame-label").textContent = `${Math.round(p.frame) + 1}/${p.sequence.numFrames}`;
    } else {
      $("frame-label").textContent = "–";
    }
  }

  // --------------------------------------------------------------------------------- messages
  updateHud(stats) {
    const anim = stats.animRuns ? `${stats.animMs.toFixed(2)} ms (${stats.animSource})` : "–";
    $("hud").textContent =
      `FPS ${stats.fps.toFixed(0).padStart(3)}${stats.idle ? " (idle: nothing redrawn)" : ""}\n` +
      `anim ${anim}\n` +
      `${stats.gaussians.toLocaleString()} Gaussians (${stats.visible.toLocaleString()} drawn)\n` +
      `sort ${stats.sortMs.toFixed(1)} ms`;
  }

  setStatus(text) {
    $("status").textContent = text || "";
  }

  showError(title, message) {
    $("error-title").textContent = title;
    $("error-message").textContent = message;
    $("error").hidden = false;
  }

  clearError() {
    $("error").hidden = true;
  }
}
