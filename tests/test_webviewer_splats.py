"""The viewer's splat pipeline in a real browser (headless Chromium, SwiftShader, loopback only):
the projection pass and when it runs, the three draw paths, the depth order computed from the blend
pass's own positions (read back asynchronously), the GPU order (carried Gaussians first) and the
blend pass that leaves uncarried Gaussians alone between full runs, its looped path for ranks past
the unrolled blocks, the quantised SH packed per Gaussian (rendered as the project rasterizer does).
More render parity with the project rasterizer is in test_webviewer_browser.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.agm import read_agm, write_agm
from exporter.agm.synthetic import synthetic_bundle
from exporter.agm.write import StorageConfig
from tests.support.browser import BACKGROUND, driven, psnr, save_png, served

SIZE = 256
# 3001 Gaussians: not a multiple of the instanced path's 64 quads per instance
COUNT = 3001

READ_ORDER = """() => {
  const v = window.agora.viewer, gl = v.gl, t = v.data.order;
  const fbo = gl.createFramebuffer();
  gl.bindFramebuffer(gl.FRAMEBUFFER, fbo);
  gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, t.tex, 0);
  const px = new Uint32Array(t.width * t.height * 4);
  gl.readPixels(0, 0, t.width, t.height, gl.RGBA_INTEGER, gl.UNSIGNED_INT, px);
  gl.bindFramebuffer(gl.FRAMEBUFFER, null);
  gl.deleteFramebuffer(fbo);
  const n = v.data.splatCount;
  const perm = v.data.perm;  // GPU index -> bundle index (null: the same order)
  const order = [];
  for (let i = 0; i < n; i++) order.push(perm ? perm[px[i * 4]] : px[i * 4]);
  const view = v.camera.view(v.canvas.width, v.canvas.height);
  return { order, forward: view.R[2], tz: view.t[2] };
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("splat_bundles")
    head = synthetic_bundle(COUNT, identities=2, ranks=(8, 8, 8, 4), hidden=(32,), names="arkit", seed=4,
                            tiny_fraction=0.4)
    write_agm(head, d / "head.agm", quant="int8", sparse_threshold=1e-3)
    # ranks past the blend pass's unrolled blocks (16 texels per component: K 256 int8, 128 fp16):
    # those groups take its loop
    wide = synthetic_bundle(700, ranks={"xyz": 140, "scale": 3, "rotation": 0, "opacity": 2}, hidden=(16,),
                            names="arkit", seed=5)
    write_agm(wide, d / "wide_fp16.agm", quant="fp16", sparse_threshold=1e-3)
    wide = synthetic_bundle(500, ranks={"xyz": 3, "scale": 0, "rotation": 260, "opacity": 0}, hidden=(16,),
                            names="arkit", seed=6)
    write_agm(wide, d / "wide_int8.agm", quant="int8", sparse_threshold=1e-3)
    # .agm 1.1 quantised neutral attributes: SH with u8 bands (one packed texel per Gaussian; DC u8 in
    # q8, u16 in q12) and u16 bands (q16: two texels)
    for neutral in ("q8", "q12", "q16"):
        write_agm(head, d / f"head_{neutral}.agm", storage=StorageConfig("int8", neutral, "fp16", "auto"),
                  sparse_threshold=1e-3)
    names = ("head.agm", "wide_fp16.agm", "wide_int8.agm", "head_q8.agm", "head_q12.agm", "head_q16.agm")
    with served({name: d / name for name in names}) as s:
        yield s


@pytest.fixture
def viewer(page, site):
    with driven(page, site) as drv:
        yield drv


def _params(bundle, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    lo = np.array([p["min"] for p in bundle.parameters], np.float32)
    hi = np.array([p["max"] for p in bundle.parameters], np.float32)
    return (lo + (hi - lo) * rng.random(len(lo))).astype(np.float32).tolist()


def _stats(viewer) -> dict:
    return viewer.js("""() => { const v = window.agora.viewer;
        return { projections: v.renderer.projections, animated: v.data.animatedSerial }; }""")


def _fragments(viewer) -> dict:
    return viewer.js("""() => { const v = window.agora.viewer;
        return v.renderer.countFragments(v.camera.view(v.canvas.width, v.canvas.height)); }""")


def test_draw_paths_and_shapes_render_the_same_image(viewer, site):
    """Quads (the ellipse's box) and triangles (the equilateral triangle around the ellipse) on each
    draw path - indexed (4 vertices per quad; triangles as plain arrays), vertex (6 or 3 vertices per
    splat) and instanced (64 splats per instance, the last one partly empty) - draw the same image
    from the same projected splats: both shapes cover every pixel the 1/255 cut keeps (the
    rasterizer parity tests run the default shape: triangles under SwiftShader)."""
    ref = read_agm(site.bundles["head.agm"])
    images, fragments = {}, {}
    for shape in ("quad", "triangle"):
        for draw in ("indexed", "vertex", "instanced"):
            assert viewer.open(bundle="head.agm", size=f"{SIZE}x{SIZE}", draw=draw, shape=shape) == "ready"
            stats = viewer.js("() => window.agora.stats()")
            assert (stats["drawPath"], stats["shape"]) == (draw, shape)
            viewer.js("(p) => window.agora.setParams(p)", _params(ref, 1))
            images[shape, draw] = viewer.pixels()
            save_png(images[shape, draw], f"splats_{shape}_{draw}.png")
            assert viewer.js("() => window.agora.stats().visible") == COUNT
        fragments[shape] = _fragments(viewer)
    reference = images["quad", "indexed"]
    assert reference.std() > 0.05  # a head, not a blank canvas
    for (shape, draw), image in images.items():
        # the same shape: the same triangles, pixel for pixel
        assert np.abs(image - images[shape, "indexed"]).max() <= 1 / 255 + 1e-9, (shape, draw)
    # the other shape: the same alpha at every pixel up to float rounding of the interpolated
    # ellipse coordinate, which the 8-bit blending of overlapping splats carries into a few levels
    # (measured: 58.4 dB, at most 3/255 in 0.2 % of the values)
    assert psnr(images["triangle", "indexed"], reference) >= 55
    assert np.abs(images["triangle", "indexed"] - reference).max() <= 4 / 255 + 1e-9
    # the triangle has 3 sqrt(3) / 4 = 1.30x the box's area: more fragments shaded, the same kept
    ratio = fragments["triangle"]["shaded"] / fragments["quad"]["shaded"]
    assert 1.1 < ratio < 1.35, ratio
    assert abs(fragments["triangle"]["kept"] - fragments["quad"]["kept"]) <= 1e-3 * fragments["quad"]["kept"]


def test_shape_auto_picks_triangles_on_a_cpu_rasteriser(viewer):
    """Headless Chromium here renders WebGL2 with SwiftShader: "auto" (the default) resolves to
    triangles; a bad shape is an error naming the choices."""
    assert viewer.open(bundle="head.agm", size=f"{SIZE}x{SIZE}") == "ready"
    name = viewer.js("""() => { const gl = window.agora.viewer.gl;
        return gl.getParameter(gl.getExtension('WEBGL_debug_renderer_info').UNMASKED_RENDERER_WEBGL); }""")
    assert "SwiftShader" in name
    assert viewer.js("() => window.agora.stats().shape") == "triangle"
    assert viewer.open(bundle="head.agm", size=f"{SIZE}x{SIZE}", shape="hexagon") == "error"
    assert "unknown splat shape hexagon" in viewer.js("() => String(window.agora.error)")


def test_projection_pass_runs_only_when_its_inputs_change(viewer, site):
    ref = read_agm(site.bundles["head.agm"])
    assert viewer.open(bundle="head.agm", size=f"{SIZE}x{SIZE}") == "ready"
    viewer.js("() => { window.agora.pause(); return window.agora.settled(); }")
    before = _stats(viewer)
    viewer.js("() => { window.agora.renderOnce(); window.agora.renderOnce(); }")
    assert _stats(viewer)["projections"] == before["projections"]  # redraws reuse the projected splats
    viewer.js("() => { window.agora.viewer.camera.orbit(0.1, 0); window.agora.renderOnce(); }")
    after_camera = _stats(viewer)
    assert after_camera["projections"] == before["projections"] + 1
    viewer.js("(p) => { window.agora.setParams(p); window.agora.renderOnce(); }", _params(ref, 2))
    after_params = _stats(viewer)
    assert after_params["animated"] == after_camera["animated"] + 1
    assert after_params["projections"] == after_camera["projections"] + 1
    # the fragment count (benchmarks): every kept fragment is a shaded one
    frags = _fragments(viewer)
    assert frags is not None and 0 < frags["kept"] <= frags["shaded"]


def _order_violations(order: np.ndarray, means: np.ndarray, forward, tz: float) -> int:
    """Adjacent pairs of a back-to-front order more out of depth order than one 16-bit key step."""
    z = means[order] @ np.asarray(forward, np.float64) + tz
    step = (z.max() - z.min()) / 65535
    return int(np.sum(z[1:] > z[:-1] + 1.01 * step))


def test_depth_order_follows_the_animated_positions(viewer, site):
    """The worker sorts the blend pass's own positions (read back from the GPU): after settling, the
    order is back to front for the animated means - and not for the neutral ones."""
    ref = read_agm(site.bundles["head.agm"])
    assert viewer.open(bundle="head.agm", size=f"{SIZE}x{SIZE}") == "ready"
    for identity, seed in ((0, 3), (1, 4)):
        viewer.js("([p, i]) => { window.agora.setIdentity(i); window.agora.setParams(p); }",
                  [_params(ref, seed), identity])
        viewer.js("() => window.agora.settled()")
        got = viewer.js(READ_ORDER)
        order = np.array(got["order"], np.int64)
        assert sorted(order.tolist()) == list(range(COUNT))
        animated = viewer.blended()["means"].reshape(COUNT, 3).astype(np.float64)
        assert _order_violations(order, animated, got["forward"], got["tz"]) == 0
        neutral = ref.identities[identity].neutral.means.numpy().astype(np.float64)
        assert _order_violations(order, neutral, got["forward"], got["tz"]) > 0


def test_read_back_for_the_sort_is_bounded_under_animation(viewer, site):
    """New expression parameters every ~5 ms start a position read-back (and so a re-sort) at most
    every 100 ms, not once per animation; once the animation stops, the frames' polls start the copy
    the interval held back, so the order catches up with the last expression without settled()."""
    ref = read_agm(site.bundles["head.agm"])
    assert viewer.open(bundle="head.agm", size=f"{SIZE}x{SIZE}") == "ready"
    viewer.js("() => { window.agora.pause(); return window.agora.settled(); }")
    got = viewer.js("""async (params) => {
        const v = window.agora.viewer;
        const before = v.readback.copies;
        const t0 = performance.now();
        for (const p of params) {
          v.setParams(p);
          v.renderOnce();
          v.syncGpu();
          await new Promise((r) => setTimeout(r, 5));
        }
        const elapsed = performance.now() - t0;
        const copies = v.readback.copies - before;
        const caughtUpBefore = v.readback.current;
        const t1 = performance.now();
        while (!v.readback.current && performance.now() - t1 < 5000) {  // frames, no settled()
          v.renderOnce();
          await new Promise((r) => setTimeout(r, 10));
        }
        return { copies, elapsed, animations: params.length, caughtUp: v.readback.current, caughtUpBefore };
    }""", [_params(ref, 10 + k) for k in range(30)])
    assert got["copies"] >= 1
    assert got["copies"] <= got["elapsed"] / 100 + 2, got
    assert got["copies"] < got["animations"] / 2, got
    assert got["caughtUp"], got
    # and the order then follows the last animation (as after settled)
    viewer.js("() => window.agora.settled()")
    order_now = viewer.js(READ_ORDER)
    animated = viewer.blended()["means"].reshape(COUNT, 3).astype(np.float64)
    order = np.array(order_now["order"], np.int64)
    assert _order_violations(order, animated, order_now["forward"], order_now["tz"]) == 0


def test_blend_keeps_uncarried_gaussians_across_identity_changes(viewer, site):
    """Animation runs after the first one skip the Gaussians no group carries (their values stay
    from the last full run); an identity change runs in full again - also back to identity 0."""
    ref = read_agm(site.bundles["head.agm"])
    assert viewer.open(bundle="head.agm") == "ready"
    carried = np.zeros(COUNT, bool)
    for basis in ref.bases.values():
        if basis.rank:
            carried[np.arange(COUNT) if basis.index is None else basis.index] = True
    assert 0 < carried.sum() < COUNT  # the test needs both kinds
    for k, identity in enumerate((0, 0, 1, 1, 0)):
        params = _params(ref, 10 + k)
        viewer.js("([p, i]) => { window.agora.setIdentity(i); window.agora.setParams(p); }", [params, identity])
        got = viewer.blended()
        want = ref.animate_arrays(np.array(params, np.float32), identity)
        np.testing.assert_allclose(got["means"].reshape(COUNT, 3), want["means"], atol=1e-6, rtol=0)
        np.testing.assert_allclose(got["scales"].reshape(COUNT, 3), want["scales"], atol=1e-7, rtol=1e-5)
        np.testing.assert_allclose(got["opacities"], want["opacities"][:, 0], atol=2e-6, rtol=0)


LAYOUT = """() => { const d = window.agora.viewer.data, g = window.agora.viewer.generator;
  return { perm: d.perm ? Array.from(d.perm) : null, carried: d.carried, carriedRows: d.carriedRows, rows: d.rows,
           lastRows: g.lastRows }; }"""


def test_gpu_order_puts_carried_gaussians_first_and_blends_only_their_rows(viewer, site):
    """The GPU order is the carried Gaussians, then the others, each part far to near along the
    bundle camera's view direction; after an identity's first (full) blend pass the next ones draw
    only the carried Gaussians' rows and the read-back after them copies only those rows - and the
    sort still sees every Gaussian."""
    ref = read_agm(site.bundles["head.agm"])
    carried = np.zeros(COUNT, bool)
    for basis in ref.bases.values():
        if basis.rank:
            carried[np.arange(COUNT) if basis.index is None else basis.index] = True
    assert viewer.open(bundle="head.agm", size=f"{SIZE}x{SIZE}") == "ready"
    layout = viewer.js(LAYOUT)
    perm = np.array(layout["perm"])
    n = int(carried.sum())
    assert layout["carried"] == n and layout["carriedRows"] == -(-n // 2048) < layout["rows"]
    assert sorted(perm.tolist()) == list(range(COUNT))
    assert carried[perm[:n]].all() and not carried[perm[n:]].any()
    cam = ref.camera
    forward = np.subtract(cam["target"], cam["position"], dtype=np.float64)
    depth = ref.identities[0].neutral.means.numpy().astype(np.float64) @ (forward / np.linalg.norm(forward))
    for part in (perm[:n], perm[n:]):
        assert (np.diff(depth[part]) <= 1e-6).all()  # far to near (float32 depths on the page)
    for k, (identity, rows) in enumerate(((0, "carriedRows"), (1, "rows"), (1, "carriedRows"))):
        viewer.js("([p, i]) => { window.agora.setIdentity(i); window.agora.setParams(p); "
                  "return window.agora.settled(); }", [_params(ref, 20 + k), identity])
        got = viewer.js(LAYOUT)
        assert got["lastRows"] == layout[rows], (identity, rows)
        assert viewer.js("() => window.agora.stats().visible") == COUNT


@pytest.mark.parametrize(("name", "group"), [("wide_fp16.agm", 0), ("wide_int8.agm", 2)])
def test_blend_loops_over_groups_past_the_unrolled_blocks(viewer, site, name, group):
    """A group past the unrolled blocks (fp16 xyz at rank 140: 18 texels per component; int8 rotation
    at rank 260: 17) takes the blend pass's loop, the other groups the unrolled blocks: both match
    the Python reference."""
    ref = read_agm(site.bundles[name])
    assert viewer.open(bundle=name) == "ready"
    assert viewer.js("(g) => window.agora.viewer.data.basisTexels[g]", group) > 16
    G = ref.gaussian_count
    for k in range(2):
        params = _params(ref, 30 + k)
        viewer.js("(p) => window.agora.setParams(p)", params)
        got = viewer.blended()
        want = ref.animate_arrays(np.array(params, np.float32), 0)
        assert np.abs(want["means"] - ref.identities[0].neutral.means.numpy()).max() > 1e-4  # it moved
        np.testing.assert_allclose(got["means"].reshape(G, 3), want["means"], atol=1e-6, rtol=0)
        np.testing.assert_allclose(got["scales"].reshape(G, 3), want["scales"], atol=1e-7, rtol=1e-5)
        np.testing.assert_allclose(got["quats"].reshape(G, 4), want["quats"], atol=2e-6, rtol=0)
        np.testing.assert_allclose(got["opacities"], want["opacities"][:, 0], atol=2e-6, rtol=0)


@pytest.mark.parametrize(("neutral", "texels"), [("q8", 1), ("q12", 1), ("q16", 2)])
def test_quantised_sh_packed_per_gaussian_renders_as_the_rasterizer(viewer, site, neutral, texels):
    """The stored SH of a 1.1 bundle go to the GPU packed per Gaussian (one RGBA32UI texel with u8
    bands, two with u16 bands) and decode to the same image as the project rasterizer's of the
    Python reader's decoded avatar."""
    from agora_core.render.rasterizer import rasterize
    from agora_core.types.camera import Camera, intrinsics, look_at

    name = f"head_{neutral}.agm"
    ref = read_agm(site.bundles[name])
    assert viewer.open(bundle=name, size=f"{SIZE}x{SIZE}") == "ready"
    packed = viewer.js("() => { const d = window.agora.viewer.data; "
                       "return [d.shPacked, d.shPacked2].filter(Boolean).length; }")
    assert packed == texels
    params = _params(ref, 40)
    viewer.js("([p, c]) => { window.agora.setIdentity(1); window.agora.setParams(p); window.agora.setCamera(c); }",
              [params, dict(ref.camera)])
    web = viewer.pixels()
    c = ref.camera
    cam = Camera(look_at(*(torch.tensor(c[k], dtype=torch.float32) for k in ("position", "target", "up"))),
                 intrinsics(c["fov_y_deg"], SIZE, SIZE), SIZE, SIZE)
    with torch.no_grad():
        img = rasterize(ref.animate(np.array(params, np.float32), 1), cam,
                        background=torch.tensor(BACKGROUND)).image[0].numpy()
    py = np.round(np.clip(img, 0, 1) * 255) / 255
    save_png(web, f"splats_sh_{neutral}.png")
    assert web.std() > 0.05
    assert psnr(web, py) >= 45.0
