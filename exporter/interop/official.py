"""Reader of the authors' AGORA-M release files, and their conversion to an ``.agm`` bundle.

``agora-export import-official DIR OUT.agm`` turns what the authors publish for their web demo
(and/or their PyTorch files) into one compact ``.agm`` that this project's viewer plays, without
retraining. The accepted layout is documented in ``docs/interop.md``; in short, ``DIR`` holds

* ``pca_basis_K<K>.bin`` (or ``.bin.gz``): the shared Gaussian blendshape bases, a 16-byte header
  of four little-endian u32 ``(K, G, width, height)`` then ``width x height`` RGBA16F texels, of
  which the first ``3 K G`` are used, k-major: texel ``(k G + n) 3 + s`` of basis ``k`` and
  Gaussian ``n`` holds 4 of the 12 halves ``xyz(3) scale(3) quat wxyz(4) opacity(1) pad(1)``
  (3 texels x 8 bytes = 24 bytes per Gaussian and basis);
* per identity (``DIR`` itself, or one ``seed_<N>/`` folder per identity):
  ``base_attributes.bin``: a 16-byte header ``(G, width, height, 0)`` then ``width x height``
  RGBA32F texels, the first ``4 G`` used, 16 floats per Gaussian ``pos(3) scale(3) quat wxyz(4)
  opacity(1) rgb(3) pad(2)`` (RGB baked from SH degree 1 at one front camera, in [0, 1]);
  ``mlp_weights.json``: ``{"w_code": [512 floats], "layers": [{"in", "out", "weight": [out][in]
  (row-major), "bias": [out]}, ...], "K", "activation", "alpha"}``; ``camera_params.json``
  (optional): ``{"position", "rotation" (3x3 camera-to-world, OpenCV axes), "fx", "fy", "width",
  "height", "centroid"}``;
* optionally ``svd_basis.pt`` (``G``, ``K``, ``U_xyz [K, 3G]``, ``U_scale [K, 3G]``,
  ``U_rotation [K, 4G]``, ``U_opacity [K, G]``, optional singular values ``S_<group>`` and
  ``N_total``) and ``mlp_regressor.pt`` (``state_dict`` with ``net.<i>.weight/bias``), read with
  ``torch.load(weights_only=True)`` only: a file that needs more (pickled code) is refused.

Their MLP takes ``w (512) ++ condition`` and returns ``4 K`` coefficients (group order xyz, scale,
rotation, opacity); the ``w`` columns of the first layer are folded into a per-identity bias
(:func:`exporter.agm.model.fold_identity_into_bias`). The condition keeps their 55-value layout
``exp_0..exp_49, jaw_x, jaw_y, jaw_z, eyelid_l, eyelid_r`` (parameter names stored in the
``.agm``). Their baked RGB has no view dependence: it is stored as the SH DC term with zero
degree-1 bands. Every size is checked against the file: a wrong, truncated or inconsistent file
raises :class:`OfficialFormatError` with a one-line message naming the file and the problem.

Checks beyond sizes: ``w_code`` must have exactly the :data:`AUTHORS_W_DIM` (512) values of their
identity code, since a shorter one would shift every condition name (:func:`check_condition_split`);
``mlp_regressor.pt`` and the JSON MLP must agree unless ``prefer`` chooses; of ``X.bin`` and
``X.bin.gz`` the ``.gz`` is read, as their viewer does (:func:`prefer_gz`); and by default the
Gaussians their viewer hides (:mod:`exporter.interop.authors_filters`) are hidden
(:func:`hide_like_authors`).
"""
from __future__ import annotations

import gzip
import math
import pickle
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from agora_core import __version__
from agora_core.heads.flame import EXPRESSION_RANGE
from agora_core.types.errors import AgoraError
from agora_core.types.gaussians import Gaussians, rgb_to_sh_dc
from agora_core.types.io import file_sha256
from agora_core.types.safe_json import loads_bounded
from agora_core.types.spec import GROUP_NAMES, GROUPS, condition_tail_specs, parameter_spec
from exporter.agm.model import AgmBasis, AgmBundle, AgmIdentity, AgmLayer, AgmMLP, fold_identity_into_bias
from exporter.agm.sparsify import sparsify_bases
from exporter.agm.write import WriteStats, write_agm
from exporter.interop.authors_filters import NEIGHBOURS, OUTLIER_DISTANCE_M, SMALL_PERCENTILE, hidden_mask

HEADER = struct.Struct("<4I")
NEUTRAL_FILE = "base_attributes.bin"
MLP_FILE = "mlp_weights.json"
CAMERA_FILE = "camera_params.json"
SVD_FILE = "svd_basis.pt"
MLP_PT_FILE = "mlp_regressor.pt"
BASIS_PATTERN = re.compile(r"^pca_basis_K(\d+)\.bin(\.gz)?$")
IDENTITY_DIR = re.compile(r"^seed_(-?\d+)$")
NEUTRAL_FLOATS = 16  # 4 RGBA32F texels per Gaussian
BASIS_HALVES = 12  # 3 RGBA16F texels per Gaussian and basis
# offsets of each group inside the 12 halves of one Gaussian and basis (the 12th is padding)
BASIS_SLICES = {"xyz": slice(0, 3), "scale": slice(3, 6), "rotation": slice(6, 10), "opacity": slice(10, 11)}
NEUTRAL_SLICES = {"means": slice(0, 3), "scales": slice(3, 6), "quats": slice(6, 10), "opacities": slice(10, 11),
                  "rgb": slice(11, 14)}
SVD_KEYS = {"xyz": "U_xyz", "scale": "U_scale", "rotation": "U_rotation", "opacity": "U_opacity"}
MAX_GAUSSIANS = 1 << 24  # sanity bounds checked before anything is allocated from a header
MAX_RANK = 4096
MAX_WIDTH = 1 << 16
MAX_JSON_BYTES = 512 << 20
MAX_JSON_DEPTH = 8  # mlp_weights.json nests 4 levels (layers[j].weight[row])
DEFAULT_SLOPE = 0.2  # the authors' LeakyReLU
AUTHORS_W_DIM = 512  # their identity code w (StyleGAN's W space): the first 512 inputs of their MLP
MLP_AGREEMENT = 1e-5  # largest relative difference between the .pt and JSON MLPs taken as "the same weights"


class OfficialFormatError(AgoraError):
    """One of the authors' files is missing, malformed, truncated or inconsistent with the others."""


# ============================================================================ small readers
def _fail(path: Path | str, message: str):
    raise OfficialFormatError(f"{path}: {message}")


def _read_exact(path: Path, expected: int, what: str) -> bytes:
    """Exactly ``expected`` bytes of the file (a ``.gz`` decompressed, never beyond ``expected + 1``
    bytes); a shorter file is reported as truncated, a longer one as having trailing data."""
    if path.suffix != ".gz":
        size = path.stat().st_size
        if size != expected:
            _check_length(path, b"", expected, what, size)
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            data = f.read(expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        _fail(path, f"not a valid gzip file or a truncated one ({exc})")
    _check_length(path, data, expected, what)
    return data


def _texture_header(path: Path) -> tuple[int, int, int, int]:
    """The four u32 of the 16-byte texture header (decompressing only that much of a ``.gz``)."""
    if not path.is_file():
        _fail(path, "file not found")
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
            head = f.read(HEADER.size)
    except (OSError, EOFError, zlib.error) as exc:
        _fail(path, f"not a valid gzip file ({exc})")
    if len(head) < HEADER.size:
        _fail(path, f"truncated: {len(head)} bytes, less than the {HEADER.size}-byte header")
    return HEADER.unpack(head)


def _texture_size(path: Path, what: str, texels: int, width: int, height: int, texel_bytes: int) -> int:
    """Check ``width x height`` is the tightest texture holding ``texels``; return the file length."""
    if not 1 <= width <= MAX_WIDTH:
        _fail(path, f"{what}: texture width {width} is out of range (1..{MAX_WIDTH})")
    need = -(-texels // width)
    if height != need:
        _fail(path, f"{what}: texture height {height} does not fit {texels} texels at width {width} "
                    f"(expected {need})")
    return HEADER.size + width * height * texel_bytes


def _check_length(path: Path, data: bytes, expected: int, what: str, size: int | None = None) -> None:
    size = len(data) if size is None else size
    if size < expected:
        _fail(path, f"truncated: {what} needs {expected} bytes, the file has {size}")
    if size > expected:
        _fail(path, f"{size} bytes, more than the {expected} bytes of {what} (trailing data or a wrong header)")


def _finite(path: Path, arr: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(arr)):
        bad = int(np.argwhere(~np.isfinite(arr.reshape(arr.shape[0], -1)))[0, 0])
        _fail(path, f"{what} has a non-finite value (Gaussian or row {bad})")


# ============================================================================ neutral Gaussians
def read_neutral(path: str | Path) -> tuple[Gaussians, np.ndarray]:
    """``base_attributes.bin`` -> (neutral :class:`Gaussians` with SH DC from the baked RGB, rgb ``[G, 3]``)."""
    path = Path(path)
    G, width, height, reserved = _texture_header(path)
    if not 1 <= G <= MAX_GAUSSIANS:
        _fail(path, f"header: Gaussian count {G} is out of range (1..{MAX_GAUSSIANS}; is this a neutral texture?)")
    if reserved != 0:
        _fail(path, f"header: the 4th value must be 0, got {reserved} (not a neutral-Gaussian texture: "
                    "a basis texture's header is (K, G, width, height))")
    expected = _texture_size(path, "neutral texture", 4 * G, width, height, 16)
    data = _read_exact(path, expected, f"{G} Gaussians as a {width}x{height} RGBA32F texture")
    values = np.frombuffer(data, "<f4", count=G * NEUTRAL_FLOATS, offset=HEADER.size).reshape(G, NEUTRAL_FLOATS)
    values = values.astype(np.float32)
    _finite(path, values[:, :14], "the neutral Gaussians")
    s = NEUTRAL_SLICES
    scales, quats, opac, rgb = (
        values[:, s["scales"]],
        values[:, s["quats"]],
        values[:, s["opacities"]][:, 0],
        values[:, s["rgb"]],
    )
    if np.any(scales <= 0):
        _fail(
            path, f"Gaussian {int(np.argwhere(scales <= 0)[0, 0])} has a non-positive scale (expected activated scales)"
        )
    norms = np.linalg.norm(quats, axis=1)
    if np.any(norms < 1e-6):
        _fail(path, f"Gaussian {int(np.argmin(norms))} has a zero quaternion")
    if np.any((opac < -1e-4) | (opac > 1 + 1e-4)):
        _fail(path, f"Gaussian {int(np.argwhere((opac < -1e-4) | (opac > 1 + 1e-4))[0, 0])} has an opacity outside "
                    "[0, 1] (expected activated opacities)")
    sh = torch.zeros(G, 4, 3)
    sh[:, 0] = rgb_to_sh_dc(torch.from_numpy(np.clip(rgb, 0.0, 1.0)))
    neutral = Gaussians(means=torch.from_numpy(values[:, s["means"]].copy()), scales=torch.from_numpy(scales.copy()),
                        quats=torch.from_numpy(quats.copy()), opacities=torch.from_numpy(np.clip(opac, 0.0, 1.0)),
                        sh=sh)
    return neutral, rgb.copy()


# ============================================================================ bases
def read_basis_texture(path: str | Path, gaussian_count: int | None = None) -> dict[str, np.ndarray]:
    """``pca_basis_K<K>.bin[.gz]`` -> ``{group: float32 [K, G, d]}`` (the fp16 values, exactly)."""
    path = Path(path)
    K, G, width, height = _texture_header(path)
    if not 1 <= K <= MAX_RANK:
        _fail(path, f"header: basis count K = {K} is out of range (1..{MAX_RANK}; is this a basis texture?)")
    if not 1 <= G <= MAX_GAUSSIANS:
        _fail(path, f"header: Gaussian count {G} is out of range (1..{MAX_GAUSSIANS})")
    m = BASIS_PATTERN.match(path.name)
    if m and int(m.group(1)) != K:
        _fail(path, f"header says K = {K} but the file name says K = {m.group(1)}")
    if gaussian_count is not None and G != gaussian_count:
        _fail(path, f"size mismatch: the bases cover {G} Gaussians, the neutral avatar has {gaussian_count}")
    expected = _texture_size(path, "basis texture", 3 * K * G, width, height, 8)
    data = _read_exact(path, expected, f"K = {K} bases of {G} Gaussians as a {width}x{height} RGBA16F texture")
    halves = np.frombuffer(data, "<f2", count=K * G * BASIS_HALVES, offset=HEADER.size).reshape(K, G, BASIS_HALVES)
    out = {g: np.ascontiguousarray(halves[:, :, BASIS_SLICES[g]], dtype=np.float32) for g in GROUP_NAMES}
    for g, arr in out.items():
        if not np.all(np.isfinite(arr)):
            _fail(path, f"the {g} basis has a non-finite value")
    return out


def _torch_load(path: Path) -> dict:
    if not path.is_file():
        _fail(path, "file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # the restricted unpickler met an object: in our words, not PyTorch's advice
        _fail(path, "needs more than tensors and plain containers to load (it would run code stored in the "
                    "file), refused; re-save it with plain tensors")
    except Exception as exc:  # noqa: BLE001 - zip/format errors of a corrupt or foreign file
        _fail(path, f"not a readable PyTorch file ({type(exc).__name__})")
    if not isinstance(obj, dict):
        _fail(path, f"expected a dict of tensors, got {type(obj).__name__}")
    return obj


def _int_value(path: Path, obj: dict, key: str) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        _fail(path, f"'{key}' must be an integer, got {type(v).__name__}")
    return int(v)


def read_svd_basis(
    path: str | Path, gaussian_count: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """``svd_basis.pt`` -> (``{group: float32 [K, G, d]}``, coefficient RMS per group or None).

    The coefficient RMS is ``S_k / sqrt(N_total)`` when the singular values and ``N_total`` are stored.
    """
    path = Path(path)
    obj = _torch_load(path)
    missing = [k for k in SVD_KEYS.values() if k not in obj]
    if missing:
        _fail(path, f"missing the key(s) {', '.join(missing)} (expected U_xyz, U_scale, U_rotation, U_opacity)")
    G = _int_value(path, obj, "G")
    K = _int_value(path, obj, "K")
    bases = {}
    for g, d, _ in GROUPS:
        U = obj[SVD_KEYS[g]]
        if not isinstance(U, torch.Tensor) or U.dim() != 2:
            _fail(path, f"'{SVD_KEYS[g]}' must be a 2-D tensor [K, G*{d}]")
        k, n = U.shape
        if n % d:
            _fail(path, f"'{SVD_KEYS[g]}' has {n} columns, not a multiple of {d}")
        if G is None:
            G = n // d
        if n != G * d:
            _fail(path, f"size mismatch: '{SVD_KEYS[g]}' has {n} columns, expected G x {d} = {G * d}")
        if K is not None and k < K:
            _fail(path, f"size mismatch: '{SVD_KEYS[g]}' has {k} rows, 'K' says {K}")
        bases[g] = U[: K or k].detach().float().numpy().reshape(-1, G, d).copy()
        if not np.all(np.isfinite(bases[g])):
            _fail(path, f"'{SVD_KEYS[g]}' has a non-finite value")
    ranks = {bases[g].shape[0] for g in GROUP_NAMES}
    if len(ranks) != 1:
        _fail(path, f"the four bases have different ranks {sorted(ranks)}")
    if gaussian_count is not None and G != gaussian_count:
        _fail(path, f"size mismatch: the bases cover {G} Gaussians, the neutral avatar has {gaussian_count}")
    rms = None
    n_total = _int_value(path, obj, "N_total")
    if n_total and all(isinstance(obj.get(f"S_{g}"), torch.Tensor) for g in GROUP_NAMES):
        rms = {}
        for g in GROUP_NAMES:
            S = obj[f"S_{g}"].detach().float().reshape(-1).numpy()
            if S.shape[0] < bases[g].shape[0]:
                _fail(path, f"'S_{g}' has {S.shape[0]} values, fewer than the {bases[g].shape[0]} bases")
            rms[g] = (S[: bases[g].shape[0]] / math.sqrt(n_total)).astype(np.float32)
    return bases, rms


# ============================================================================ MLP
@dataclass
class OfficialMLP:
    """The authors' coefficient MLP on ``w ++ condition``: ``(weight [out, in], bias [out])`` per layer."""

    layers: list[tuple[np.ndarray, np.ndarray]]
    negative_slope: float = DEFAULT_SLOPE

    @property
    def out_features(self) -> int:
        return int(self.layers[-1][0].shape[0])

    @property
    def in_features(self) -> int:
        return int(self.layers[0][0].shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, np.float64)
        for j, (W, b) in enumerate(self.layers):
            h = W.astype(np.float64) @ h + b
            if j < len(self.layers) - 1:
                h = np.where(h >= 0, h, self.negative_slope * h)
        return h


def _matrix(path: Path, value, shape: tuple[int, ...], what: str, dtype=np.float32) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        _fail(path, f"{what} is not a numeric array")
    if arr.shape != shape:
        _fail(path, f"size mismatch: {what} has shape {list(arr.shape)}, expected {list(shape)}")
    if not np.all(np.isfinite(arr)):
        _fail(path, f"{what} has a non-finite value")
    return arr.astype(dtype)


def _check_chain(path: Path, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
    if not layers:
        _fail(path, "the MLP has no layers")
    for j in range(1, len(layers)):
        if layers[j][0].shape[1] != layers[j - 1][0].shape[0]:
            _fail(path, f"size mismatch: layer {j} takes {layers[j][0].shape[1]} inputs but layer {j - 1} "
                        f"has {layers[j - 1][0].shape[0]} outputs")


def _load_json(path: Path) -> dict:
    if not path.is_file():
        _fail(path, "file not found")
    if path.stat().st_size > MAX_JSON_BYTES:
        _fail(path, f"larger than {MAX_JSON_BYTES >> 20} MB: not an MLP/camera JSON")
    try:
        obj = loads_bounded(path.read_bytes().decode("utf-8"), MAX_JSON_DEPTH)
    except (UnicodeDecodeError, ValueError) as exc:
        _fail(path, f"not valid JSON ({str(exc).splitlines()[0][:120]})")
    if not isinstance(obj, dict):
        _fail(path, "expected a JSON object")
    return obj


def read_mlp_json(path: str | Path) -> tuple[OfficialMLP, np.ndarray, int | None]:
    """``mlp_weights.json`` -> (MLP, ``w_code`` float32 ``[Dw]``, the declared ``K`` or None)."""
    path = Path(path)
    obj = _load_json(path)
    for key in ("w_code", "layers"):
        if key not in obj:
            _fail(path, f"missing the key '{key}' (expected w_code, layers and K)")
    if not isinstance(obj["w_code"], list) or not obj["w_code"]:
        _fail(path, "'w_code' must be a non-empty list of numbers")
    w = _matrix(path, obj["w_code"], (len(obj["w_code"]),), "w_code")
    if not isinstance(obj["layers"], list):
        _fail(path, "'layers' must be a list")
    layers = []
    for j, layer in enumerate(obj["layers"]):
        if not isinstance(layer, dict) or not {"weight", "bias"} <= set(layer):
            _fail(path, f"layers[{j}] must be an object with 'weight' and 'bias'")
        w_rows = layer["weight"]
        n_out = layer.get("out", len(w_rows) if isinstance(w_rows, list) else -1)
        n_in = layer.get(
            "in", len(w_rows[0]) if isinstance(w_rows, list) and w_rows and isinstance(w_rows[0], list) else -1
        )
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (n_out, n_in)):
            _fail(path, f"layers[{j}]: 'in'/'out' must be positive integers")
        layers.append((_matrix(path, w_rows, (n_out, n_in), f"layers[{j}].weight"),
                       _matrix(path, layer["bias"], (n_out,), f"layers[{j}].bias")))
    _check_chain(path, layers)
    act = obj.get("activation", "leaky_relu")
    if act != "leaky_relu":
        _fail(path, f"unsupported activation {act!r} (the authors' MLP uses leaky_relu)")
    slope = obj.get("alpha", DEFAULT_SLOPE)
    if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not math.isfinite(slope):
        _fail(path, "'alpha' must be a number")
    K = obj.get("K")
    if K is not None and (isinstance(K, bool) or not isinstance(K, int) or K < 1):
        _fail(path, f"'K' must be a positive integer, got {K!r}")
    check_condition_split(path, layers[0][0].shape[1], w.shape[0])
    return OfficialMLP(layers, float(slope)), w, K


def read_mlp_pt(path: str | Path) -> OfficialMLP:
    """``mlp_regressor.pt`` (``state_dict`` of ``net.<i>.weight/bias`` Linear layers) -> MLP."""
    path = Path(path)
    obj = _torch_load(path)
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict):
        _fail(path, "'state_dict' must be a dict of tensors")
    index = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^(?:net\.)?(\d+)\.weight$", str(k)))})
    if not index:
        _fail(path, "no 'net.<i>.weight' tensors: not the authors' coefficient MLP")
    prefix = "net." if f"net.{index[0]}.weight" in sd else ""
    layers = []
    for i in index:
        W, b = sd.get(f"{prefix}{i}.weight"), sd.get(f"{prefix}{i}.bias")
        if not isinstance(W, torch.Tensor) or W.dim() != 2 or not isinstance(b, torch.Tensor):
            _fail(path, f"'{prefix}{i}.weight'/'{prefix}{i}.bias' must be a 2-D weight and its bias")
        W = W.detach().float().numpy().copy()
        bias = _matrix(path, b.detach().float().numpy(), (W.shape[0],), f"{prefix}{i}.bias")
        if not np.all(np.isfinite(W)):
            _fail(path, f"'{prefix}{i}.weight' has a non-finite value")
        layers.append((W, bias))
    _check_chain(path, layers)
    for key, got in (("in_dim", layers[0][0].shape[1]), ("out_dim", layers[-1][0].shape[0])):
        want = _int_value(path, obj, key)
        if want is not None and want != got:
            _fail(path, f"size mismatch: '{key}' says {want}, the weights have {got}")
    return OfficialMLP(layers, DEFAULT_SLOPE)


# ============================================================================ camera
def read_camera(path: str | Path) -> dict:
    """``camera_params.json`` -> the ``.agm`` camera ``{position, target, up, fov_y_deg}``.

    ``rotation`` is camera-to-world with OpenCV axes (x right, y down, z forward): the view
    direction is its third column, "up" minus its second. The target is the point on the view ray
    nearest to ``centroid`` (or 1 m ahead without it); ``fov_y = 2 atan(height / (2 fy))``.
    """
    path = Path(path)
    obj = _load_json(path)
    for key in ("position", "rotation", "fy", "height"):
        if key not in obj:
            _fail(path, f"missing the key '{key}'")
    pos = _matrix(path, obj["position"], (3,), "position", np.float64)
    R = _matrix(path, obj["rotation"], (3, 3), "rotation", np.float64)
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-3 or np.linalg.det(R) < 0.5:
        _fail(path, "'rotation' is not a rotation matrix")
    fy, height = obj["fy"], obj["height"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (fy, height)):
        _fail(path, "'fy' and 'height' must be positive numbers")
    forward, up = R[:, 2], -R[:, 1]
    dist = 1.0
    if "centroid" in obj:
        centroid = _matrix(path, obj["centroid"], (3,), "centroid", np.float64)
        dist = float(np.dot(centroid - pos, forward)) if float(np.dot(centroid - pos, forward)) > 1e-3 else 1.0
    target = pos + dist * forward
    return {"position": [float(x) for x in pos], "target": [float(x) for x in target], "up": [float(x) for x in up],
            "fov_y_deg": float(math.degrees(2 * math.atan(height / (2 * fy))))}


# ============================================================================ the release as a whole
def flame_parameter_specs(expression_count: int) -> list[dict]:
    """The ``.agm`` parameters of the authors' condition: ``exp_0..exp_{E-1}``, jaw (3), eyelids (2)."""
    return [parameter_spec(f"exp_{i}", "expression", *EXPRESSION_RANGE) for i in range(expression_count)] \
        + condition_tail_specs()


@dataclass
class OfficialIdentity:
    name: str
    seed: int | None
    folder: Path
    neutral: Gaussians
    w_code: np.ndarray
    mlp: OfficialMLP
    declared_k: int | None
    camera: dict | None


@dataclass
class OfficialRelease:
    """Everything read from a release folder, before the conversion."""

    root: Path
    identities: list[OfficialIdentity]
    bases: dict[str, np.ndarray]  # float32 [K, G, d]
    basis_source: Path
    mlp: OfficialMLP  # shared weights (from mlp_regressor.pt, else the first identity's JSON)
    mlp_source: Path
    coefficient_rms: dict[str, np.ndarray] | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def gaussian_count(self) -> int:
        return self.identities[0].neutral.count

    @property
    def rank(self) -> int:
        return int(self.bases["xyz"].shape[0])


def _identity_folders(root: Path) -> list[tuple[str, int | None, Path]]:
    if (root / NEUTRAL_FILE).is_file() or (root / (NEUTRAL_FILE + ".gz")).is_file():
        return [(root.name or "identity", None, root)]
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        m = IDENTITY_DIR.match(sub.name)
        if m and ((sub / NEUTRAL_FILE).is_file() or (sub / (NEUTRAL_FILE + ".gz")).is_file()):
            found.append((f"seed {int(m.group(1))}", int(m.group(1)), sub))
    return sorted(found, key=lambda t: t[1])


def same_content(plain: Path, gz: Path) -> bool:
    """Whether ``gz`` decompresses to exactly the bytes of ``plain`` (streamed, never beyond ``plain``'s
    length + 1 byte; a corrupt ``.gz`` counts as different)."""
    size = plain.stat().st_size
    try:
        with plain.open("rb") as a, gzip.open(gz, "rb") as b:
            while True:
                chunk = a.read(1 << 20)
                if b.read(len(chunk) if chunk else 1) != chunk:
                    return False
                if not chunk:
                    return a.tell() == size
    except (OSError, EOFError, zlib.error):
        return False


def prefer_gz(plain: Path, notes: list[str] | None = None) -> Path:
    """``plain``, or ``plain.gz`` when that exists: the authors' viewer loads the ``.gz`` files, so when both
    are present and differ, the ``.gz`` is the one their avatar shows (noted in ``notes``)."""
    gz = plain.with_name(plain.name + ".gz")
    if not gz.is_file():
        return plain
    if notes is not None and plain.is_file() and not same_content(plain, gz):
        notes.append(f"{plain.name} and {gz.name} differ: used {gz.name}, as the authors' viewer does")
    return gz


def _existing(folder: Path, name: str, notes: list[str] | None = None) -> Path | None:
    for cand in (folder / name, folder / (name + ".gz")):
        if cand.is_file():
            return prefer_gz(folder / name, notes)
    return None


def basis_files(root: Path, notes: list[str] | None = None) -> dict[int, Path]:
    """``{K: path}`` of the ``pca_basis_K<K>.bin[.gz]`` files in ``root`` (the ``.gz`` preferred when both
    exist, as the authors' viewer loads it; a difference is noted in ``notes``)."""
    out: dict[int, Path] = {}
    for p in sorted(root.iterdir()):
        m = BASIS_PATTERN.match(p.name)
        if m and p.is_file() and int(m.group(1)) not in out:
            out[int(m.group(1))] = prefer_gz(root / f"pca_basis_K{m.group(1)}.bin", notes)
    return out


PREFER_CHOICES = ("pt", "web")


def _pt_sources(root: Path, svd: str | Path | None, mlp_pt: str | Path | None,
                prefer: str | None) -> tuple[Path | None, Path | None]:
    """The ``svd_basis.pt`` and ``mlp_regressor.pt`` to use (None: the web export's texture / JSON)."""
    if prefer is not None and prefer not in PREFER_CHOICES:
        raise OfficialFormatError(f"--prefer must be one of {', '.join(PREFER_CHOICES)}, got {prefer!r}")
    if prefer == "web":
        if svd is not None or mlp_pt is not None:
            raise OfficialFormatError("--prefer web uses the web export's bases and MLP: it cannot go with --svd/--mlp")
        return None, None
    svd_path = Path(svd) if svd is not None else (root / SVD_FILE if (root / SVD_FILE).is_file() else None)
    mlp_path = Path(mlp_pt) if mlp_pt is not None else (root / MLP_PT_FILE if (root / MLP_PT_FILE).is_file() else None)
    return svd_path, mlp_path


def _largest_difference(a: OfficialMLP, b: OfficialMLP) -> tuple[float, str]:
    """The largest absolute difference between two MLPs of equal shapes, and where it is."""
    worst, where = 0.0, "layer 0"
    for j, ((Wa, ba), (Wb, bb)) in enumerate(zip(a.layers, b.layers)):
        for what, x, y in (("weight", Wa, Wb), ("bias", ba, bb)):
            diff = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
            if diff > worst:
                worst, where = diff, f"layers[{j}].{what}"
    return worst, where


def check_condition_split(path: Path, in_features: int, w_len: int, w_dim: int = AUTHORS_W_DIM) -> int:
    """The condition width of a first layer taking ``w_code ++ condition``, checked exactly: ``w_code``
    must have the ``w_dim`` values of the authors' identity code. A ``w_code`` even one value short
    would make the first layer's remaining inputs a condition one value wider, shifting every parameter
    name by one (a sequence would then drive the wrong parameters): refused."""
    if w_len != w_dim:
        raise OfficialFormatError(
            f"{path}: size mismatch: 'w_code' has {w_len} values, the authors' identity code w has {w_dim}: the "
            f"first layer's {in_features} inputs would be read as a {in_features - w_len}-value condition instead "
            f"of {in_features - w_dim}, every parameter name shifted by {abs(w_dim - w_len)} (refused)")
    width = in_features - w_len
    if width < 5:
        raise OfficialFormatError(f"{path}: size mismatch: the MLP takes {in_features} inputs = w_code {w_len} + "
                                  f"{width} condition values, fewer than jaw (3) + eyelids (2)")
    return width


def _shared_mlp(identities: list[OfficialIdentity], mlp_path: Path | None,
                prefer: str | None) -> tuple[OfficialMLP, Path]:
    """The MLP the bundle uses, checked against every identity's JSON: the same shapes; the same weights
    (between identities always; between ``mlp_regressor.pt`` and the JSON unless ``--prefer`` chose)."""
    first_json = identities[0].folder / MLP_FILE
    shared, source = (read_mlp_pt(mlp_path), mlp_path) if mlp_path is not None else (identities[0].mlp, first_json)
    for ident in identities:
        jpath = ident.folder / MLP_FILE
        shapes = [W.shape for W, _ in ident.mlp.layers]
        if shapes != [W.shape for W, _ in shared.layers]:
            raise OfficialFormatError(f"{jpath}: size mismatch: its layers {shapes} differ from {source}'s")
        diff, where = _largest_difference(ident.mlp, shared)
        if mlp_path is None and diff > 0:
            raise OfficialFormatError(f"{jpath}: its MLP weights differ from {source}'s (the identities of one "
                                      "bundle share one MLP; import them separately)")
        if mlp_path is not None and prefer is None and diff > MLP_AGREEMENT * max(1.0, _largest_weight(shared)):
            raise OfficialFormatError(
                f"{mlp_path}: its MLP differs from {jpath}'s ({where} by up to {diff:.3g}): refusing to guess which "
                "one the avatar was made with; choose with --prefer pt (the .pt files) or --prefer web (the JSON)")
    return shared, source


def _largest_weight(mlp: OfficialMLP) -> float:
    return max(float(np.max(np.abs(W))) for W, _ in mlp.layers)


def read_release(root: str | Path, *, rank: int | None = None, svd: str | Path | None = None,
                 mlp_pt: str | Path | None = None, prefer: str | None = None) -> OfficialRelease:
    """Read a release folder (layout in the module docstring and ``docs/interop.md``).

    Bases come from ``svd`` / ``DIR/svd_basis.pt`` when present (float32), else from the basis
    texture with the smallest ``K >= rank`` (the largest without ``rank``); MLP weights from
    ``mlp_pt`` / ``DIR/mlp_regressor.pt`` when present, else from the identity's JSON (which must
    then agree between identities). When both the ``.pt`` MLP and the JSON MLP are there they must
    agree, unless ``prefer`` (``"pt"`` / ``"web"``) says which to use; ``"web"`` ignores the ``.pt``
    files. Of a ``.bin`` and a ``.bin.gz`` the ``.gz`` is read (the authors' viewer's choice).
    """
    root = Path(root)
    if not root.is_dir():
        raise OfficialFormatError(f"{root}: not a folder (expected the authors' web export folder)")
    folders = _identity_folders(root)
    if not folders:
        pts = [p.name for p in (root / SVD_FILE, root / MLP_PT_FILE) if p.is_file()]
        extra = (f" ({' and '.join(pts)} hold the bases and the MLP only, not the neutral avatar)" if pts else "")
        raise OfficialFormatError(f"{root}: no {NEUTRAL_FILE} in the folder or in seed_<N>/ sub-folders: the neutral "
                                  f"Gaussians are missing{extra}")
    svd_path, mlp_path = _pt_sources(root, svd, mlp_pt, prefer)
    files: list[Path] = []
    notes: list[str] = []
    identities = []
    for name, seed, folder in folders:
        npath = _existing(folder, NEUTRAL_FILE, notes)
        neutral, _ = read_neutral(npath)
        jpath = folder / MLP_FILE
        mlp, w, declared = read_mlp_json(jpath)
        cpath = folder / CAMERA_FILE
        camera = read_camera(cpath) if cpath.is_file() else None
        files += [npath, jpath] + ([cpath] if camera else [])
        if identities and neutral.count != identities[0].neutral.count:
            raise OfficialFormatError(f"{npath}: size mismatch: {neutral.count} Gaussians, the first identity "
                                      f"({identities[0].folder}) has {identities[0].neutral.count}")
        identities.append(OfficialIdentity(name, seed, folder, neutral, w, mlp, declared, camera))
    G = identities[0].neutral.count

    rms = None
    if svd_path is not None:
        bases, rms = read_svd_basis(svd_path, G)
        basis_source = svd_path
    else:
        table = basis_files(root, notes)
        if not table:
            raise OfficialFormatError(f"{root}: no bases: neither pca_basis_K<K>.bin[.gz] nor {SVD_FILE}")
        usable = sorted(k for k in table if rank is None or k >= rank)
        if not usable:
            raise OfficialFormatError(f"{root}: --rank {rank} is larger than every basis file (K = "
                                      f"{', '.join(map(str, sorted(table)))})")
        basis_source = table[usable[-1] if rank is None else usable[0]]
        bases = read_basis_texture(basis_source, G)
    if rank is not None:
        if rank > bases["xyz"].shape[0]:
            raise OfficialFormatError(f"{basis_source}: --rank {rank} is larger than the {bases['xyz'].shape[0]} "
                                      "bases it holds")
        bases = {g: np.ascontiguousarray(v[:rank]) for g, v in bases.items()}
        rms = None if rms is None else {g: v[:rank] for g, v in rms.items()}
    files.append(basis_source)

    shared, mlp_source = _shared_mlp(identities, mlp_path, prefer)
    if mlp_path is not None:
        files.append(mlp_path)
    out = shared.out_features
    if out % 4:
        raise OfficialFormatError(f"{mlp_source}: size mismatch: the MLP has {out} outputs, not 4 x K")
    k_mlp = out // 4
    for ident in identities:
        if ident.declared_k is not None and ident.declared_k != k_mlp:
            raise OfficialFormatError(f"{ident.folder / MLP_FILE}: size mismatch: 'K' is {ident.declared_k} but the "
                                      f"last layer has {out} = 4 x {k_mlp} outputs")
    if bases["xyz"].shape[0] > k_mlp:
        raise OfficialFormatError(f"{basis_source}: size mismatch: {bases['xyz'].shape[0]} bases but the MLP gives "
                                  f"only {k_mlp} coefficients per group")
    return OfficialRelease(root, identities, bases, basis_source, shared, mlp_source, rms, files, notes)


def release_to_bundle(release: OfficialRelease) -> AgmBundle:
    """The unquantised, dense ``.agm`` bundle of a release.

    Layer 0 drops its ``w`` columns into each identity's ``mlp_bias0``; the last layer keeps, per
    group, the rows of the first ``K`` coefficients (the bases may be a truncation of the MLP's).
    """
    K = release.rank
    k_mlp = release.mlp.out_features // 4
    rows = np.concatenate([np.arange(i * k_mlp, i * k_mlp + K) for i in range(4)])
    layers_np = [(W.copy(), b.copy()) for W, b in release.mlp.layers]
    W_last, b_last = layers_np[-1]
    layers_np[-1] = (np.ascontiguousarray(W_last[rows]), np.ascontiguousarray(b_last[rows]))
    W0, b0 = layers_np[0]
    identities = []
    weight0 = None
    for ident in release.identities:
        weight0, bias0 = fold_identity_into_bias(W0, b0, ident.w_code)
        identities.append(AgmIdentity(ident.name, ident.seed, ident.neutral, bias0))
    P = weight0.shape[1]
    slope = float(release.mlp.negative_slope)
    n = len(layers_np)
    mlp_layers = [AgmLayer(weight0, None, "leaky_relu" if n > 1 else "none", slope if n > 1 else 0.0)]
    for j in range(1, n):
        act = "leaky_relu" if j < n - 1 else "none"
        mlp_layers.append(AgmLayer(layers_np[j][0], layers_np[j][1], act, slope if act == "leaky_relu" else 0.0))
    bases = {g: AgmBasis(g, d, np.ascontiguousarray(release.bases[g], np.float32)) for g, d, _ in GROUPS}
    camera = release.identities[0].camera or {}
    provenance = {
        "tool": f"agora {__version__}", "source": "authors' AGORA-M release (agora-export import-official)",
        "bases_from": release.basis_source.name, "mlp_from": release.mlp_source.name,
        "mlp_rank": k_mlp, "rank": K, "w_dim": int(release.identities[0].w_code.shape[0]),
        "files": {str(p.relative_to(release.root)) if p.is_relative_to(release.root) else str(p): file_sha256(p)
                  for p in release.files},
        "colour": "baked RGB stored as SH DC (no view dependence)",
    }
    return AgmBundle(gaussian_count=release.gaussian_count, identities=identities, bases=bases,
                     mlp=AgmMLP(mlp_layers), parameters=flame_parameter_specs(P - 5), camera=camera,
                     provenance=provenance)


def coefficient_rms_from_mlp(bundle: AgmBundle, samples: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """Typical coefficient magnitudes when the release has no singular values: the RMS of the MLP's
    output (every identity) over conditions drawn uniformly from the parameters' slider ranges."""
    rng = np.random.default_rng(seed)
    lo = np.array([p["min"] for p in bundle.parameters], np.float32)
    hi = np.array([p["max"] for p in bundle.parameters], np.float32)
    acc = {g: np.zeros(bundle.bases[g].rank, np.float64) for g in GROUP_NAMES}
    count = 0
    for i in range(len(bundle.identities)):
        for _ in range(samples):
            c = bundle.coefficients(lo + (hi - lo) * rng.random(len(lo), dtype=np.float32), identity=i)
            for g in GROUP_NAMES:
                acc[g] += np.square(c[g].astype(np.float64))
            count += 1
    return {g: np.sqrt(acc[g] / max(count, 1)).astype(np.float32) for g in GROUP_NAMES}


@dataclass
class HiddenReport:
    """What the authors' viewer filters hid in an import (counts over all identities)."""

    outliers: int
    small: int
    removed: int  # hidden in every identity: not stored at all
    transparent: int  # hidden in some identities only: opacity 0 in those identities' neutral avatars


def hide_like_authors(release: OfficialRelease, *, outliers: bool = True, small: bool = True) -> HiddenReport:
    """Apply the authors' viewer's two visibility filters (:mod:`exporter.interop.authors_filters`) to the
    release in place: a Gaussian hidden in every identity is dropped (neutral avatars and bases); one
    hidden in some identities only gets opacity 0 in those identities' neutral avatars."""
    masks = [hidden_mask(i.neutral.means.numpy(), i.neutral.scales.numpy(), outliers=outliers, small=small)
             for i in release.identities]
    hidden = np.stack([m.mask for m in masks])
    keep = ~hidden.all(axis=0)
    if not keep.any():
        raise OfficialFormatError(
            f"{release.root}: the authors' viewer filters would hide every Gaussian (all are farther than "
            f"{1e3 * OUTLIER_DISTANCE_M:g} mm from their {NEIGHBOURS} nearest neighbours or among the smallest "
            "1 %): import with --no-outlier-filter / --no-scale-cull")
    index = torch.from_numpy(np.flatnonzero(keep))
    for ident, row in zip(release.identities, hidden):
        neutral = ident.neutral
        opacities = neutral.opacities.clone()
        opacities[torch.from_numpy(row)] = 0.0
        ident.neutral = Gaussians(means=neutral.means, scales=neutral.scales, quats=neutral.quats,
                                  opacities=opacities, sh=neutral.sh).select(index)
    release.bases = {g: np.ascontiguousarray(v[:, keep]) for g, v in release.bases.items()}
    return HiddenReport(int(sum(m.outliers.sum() for m in masks)), int(sum(m.small.sum() for m in masks)),
                        int((~keep).sum()), int((hidden & keep).any(axis=0).sum()))


@dataclass
class ImportReport:
    stats: WriteStats
    release: OfficialRelease
    kept: dict[str, float] | None
    rms_source: str | None
    hidden: HiddenReport | None = None


def import_official(root: str | Path, out: str | Path, *, quant: str = "int8", sparse: bool = True,
                    sparse_tolerance: float = 1.0, rank: int | None = None, svd: str | Path | None = None,
                    mlp_pt: str | Path | None = None, prefer: str | None = None, outlier_filter: bool = True,
                    scale_cull: bool = True) -> ImportReport:
    """Read a release folder and write it as an ``.agm`` (atomically), with this project's
    quantisation (``int8``/``fp16``) and visibility-tolerance sparsity
    (:func:`exporter.agm.sparsify.sparsify_bases`). ``outlier_filter`` and ``scale_cull`` (on by
    default) hide the Gaussians the authors' viewer hides (:func:`hide_like_authors`)."""
    release = read_release(root, rank=rank, svd=svd, mlp_pt=mlp_pt, prefer=prefer)
    hidden = hide_like_authors(release, outliers=outlier_filter, small=scale_cull) \
        if outlier_filter or scale_cull else None
    bundle = release_to_bundle(release)
    if hidden is not None:
        bundle.provenance["hidden_like_authors_viewer"] = {
            "outlier_filter": {"on": outlier_filter, "neighbours": NEIGHBOURS, "mean_distance_m": OUTLIER_DISTANCE_M},
            "scale_cull": {"on": scale_cull, "percentile": SMALL_PERCENTILE},
            "removed": hidden.removed, "transparent": hidden.transparent}
    if prefer is not None:
        bundle.provenance["prefer"] = prefer
    kept, rms_source = None, None
    if sparse:
        rms = release.coefficient_rms
        rms_source = f"singular values in {release.basis_source.name}" if rms is not None else \
            "MLP output over the parameters' slider ranges"
        if rms is None:
            rms = coefficient_rms_from_mlp(bundle)
        full = {g: bundle.bases[g].values for g in GROUP_NAMES}
        kept = sparsify_bases(bundle, full, rms, sparse_tolerance)
        bundle.provenance["sparse_rms_from"] = rms_source
    stats = write_agm(bundle, out, quant=quant)
    return ImportReport(stats, release, kept, rms_source, hidden)


__all__ = ["OfficialFormatError", "OfficialMLP", "OfficialRelease", "read_neutral", "read_basis_texture",
           "read_svd_basis", "read_mlp_json", "read_mlp_pt", "read_camera", "read_release", "release_to_bundle",
           "import_official", "flame_parameter_specs", "basis_files", "coefficient_rms_from_mlp", "hide_like_authors",
           "HiddenReport", "check_condition_split", "prefer_gz", "same_content", "PREFER_CHOICES"]
