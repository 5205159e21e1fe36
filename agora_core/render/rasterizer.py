"""Differentiable 3D Gaussian rasterizer (3DGS / gsplat conventions).

One entry point, :func:`rasterize`, with two backends:

* ``"gsplat"`` - calls :func:`gsplat.rasterization` (CUDA only).
* ``"torch"``  - a pure-PyTorch implementation that runs anywhere (CPU included), is
  differentiable w.r.t. every Gaussian attribute and follows gsplat's
  ``rasterization(..., rasterize_mode="antialiased", sh_degree=1)`` maths exactly (see below).
* ``"auto"``   - gsplat when the Gaussians live on CUDA and ``gsplat`` imports, else torch.

Conventions (identical for both backends)
-----------------------------------------
* Camera: ``viewmat`` world->camera with OpenCV axes, ``K`` pixel intrinsics, pixel ``(x, y)``
  has its centre at ``(x + 0.5, y + 0.5)``.
* Projection: pinhole mean ``(fx X/Z + cx, fy Y/Z + cy)``; 2D covariance ``J W Σ Wᵀ Jᵀ`` with the
  EWA Jacobian ``J`` evaluated at the mean, whose ``X/Z``, ``Y/Z`` are clipped to a frustum
  1.3x wider than the image (``lim = (W - cx)/fx + 0.3·W/(2fx)`` etc., as in 3DGS/gsplat).
* Anti-aliasing: ``Σ2d += eps2d·I`` (0.3 px²) and opacity multiplied by the compensation
  ``sqrt(det Σ2d / det(Σ2d + eps2d·I))`` (Mip-Splatting / gsplat "antialiased").
* Culling: a Gaussian is dropped when its camera depth ``z`` is outside ``[near, far]``, its
  compensated opacity is below 1/255, or its footprint misses the image.
* Colour: SH degree 1 evaluated towards ``mean - camera_centre`` plus 0.5, clamped at 0
  (:meth:`Gaussians.colors`).
* Per pixel: ``alpha = min(0.999, o · exp(-½ dᵀ Σ2d⁻¹ d))``; pairs with ``alpha < 1/255`` are
  skipped. Footprint: every pixel where ``alpha >= 1/255`` - i.e. the ellipse of Mahalanobis
  radius ``sqrt(2 ln(255 o)) <= 3.33`` - which is the set recent gsplat (opacity-aware
  bounding boxes) evaluates; there is no fixed 3-sigma square cut.
* Compositing: front to back in order of camera depth of the means, ``w_i = alpha_i T_i``,
  ``T_i = prod_{j<i} (1 - alpha_j)``. Early termination as in gsplat: the first Gaussian whose
  inclusion would bring the transmittance to ``<= 1e-4`` and everything behind it are dropped.
  The torch backend reproduces that exactly with a mask ``T_i (1 - alpha_i) > 1e-4``
  (computed from a float64 log-space cumulative sum, so only rounding differs).
* Outputs: ``image = Σ w_i c_i + (1 - alpha) · background``, ``alpha = Σ w_i``,
  ``depth = Σ w_i z_i`` (gsplat's ``"D"`` render mode: alpha-weighted camera-space z;
  ``depth / alpha`` is the expected surface depth, gsplat's ``"ED"``).

Torch backend design
--------------------
Projection is plain autograd on ``[B, G]`` tensors. The heavy per-(Gaussian, pixel) part is a
custom :class:`torch.autograd.Function` (``_Composite``) with a hand-written backward, run once
per batch (the ``B`` images stacked as one image ``B*H`` rows tall, see :func:`_rasterize_torch`),
band by band (whole pixel rows, about ``PAIR_CHUNK`` pairs per band) so temporaries stay small:

1. Enumerate pairs exactly: per Gaussian the rows its ``alpha >= 1/255`` ellipse spans, per
   row the exact column interval (a quadratic in ``dx``) - no wasted bounding-box corners.
2. Gaussians are depth-sorted first, so pairs are generated in depth order; a *stable* sort
   by pixel index then groups them per pixel in front-to-back order.
3. Transmittance is a segmented exclusive cumulative sum of ``log(1 - alpha)`` (one float64
   ``cumsum`` over the band minus each pixel segment's start value).
4. Weighted features are summed per pixel with ``index_add_``.
5. Backward uses the standard suffix-sum identity
   ``dL/dalpha_i = T_i v_i - (Σ_{j>i} w_j v_j) / (1 - alpha_i)`` with ``v_i = f_i · dL/dout``,
   again via a float64 segmented cumsum, then chains to 2D means, conics, opacities and
   features and scatters to Gaussians with ``index_add_``.

Memory: with gradients enabled each pair keeps 32 bytes (float32) for the backward pass
(pixel and Gaussian index, dx, dy, alpha, T), e.g. ~1.2 M pairs per 128² image of a 16 K-Gaussian
head (~40 MB); under ``torch.no_grad()`` nothing is kept. ``max_radius`` bounds the pair count of
huge splats. The torch backend keeps the input dtype (float32 or float64; float64 is used for
gradient checks). No compiled extension is needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from agora_core.types.camera import Camera
from agora_core.types.gaussians import Gaussians, quat_to_rotmat

ALPHA_MIN = 1.0 / 255.0  # pairs below this alpha are skipped (gsplat ALPHA_THRESHOLD)
ALPHA_MAX = 0.999  # alpha is clamped to this (gsplat/3DGS)
T_MIN = 1e-4  # compositing stops once the transmittance would fall to this
EXTEND_MAX = 3.33  # gsplat's cap on the footprint, in standard deviations
FRUSTUM_MARGIN = 0.3  # Jacobian clipping: 1.3x the field of view (3DGS/gsplat)
BACKENDS = ("auto", "torch", "gsplat")


@dataclass
class RenderOutput:
    """Rendered images; ``B`` is the camera batch.

    ``depth`` is the alpha-weighted camera-space z, ``Σ w_i z_i``; divide by ``alpha`` for the
    expected surface depth.
    """

    image: torch.Tensor  # [B, H, W, 3]
    alpha: torch.Tensor  # [B, H, W, 1]
    depth: torch.Tensor  # [B, H, W, 1]


@dataclass
class ProjectedGaussians:
    """Screen-space Gaussians for ``B`` cameras (output of :func:`project_gaussians`).

    Entries where ``valid`` is False are culled and hold harmless finite placeholders.
    """

    means2d: torch.Tensor  # [B, G, 2] pixel coordinates (pixel centres at +0.5)
    conics: torch.Tensor  # [B, G, 3] inverse of the dilated 2D covariance: (a, b, c) = [[a, b], [b, c]]
    depths: torch.Tensor  # [B, G] camera-space z of the means
    opacities: torch.Tensor  # [B, G] opacities times the anti-aliasing compensation
    radii: torch.Tensor  # [B, G, 2] int32 half-extent in pixels (x, y) like gsplat; 0 where culled
    valid: torch.Tensor  # [B, G] bool


# --------------------------------------------------------------------------- projection
def _jacobian_limits(K: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, ...]:
    """Clip limits on ``X/Z`` and ``Y/Z`` for the EWA Jacobian (each ``[B, 1]``)."""
    fx, fy, cx, cy = K[:, 0, 0:1], K[:, 1, 1:2], K[:, 0, 2:3], K[:, 1, 2:3]
    tan_x = 0.5 * width / fx
    tan_y = 0.5 * height / fy
    return (
        -(cx / fx + FRUSTUM_MARGIN * tan_x),
        (width - cx) / fx + FRUSTUM_MARGIN * tan_x,
        -(cy / fy + FRUSTUM_MARGIN * tan_y),
        (height - cy) / fy + FRUSTUM_MARGIN * tan_y,
    )


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 100.0,
) -> ProjectedGaussians:
    """Project 3D Gaussians into ``B`` pinhole cameras (EWA splatting, gsplat "antialiased").

    Args:
        means, quats (wxyz), scales, opacities: ``[G, ...]`` (shared by all cameras) or
            ``[B, G, ...]``; scales are standard deviations, opacities activated.
        viewmat: ``[B, 4, 4]`` world->camera (OpenCV). K: ``[B, 3, 3]`` pixel intrinsics.
        width, height: image size in pixels (used for the Jacobian clip and culling).
        eps2d: dilation added to the 2D covariance's diagonal, in px².
        near, far: depth range; Gaussians whose mean is outside are culled.

    Differentiable w.r.t. the Gaussian attributes (not the culling masks or radii).
    """
    if means.dim() == 2:
        means, quats, scales, opacities = (t.unsqueeze(0) for t in (means, quats, scales, opacities))
    R = viewmat[:, None, :3, :3]  # [B, 1, 3, 3]
    t = viewmat[:, None, :3, 3]  # [B, 1, 3]
    p_cam = (R @ means.unsqueeze(-1)).squeeze(-1) + t  # [B, G, 3]
    x, y, z = p_cam.unbind(-1)
    in_depth = (z >= near) & (z <= far)
    z_safe = torch.where(in_depth, z, torch.ones_like(z))
    rz = 1.0 / z_safe

    fx, fy = K[:, 0, 0:1], K[:, 1, 1:2]
    cx, cy = K[:, 0, 2:3], K[:, 1, 2:3]
    means2d = torch.stack((fx * x * rz + cx, fy * y * rz + cy), dim=-1)

    # EWA Jacobian at the (frustum-clipped) mean
    xlo, xhi, ylo, yhi = _jacobian_limits(K, width, height)
    tx = torch.minimum(torch.maximum(x * rz, xlo), xhi)
    ty = torch.minimum(torch.maximum(y * rz, ylo), yhi)
    zeros = torch.zeros_like(rz)
    J = torch.stack(
        (
            torch.stack((fx * rz, zeros, -fx * tx * rz), dim=-1),
            torch.stack((zeros, fy * rz, -fy * ty * rz), dim=-1),
        ),
        dim=-2,
    )  # [B, G, 2, 3]
    # Σ_world = M Mᵀ with M = rot(q) diag(s); Σ2d = (J R M)(J R M)ᵀ
    M = quat_to_rotmat(quats) * scales.unsqueeze(-2)  # [(B,) G, 3, 3]
    JRM = J @ (R @ M)  # [B, G, 2, 3]
    cov = JRM @ JRM.transpose(-1, -2)  # [B, G, 2, 2]
    c00, c01, c11 = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 1]

    det_orig = c00 * c11 - c01 * c01
    c00 = c00 + eps2d
    c11 = c11 + eps2d
    det = c00 * c11 - c01 * c01
    ok_det = det > 0
    det_safe = torch.where(ok_det, det, torch.ones_like(det))
    # clamp above 0, not at 0: sqrt's backward at 0 is 0/0 = NaN even for culled Gaussians
    compensation = torch.sqrt(torch.clamp(det_orig / det_safe, min=torch.finfo(det.dtype).tiny))
    conics = torch.stack((c11 / det_safe, -c01 / det_safe, c00 / det_safe), dim=-1)
    opac = opacities * compensation

    with torch.no_grad():
        extend = torch.sqrt(2.0 * torch.log(torch.clamp(opac, min=ALPHA_MIN) / ALPHA_MIN)).clamp(max=EXTEND_MAX)
        rx = torch.ceil(extend * torch.sqrt(c00.clamp(min=0)))
        ry = torch.ceil(extend * torch.sqrt(c11.clamp(min=0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        on_screen = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        valid = in_depth & ok_det & (opac >= ALPHA_MIN) & ((rx > 0) | (ry > 0)) & on_screen
        radii = torch.stack((rx, ry), dim=-1).to(torch.int32) * valid.unsqueeze(-1)
    B = viewmat.shape[0]
    return ProjectedGaussians(
        means2d=means2d.expand(B, -1, -1),
        conics=conics.expand(B, -1, -1),
        depths=z.expand(B, -1),
        opacities=opac.expand(B, -1),
        radii=radii.expand(B, -1, -1),
        valid=valid.expand(B, -1),
    )


# --------------------------------------------------------------------------- pair list
# Implementation notes (measured on a 2-core CPU):
# * 1D ``index_select`` gathers and ``[K, P]`` (row-per-channel) buffers are several times
#   faster than advanced indexing and ``[P, K]`` layouts, so per-pair code works per channel.
# * Each image is processed in bands of whole pixel rows of about ``PAIR_CHUNK`` pairs each.
#   This bounds every temporary to a few MB; without it, allocations above glibc's mmap
#   threshold (<= 32 MB) are page-faulted afresh on every call and made 256 px renders ~8x
#   slower than the pair count predicts.
PAIR_CHUNK = 1 << 19
PAIR_CHUNK_CUDA = 1 << 23  # bands of ~8M pairs on a GPU: fewer, larger kernels


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` for a 1D ``values`` (fast path)."""
    return values.index_select(0, index)


def _segments(start: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand ``counts`` into (owner index, ``start[owner]`` + offset within owner) items."""
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    shift = start - (torch.cumsum(counts, 0) - counts)
    return owner, torch.arange(owner.numel(), device=counts.device) + _take(shift, owner)


@dataclass
class _Rows:
    """Per (Gaussian, image row) spans of one image: columns ``x0 .. x0 + ncols - 1``."""

    gid: torch.Tensor  # [R] int64 Gaussian index, non-decreasing (depth order)
    y: torch.Tensor  # [R] int64 image row
    dy: torch.Tensor  # [R] row centre minus mean, y
    x0: torch.Tensor  # [R] int64 first column
    ncols: torch.Tensor  # [R] int64 number of columns (>= 0)

    def subset(self, index: torch.Tensor | slice) -> _Rows:
        return _Rows(*(t[index] for t in (self.gid, self.y, self.dy, self.x0, self.ncols)))


@dataclass
class _Pairs:
    """(Gaussian, pixel) pairs of one band, grouped by pixel, front to back within a pixel."""

    pix: torch.Tensor  # [P] int64 pixel index inside the band (y - y_start) * W + x, non-decreasing
    gid: torch.Tensor  # [P] int64 Gaussian index (into the depth-sorted inputs)
    dx: torch.Tensor  # [P] pixel centre minus mean, x
    dy: torch.Tensor  # [P] pixel centre minus mean, y


@torch.no_grad()
def _row_spans(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    width: int,
    height: int,
    max_radius: float | None,
    row_offset: torch.Tensor | None = None,
) -> _Rows:
    """Pixel spans where ``alpha >= 1/255`` (up to rounding) for every Gaussian.

    ``row_offset`` (int64 per Gaussian) places a Gaussian's image at that row of a taller output
    (a batch rasterized as one image ``B*height`` rows tall); spans are computed and clipped in
    the Gaussian's own ``height``-row image, so the result is exactly that of a separate render.

    The alpha threshold bounds ``sigma = ½ dᵀ Σ⁻¹ d <= s = ln(255 o)``: rows ``|dy| <=
    sqrt(2 s Σ_yy)``; within a row the ``dx`` interval is the root interval of
    ``½ a dx² + b dy dx + ½ c dy² - s``. Exact ellipse spans, no bounding-box corners.
    """
    mx, my = means2d[:, 0].contiguous(), means2d[:, 1].contiguous()
    a, b, c = (t.contiguous() for t in conics.unbind(-1))
    s = torch.log(opacities / ALPHA_MIN).clamp(min=0)
    det_c = (a * c - b * b).clamp(min=1e-30)
    ey = torch.sqrt(2.0 * s * a / det_c)  # Σ_yy = a / det(conic)
    if max_radius is not None:
        ey = ey.clamp(max=max_radius)
    y0 = torch.ceil(my - ey - 0.5).clamp(min=0, max=height)
    y1 = torch.floor(my + ey - 0.5).clamp(min=-1, max=height - 1)
    nrows = (y1 - y0 + 1).clamp(min=0).long()
    row_g, row_y = _segments(y0.long(), nrows)

    dy = row_y.to(means2d.dtype) + 0.5 - _take(my, row_g)
    ar, br = _take(a, row_g), _take(b, row_g)
    disc = (2.0 * ar * _take(s, row_g) - _take(det_c, row_g) * dy * dy).clamp(min=0)
    sq = torch.sqrt(disc)
    lo = (-br * dy - sq) / ar
    hi = (-br * dy + sq) / ar
    if max_radius is not None:
        lo = lo.clamp(min=-max_radius)
        hi = hi.clamp(max=max_radius)
    mxr = _take(mx, row_g)
    x0 = torch.ceil(mxr + lo - 0.5).clamp(min=0, max=width)
    x1 = torch.floor(mxr + hi - 0.5).clamp(min=-1, max=width - 1)
    ncols = (x1 - x0 + 1).clamp(min=0).long()
    keep = ncols > 0
    if row_offset is not None:
        row_y = row_y + _take(row_offset, row_g)
    return _Rows(row_g, row_y, dy, x0.long(), ncols).subset(keep)


@torch.no_grad()
def _bands(rows: _Rows, height: int, chunk: int) -> tuple[_Rows, list[tuple[int, int, int, int]]]:
    """Split an image into bands of whole rows with about ``chunk`` pairs each.

    Returns the spans reordered band by band (depth order kept inside a band) and, per band,
    ``(first span, end span, first image row, end image row)``.
    """
    per_row = torch.zeros(height + 1, dtype=torch.int64, device=rows.y.device)
    per_row.index_add_(0, rows.y + 1, rows.ncols)
    before = torch.cumsum(per_row, 0)[:-1]  # pairs in all rows above each row
    band_of_row = torch.div(before, chunk, rounding_mode="floor")
    band_of_row = torch.cumsum(torch.diff(band_of_row, prepend=band_of_row[:1]) > 0, 0)  # 0, 1, ... no gaps
    row_band = _take(band_of_row, rows.y)
    row_band, order = torch.sort(row_band, stable=True)
    rows = rows.subset(order)
    nb = int(band_of_row[-1]) + 1 if height > 0 else 0
    span_end = torch.cumsum(torch.bincount(row_band, minlength=nb), 0).tolist()
    y_end = torch.cumsum(torch.bincount(band_of_row, minlength=nb), 0).tolist()
    bands, s0, y0 = [], 0, 0
    for s1, y1 in zip(span_end, y_end):
        bands.append((s0, s1, y0, y1))
        s0, y0 = s1, y1
    return rows, bands


@torch.no_grad()
def _band_pairs(rows: _Rows, y_start: int, width: int, mx: torch.Tensor) -> _Pairs:
    """Expand the spans of one band into pixel-grouped pairs (stable: depth order kept)."""
    row_base = (rows.y - y_start) * width
    pair_row, pix = _segments(row_base + rows.x0, rows.ncols)
    pix_sorted, perm = torch.sort(pix.to(torch.int32), stable=True)
    pair_row = _take(pair_row, perm)
    pix_sorted = pix_sorted.long()
    gid = _take(rows.gid, pair_row)
    x = pix_sorted - _take(row_base, pair_row)
    dx = x.to(mx.dtype) + 0.5 - _take(mx, gid)
    return _Pairs(pix=pix_sorted, gid=gid, dx=dx, dy=_take(rows.dy, pair_row))


# --------------------------------------------------------------------------- compositing
def _segment_bounds(counts: torch.Tensor) -> torch.Tensor:
    """``[npix + 1]`` offsets: pixel ``p``'s pairs are ``offsets[p]:offsets[p + 1]``."""
    return torch.cat((counts.new_zeros(1), torch.cumsum(counts, 0)))


def _cumsum_at(cs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Inclusive cumsum evaluated just before ``positions`` (0 at position 0)."""
    return torch.cat((cs.new_zeros(1), cs)).index_select(0, positions)


@dataclass
class _BandState:
    """What one band's backward needs (everything per pair, in pixel-grouped order)."""

    pix_start: int
    npix: int
    pairs: _Pairs
    alpha: torch.Tensor  # [P] alpha after the 1/255 cut (0) and the 0.999 clamp
    trans: torch.Tensor  # [P] transmittance in front of the pair; 0 once compositing stopped
    bounds: torch.Tensor  # [npix + 1] pixel segment offsets


def _composite_band(
    pairs: _Pairs, npix: int, conics_t: torch.Tensor, opacities: torch.Tensor, feats_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward for one band: returns ``out [F + 1, npix]``, ``alpha``, ``trans``, ``bounds``."""
    g, dx, dy, pix = pairs.gid, pairs.dx, pairs.dy, pairs.pix
    ag, bg, cg = (_take(row, g) for row in conics_t)
    sigma = 0.5 * (ag * dx * dx + cg * dy * dy) + bg * dx * dy
    alpha = _take(opacities, g) * torch.exp(-sigma)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha.clamp(max=ALPHA_MAX), 0.0)

    bounds = _segment_bounds(torch.bincount(pix, minlength=npix))
    log1m = torch.log1p(-alpha).double()  # float64: one cumsum runs over the whole band
    cs = torch.cumsum(log1m, 0)
    log_t_incl = cs - _take(_cumsum_at(cs, bounds[:-1]), pix)
    keep = log_t_incl > math.log(T_MIN)  # gsplat: stop before T would drop to <= 1e-4
    trans = torch.where(keep, torch.exp(log_t_incl - log1m), 0.0).to(alpha.dtype)
    w = alpha * trans

    F = feats_t.shape[0]
    buf = w.new_empty(F + 1, w.numel())
    for k in range(F):
        torch.mul(w, _take(feats_t[k], g), out=buf[k])
    buf[F] = w
    out = w.new_zeros(F + 1, npix).index_add_(1, pix, buf)
    return out, alpha, trans, bounds


def _composite_band_backward(
    st: _BandState, grad_out: torch.Tensor, conics_t: torch.Tensor, opacities: torch.Tensor, feats_t: torch.Tensor
) -> torch.Tensor:
    """Per-pair gradients of one band, ``[6 + F, P]``: d(mean2d x, y), d(conic a, b, c), d(opacity), d(feats).

    With ``v_i = dL/dw_i = f_i · dL/dout + dL/dalpha_out`` and ``w_i = alpha_i T_i``:
    ``dL/dalpha_i = T_i v_i - (Σ_{j>i} w_j v_j) / (1 - alpha_i)`` (suffix sum per pixel).
    """
    pairs, alpha, trans = st.pairs, st.alpha, st.trans
    g, dx, dy, pix = pairs.gid, pairs.dx, pairs.dy, pairs.pix
    F = feats_t.shape[0]
    go = grad_out[:, st.pix_start : st.pix_start + st.npix]
    gp = [_take(go[k], pix) for k in range(F + 1)]  # dL/dout at each pair's pixel
    v = gp[F].clone()
    for k in range(F):
        v.addcmul_(_take(feats_t[k], g), gp[k])
    w = alpha * trans
    cs = torch.cumsum((w * v).double(), 0)
    behind = (_take(_cumsum_at(cs, st.bounds[1:]), pix) - cs).to(alpha.dtype)  # Σ_{j>i} w_j v_j
    live = (trans > 0) & (alpha < ALPHA_MAX)  # alpha at the 0.999 clamp has no gradient
    g_alpha = torch.where(live, trans * v - behind / (1.0 - alpha), 0.0)
    g_sigma = g_alpha * alpha  # = -dL/dsigma, since d alpha / d sigma = -alpha
    ag, bg, cg = (_take(row, g) for row in conics_t)

    buf = w.new_empty(6 + F, w.numel())
    g_sigma_dx, g_sigma_dy = g_sigma * dx, g_sigma * dy
    torch.addcmul(ag * g_sigma_dx, bg, g_sigma_dy, out=buf[0])  # dsigma/dmean = -(Σ⁻¹ d)
    torch.addcmul(bg * g_sigma_dx, cg, g_sigma_dy, out=buf[1])
    torch.mul(g_sigma_dx, dx, out=buf[2]).mul_(-0.5)  # dsigma/da = ½ dx²
    torch.mul(g_sigma_dx, dy, out=buf[3]).neg_()  # dsigma/db = dx dy
    torch.mul(g_sigma_dy, dy, out=buf[4]).mul_(-0.5)  # dsigma/dc = ½ dy²
    torch.div(g_alpha * alpha, _take(opacities, g), out=buf[5])  # dalpha/do = alpha / o
    for k in range(F):
        torch.mul(w, gp[k], out=buf[6 + k])
    return buf


class _Composite(torch.autograd.Function):
    """Alpha-composite depth-sorted 2D Gaussians of one image; hand-written backward.

    Inputs (``N`` Gaussians, front to back): ``means2d [N, 2]``, ``conics [N, 3]``,
    ``opacities [N]``, ``feats [N, F]``. Output ``[F + 1, H*W]`` (channel-major): ``Σ w f``
    per feature channel, then ``Σ w``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, means2d, conics, opacities, feats, width: int, height: int, max_radius: float | None, chunk: int,
        images: int = 1, row_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        conics_t = conics.t().contiguous()  # [3, N]
        feats_t = feats.t().contiguous()  # [F, N]
        opacities = opacities.contiguous()
        mx = means2d[:, 0].contiguous()
        rows = _row_spans(means2d, conics, opacities, width, height, max_radius, row_offset)
        rows, bands = _bands(rows, images * height, chunk)
        out = feats.new_zeros(feats.shape[1] + 1, width * height * images)
        states = []
        for s0, s1, y0, y1 in bands:
            pairs = _band_pairs(rows.subset(slice(s0, s1)), y0, width, mx)
            npix = (y1 - y0) * width
            band_out, alpha, trans, bounds = _composite_band(pairs, npix, conics_t, opacities, feats_t)
            out[:, y0 * width : y1 * width] = band_out
            states.append(_BandState(y0 * width, npix, pairs, alpha, trans, bounds))
        ctx.states = states  # intermediates (not inputs/outputs) may live on ctx
        ctx.save_for_backward(conics_t, opacities, feats_t)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        conics_t, opacities, feats_t = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grads = grad_out.new_zeros(6 + feats_t.shape[0], feats_t.shape[1])
        for st in ctx.states:
            grads.index_add_(1, st.pairs.gid, _composite_band_backward(st, grad_out, conics_t, opacities, feats_t))
        grads = grads.t()
        return grads[:, 0:2], grads[:, 2:5], grads[:, 5], grads[:, 6:], None, None, None, None, None, None


# --------------------------------------------------------------------------- torch backend
def _rasterize_torch(
    gaussians: Gaussians,
    camera: Camera,
    eps2d: float,
    near: float,
    far: float,
    max_radius: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-PyTorch forward; returns ``rgb [B,H,W,3]``, ``alpha``, ``depth`` (no background).

    The ``B`` images are composited in one pass as a single image ``B*H`` rows tall: every
    Gaussian's spans are computed in its own image and placed ``i*H`` rows down, and the
    Gaussians are ordered image by image, front to back, so each pixel sees exactly its own
    image's Gaussians in depth order (no per-image Python loop: a few large kernels on a GPU).
    """
    W, H, B = camera.width, camera.height, camera.batch_size
    proj = project_gaussians(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities,
        camera.viewmat, camera.K, W, H, eps2d=eps2d, near=near, far=far,
    )
    rgb = gaussians.colors(camera.position)  # [B, G, 3] (campos [B, 3] broadcasts over shared Gaussians)
    feats = torch.cat((rgb.expand(B, -1, -1), proj.depths.unsqueeze(-1)), dim=-1)  # [B, G, 4]
    G = proj.depths.shape[1]
    key = torch.where(proj.valid, proj.depths.detach(), torch.full_like(proj.depths, math.inf))
    order = torch.sort(key, dim=1, stable=True).indices  # valid Gaussians first, front to back
    kept = torch.arange(G, device=key.device)[None] < proj.valid.sum(dim=1, keepdim=True)
    flat = (order + torch.arange(B, device=key.device)[:, None] * G)[kept]  # image-major, depth order
    row_offset = torch.div(flat, G, rounding_mode="floor") * H
    chunk = PAIR_CHUNK_CUDA if key.device.type == "cuda" else PAIR_CHUNK
    out = _Composite.apply(
        proj.means2d.reshape(B * G, 2)[flat], proj.conics.reshape(B * G, 3)[flat],
        proj.opacities.reshape(B * G)[flat], feats.reshape(B * G, -1)[flat], W, H, max_radius, chunk, B, row_offset,
    )
    out = out.t().reshape(B, H, W, -1)  # [B, H, W, 5]
    return out[..., 0:3], out[..., 4:5], out[..., 3:4]


# --------------------------------------------------------------------------- gsplat backend
def _gsplat_rasterization():
    try:
        from gsplat import rasterization  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rasterize(backend='gsplat') needs the 'gsplat' package (pip install 'agora-avatars[cuda]'), "
            "or use backend='torch'"
        ) from exc
    return rasterization


def _rasterize_gsplat(
    gaussians: Gaussians, camera: Camera, eps2d: float, near: float, far: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # pragma: no cover - needs CUDA + gsplat
    """gsplat forward; same outputs as :func:`_rasterize_torch`.

    Uses gsplat's flat API (``means [N,3]``, ``viewmats [C,4,4]``), which every gsplat 1.x
    accepts: shared Gaussians are rendered for all cameras in one call, batched Gaussians one
    avatar (and its camera) per call. Render mode ``"RGB+D"`` gives the accumulated depth
    ``Σ w z``; the background is composited here, not by gsplat, so that depth is untouched.
    """
    rasterization = _gsplat_rasterization()
    if not gaussians.means.is_cuda:
        raise ValueError("rasterize(backend='gsplat') needs the Gaussians on a CUDA device")
    kwargs = dict(
        width=camera.width, height=camera.height, near_plane=near, far_plane=far, eps2d=eps2d,
        sh_degree=1, rasterize_mode="antialiased", render_mode="RGB+D",
    )

    def call(g: Gaussians, viewmats: torch.Tensor, Ks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        colors, alphas, _ = rasterization(
            means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities, colors=g.sh,
            viewmats=viewmats.contiguous(), Ks=Ks.contiguous(), **kwargs,
        )
        return colors, alphas

    if gaussians.batch_shape:
        parts = [call(gaussians[i], camera.viewmat[i : i + 1], camera.K[i : i + 1]) for i in range(camera.batch_size)]
        colors = torch.cat([p[0] for p in parts])
        alphas = torch.cat([p[1] for p in parts])
    else:
        colors, alphas = call(gaussians, camera.viewmat, camera.K)
    return colors[..., 0:3], alphas, colors[..., 3:4]


def gsplat_available() -> bool:
    """True when ``gsplat`` imports and CUDA is available."""
    if not torch.cuda.is_available():
        return False
    try:
        _gsplat_rasterization()
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- entry point
def _prepare_camera(gaussians: Gaussians, camera: Camera, width: int | None, height: int | None) -> Camera:
    w = camera.width if width is None else int(width)
    h = camera.height if height is None else int(height)
    if (w, h) != (camera.width, camera.height):
        camera = camera.resized(w, h)
    camera = camera.to(device=gaussians.means.device, dtype=gaussians.means.dtype)
    nb = len(gaussians.batch_shape)
    if nb > 1:
        raise ValueError(f"Gaussians may have at most one batch dimension, got {tuple(gaussians.batch_shape)}")
    if nb == 1:
        B = gaussians.batch_shape[0]
        if camera.batch_size == 1 and B > 1:
            camera = Camera(camera.viewmat.expand(B, 4, 4), camera.K.expand(B, 3, 3), camera.width, camera.height)
        elif camera.batch_size != B:
            raise ValueError(f"batched Gaussians ({B}) need as many cameras, got {camera.batch_size}")
    return camera


def _background(background: torch.Tensor | None, B: int, ref: torch.Tensor) -> torch.Tensor | None:
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=ref.dtype, device=ref.device)
    if bg.shape not in ((3,), (B, 3)):
        raise ValueError(f"background must be [3] or [{B}, 3], got {tuple(bg.shape)}")
    return bg.expand(B, 3).reshape(B, 1, 1, 3)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``"auto"`` to a concrete backend; validate the name."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    return backend


def rasterize(
    gaussians: Gaussians,
    camera: Camera,
    width: int | None = None,
    height: int | None = None,
    background: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 100.0,
    max_radius: float | None = None,
) -> RenderOutput:
    """Render Gaussians from ``B`` cameras (gsplat ``rasterize_mode="antialiased"``, SH degree 1).

    Args:
        gaussians: unbatched ``[G, ...]`` (seen by every camera) or batched ``[B, G, ...]``
            (avatar ``i`` seen by camera ``i``; a single camera is broadcast).
        camera: ``B`` cameras. ``width``/``height`` override its resolution (intrinsics are
            scaled with :meth:`Camera.resized`).
        background: ``[3]`` or ``[B, 3]`` colour composited as ``image + (1 - alpha) * bg``;
            black when None.
        backend: ``"auto"``, ``"torch"`` or ``"gsplat"`` (see the module docstring).
        eps2d: screen-space dilation (px²) with opacity compensation.
        near, far: Gaussians whose mean has camera depth outside ``[near, far]`` are culled.
        max_radius: torch backend only - optionally truncate every footprint to
            ``|dx|, |dy| <= max_radius`` px to bound the cost of huge splats (None: exact).

    Returns:
        :class:`RenderOutput` with ``image [B,H,W,3]``, ``alpha [B,H,W,1]`` and the
        alpha-weighted camera depth ``depth [B,H,W,1]``.
    """
    name = resolve_backend(backend, gaussians.means.device)
    camera = _prepare_camera(gaussians, camera, width, height)
    if name == "gsplat":
        rgb, alpha, depth = _rasterize_gsplat(gaussians, camera, eps2d, near, far)
    else:
        rgb, alpha, depth = _rasterize_torch(gaussians, camera, eps2d, near, far, max_radius)
    bg = _background(background, camera.batch_size, rgb)
    if bg is not None:
        rgb = rgb + (1.0 - alpha) * bg
    return RenderOutput(image=rgb, alpha=alpha, depth=depth)


__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "BACKENDS",
    "ProjectedGaussians",
    "RenderOutput",
    "T_MIN",
    "gsplat_available",
    "project_gaussians",
    "rasterize",
    "resolve_backend",
]
