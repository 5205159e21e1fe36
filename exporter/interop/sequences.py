"""Driving sequences: read the common formats, match them to a bundle's parameters, smooth, write.

The viewer plays one JSON format (``docs/viewer.md``): ``{num_frames, params_dim, fps, frames,
names}`` (``names`` optional). :func:`read_sequence` reads, by content and extension:

* **viewer / authors' JSON** ``{"num_frames", "params_dim", "fps", "frames"}`` (+ ``names``);
  without ``names`` a 55-value frame is the authors' layout ``exp_0..exp_49, jaw_x, jaw_y,
  jaw_z, eyelid_l, eyelid_r``;
* **SMIRK** per-frame outputs (expression 50, jaw 3, eyelids 2): a folder of numbered frame
  folders each holding ``exp.npy``, ``jawpose.npy``, ``eyelid.npy`` (also accepted:
  ``expression_params.npy``, ``jaw_params.npy``, ``eyelid_params.npy``), or one ``.npz`` with
  those arrays stacked ``[T, ...]``;
* **VHAP / GaussianAvatars** ``flame_param.npz`` (``expr [T, 100]``, ``jaw_pose [T, 3]``, plus
  head pose, neck and eyes, which are not part of the animation condition and are dropped), or a
  folder of per-timestep ``.npz`` files;
* **ARKit-52** blendshape weights: CSV with the names as columns (Live Link Face: ``Timecode,
  BlendShapeCount``, the 52 names, then head and eye rotations, which are dropped) or JSON (a list
  of per-frame ``{name: value}`` objects, ``{"fps", "frames": [...]}`` of those, a column object
  ``{name: [values]}``, or MediaPipe-style ``[{"categoryName", "score"}]`` lists). Names match
  case-insensitively (``EyeBlinkLeft`` = ``eyeBlinkLeft``).

:func:`match_layout` compares a sequence with a bundle **by name** and refuses a mismatch (e.g. an
ARKit CSV against a FLAME-layout bundle) with a message naming both layouts and the parameters
that do not fit; FLAME expression components beyond the bundle's count are dropped (a truncated
PCA space), bundle parameters the sequence does not drive stay at their default.
:func:`savgol_smooth` is a Savitzky-Golay filter (the authors smooth their SMIRK tracks with one).
numpy files are read with ``allow_pickle=False``; every size is checked and a bad file raises
:class:`SequenceError` with one line naming it and the problem. Files are untrusted: JSON is parsed
by :func:`agora_core.types.safe_json.loads_bounded` (at most :data:`MAX_JSON_DEPTH` levels, integers
of at most 308 digits, no NaN), a CSV field over Python's 131,072-character limit or a timecode with
oversized fields is an error, never a crash.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agora_core.types.errors import AgoraError
from agora_core.types.io import atomic_write
from agora_core.types.safe_json import JsonLimitError, loads_bounded
from agora_core.types.spec import ARKIT_NAMES, CONDITION_TAIL

FLAME_TAIL = CONDITION_TAIL
AUTHORS_EXPRESSION = 50
AUTHORS_DIM = AUTHORS_EXPRESSION + len(FLAME_TAIL)  # 55
ARKIT_LOWER = {n.lower(): n for n in ARKIT_NAMES}
# columns of ARKit captures that are head/eye pose, not expression units (dropped, reported)
ARKIT_POSE_COLUMNS = {
    c.lower()
    for c in (
        "HeadYaw",
        "HeadPitch",
        "HeadRoll",
        "LeftEyeYaw",
        "LeftEyePitch",
        "LeftEyeRoll",
        "RightEyeYaw",
        "RightEyePitch",
        "RightEyeRoll",
    )
}
ARKIT_META_COLUMNS = {"timecode", "blendshapecount", "time", "timestamp", "frame", "_neutral"}
SMIRK_KEYS = {"expression": ("expression_params", "exp", "expression"),
              "jaw": ("jaw_params", "jawpose", "jaw", "jaw_pose"),
              "eyelids": ("eyelid_params", "eyelid", "eyelids")}
VHAP_DROPPED = ("translation", "rotation", "neck_pose", "eyes_pose", "shape", "static_offset", "dynamic_offset")
DEFAULT_FPS = {"smirk": 25.0, "vhap": 25.0, "arkit": 60.0}  # SMIRK: the rate the authors' exporter writes
MAX_BYTES = 512 << 20
MAX_FRAMES = 1_000_000
MAX_JSON_DEPTH = 8  # the deepest sequence layout (MediaPipe lists in {fps, frames}) nests 5 levels
EXP_NAME = re.compile(r"^exp_(\d+)$")


class SequenceError(AgoraError):
    """A driving-sequence file is malformed or does not match the bundle; the message says why."""


@dataclass
class DrivingSequence:
    """``frames [T, D]`` float64 with one ``names`` entry per column, played at ``fps``."""

    names: list[str]
    frames: np.ndarray
    fps: float
    source: str  # agora | authors | smirk | vhap | arkit
    label: str = "sequence"
    notes: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def to_json(self, description: str | None = None) -> dict:
        """The viewer's JSON (``names`` always present)."""
        out = {"description": description or f"{self.label} ({self.source}), converted by agora-export sequence",
               "source": self.source, "num_frames": self.num_frames, "params_dim": len(self.names), "fps": self.fps,
               "names": list(self.names),
               "frames": [[_round(x) for x in row] for row in self.frames.tolist()]}
        return out


def _round(x: float) -> float:
    return float(f"{x:.7g}")


def flame_names(expression_count: int = AUTHORS_EXPRESSION) -> list[str]:
    """``exp_0..exp_{E-1}, jaw_x, jaw_y, jaw_z, eyelid_l, eyelid_r`` (the authors' condition for E = 50)."""
    return [f"exp_{i}" for i in range(expression_count)] + list(FLAME_TAIL)


def describe_layout(names: Sequence[str]) -> str:
    """A short name of a parameter layout for messages: ``ARKit-52 (+ jaw, eyelids)``,
    ``FLAME (exp_0..exp_49 + ...)``."""
    names = list(names)
    s = set(names)
    extras = [
        t for t, members in (("jaw", FLAME_TAIL[:3]), ("eyelids", FLAME_TAIL[3:])) if any(m in s for m in members)
    ]
    tail = f" + {', '.join(extras)}" if extras else ""
    arkit = sum(n in ARKIT_LOWER.values() for n in names)
    exps = sorted(int(m.group(1)) for n in names if (m := EXP_NAME.match(n)))
    if arkit >= 26:
        return f"ARKit-{arkit}{tail}"
    if exps:
        rng = f"exp_{exps[0]}..exp_{exps[-1]}" if len(exps) > 1 else f"exp_{exps[0]}"
        return f"FLAME ({rng}{tail})"
    return f"{len(names)} named parameters ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


# ============================================================================ matching
@dataclass
class LayoutMatch:
    """How a sequence's columns map onto a bundle's parameters (``index[j] = -1``: dropped)."""

    index: np.ndarray
    matched: int
    dropped: list[str]
    undriven: list[str]


def match_layout(seq_names: Sequence[str], bundle_names: Sequence[str], label: str = "sequence") -> LayoutMatch:
    """Map sequence columns onto bundle parameters by name; refuse a layout mismatch.

    A column is matched when the bundle has its name; a FLAME component ``exp_i`` with ``i`` at or
    beyond the bundle's expression count is dropped (truncation of a PCA space); any other column
    the bundle lacks is a mismatch and raises :class:`SequenceError` naming both layouts.
    """
    where = {n: i for i, n in enumerate(bundle_names)}
    bundle_exp = sum(1 for n in bundle_names if EXP_NAME.match(n))
    index = np.full(len(seq_names), -1, np.int64)
    unknown, dropped = [], []
    for j, name in enumerate(seq_names):
        m = EXP_NAME.match(name)
        if name in where:
            index[j] = where[name]
        elif m and bundle_exp and int(m.group(1)) >= bundle_exp:
            dropped.append(name)
        else:
            unknown.append(name)
    if unknown:
        shown = ", ".join(unknown[:4]) + (", ..." if len(unknown) > 4 else "")
        raise SequenceError(
            f"{label}: its parameter layout, {describe_layout(seq_names)}, does not match the bundle's, "
            f"{describe_layout(bundle_names)}: {len(unknown)} of its {len(seq_names)} parameters are not in the "
            f"bundle ({shown})")
    matched = int((index >= 0).sum())
    if matched == 0:
        raise SequenceError(f"{label}: none of its {len(seq_names)} parameters is in the bundle "
                            f"({describe_layout(bundle_names)})")
    driven = set(index[index >= 0].tolist())
    undriven = [n for i, n in enumerate(bundle_names) if i not in driven]
    return LayoutMatch(index, matched, dropped, undriven)


def to_bundle_frames(
    seq: DrivingSequence, parameters: Sequence[Mapping], label: str | None = None
) -> tuple[np.ndarray, LayoutMatch]:
    """``[T, P]`` frames in the bundle's parameter order (undriven parameters at their default)."""
    names = [str(p["name"]) for p in parameters]
    match = match_layout(seq.names, names, label or seq.label)
    out = np.tile(np.array([float(p["default"]) for p in parameters], np.float64), (seq.num_frames, 1))
    cols = match.index >= 0
    out[:, match.index[cols]] = seq.frames[:, cols]
    return out, match


# ============================================================================ smoothing
def savgol_coefficients(window: int, order: int, at: int) -> np.ndarray:
    """Least-squares polynomial (degree ``order``) weights over ``window`` samples evaluated at sample ``at``."""
    x = np.arange(window, dtype=np.float64) - (window - 1) / 2
    A = np.vander(x, order + 1, increasing=True)  # [w, order+1]
    xe = np.array([(at - (window - 1) / 2) ** p for p in range(order + 1)])
    return xe @ np.linalg.pinv(A)


def savgol_smooth(frames: np.ndarray, window: int, order: int = 2) -> np.ndarray:
    """Savitzky-Golay smoothing along time (axis 0); the first and last ``window // 2`` frames come
    from the polynomial fitted to the first/last window (no padding artefacts)."""
    frames = np.asarray(frames, np.float64)
    T = frames.shape[0]
    if window < 3 or window % 2 == 0:
        raise SequenceError(f"the smoothing window must be an odd number >= 3, got {window}")
    if not 0 <= order < window:
        raise SequenceError(f"the smoothing order must be in [0, {window - 1}], got {order}")
    if T < window:
        raise SequenceError(f"the smoothing window ({window} frames) is longer than the sequence ({T} frames)")
    half = window // 2
    out = np.empty_like(frames)
    centre = savgol_coefficients(window, order, half)
    for t in range(half, T - half):
        out[t] = centre @ frames[t - half:t + half + 1]
    for t in range(half):
        out[t] = savgol_coefficients(window, order, t) @ frames[:window]
        out[T - 1 - t] = savgol_coefficients(window, order, window - 1 - t) @ frames[T - window:]
    return out


# ============================================================================ readers
def _fail(label: str, message: str):
    raise SequenceError(f"{label}: {message}")


def _array(label: str, value, what: str, ndim: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        _fail(label, f"{what} is not numeric")
    if ndim is not None and arr.ndim != ndim:
        _fail(label, f"{what} must be {ndim}-D, got shape {list(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        _fail(label, f"{what} has a non-finite value at {bad}")
    return arr


def _check_frames(label: str, frames: np.ndarray) -> None:
    if frames.shape[0] < 1:
        _fail(label, "has no frames")
    if frames.shape[0] > MAX_FRAMES:
        _fail(label, f"has {frames.shape[0]} frames, more than {MAX_FRAMES}")


def _fps(label: str, value, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0) or not math.isfinite(value):
        _fail(label, f"fps must be a positive number, got {value!r}")
    return float(value)


def _read_text(path: Path) -> str:
    if path.stat().st_size > MAX_BYTES:
        _fail(str(path), f"larger than {MAX_BYTES >> 20} MB")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        _fail(str(path), "not UTF-8 text")


def parse_json_sequence(obj, label: str, fps: float | None = None) -> DrivingSequence:
    """A parsed JSON value: the viewer/authors' format, or ARKit weights (see the module docstring)."""
    if isinstance(obj, dict) and "num_frames" in obj and "frames" in obj:
        return _viewer_json(obj, label, fps)
    return _arkit_json(obj, label, fps)


def _viewer_json(obj: dict, label: str, fps: float | None) -> DrivingSequence:
    n, dim = obj.get("num_frames"), obj.get("params_dim")
    for key, v in (("num_frames", n), ("params_dim", dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            _fail(label, f"'{key}' must be a positive integer, got {v!r}")
    frames = obj["frames"]
    if not isinstance(frames, list) or len(frames) != n:
        _fail(label, f"'frames' must be a list of num_frames = {n} frames, got "
                     f"{len(frames) if isinstance(frames, list) else type(frames).__name__}")
    for f, row in enumerate(frames):
        if not isinstance(row, list) or len(row) != dim:
            _fail(label, f"frame {f} must have params_dim = {dim} numbers, got "
                         f"{len(row) if isinstance(row, list) else type(row).__name__}")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row):
            _fail(label, f"frame {f} has a value that is not a number")
    arr = _array(label, frames, "frames", 2)
    _check_frames(label, arr)
    names = obj.get("names")
    source = obj.get("source") if isinstance(obj.get("source"), str) else "agora"
    notes = []
    if names is None:
        if dim != AUTHORS_DIM:
            _fail(label, f"has no 'names' and {dim} values per frame: only the authors' {AUTHORS_DIM}-value layout "
                         "(exp_0..exp_49, jaw_x/y/z, eyelid_l/r) is known without names")
        names, source = flame_names(), "authors"
        notes.append("no names: read as the authors' 55-value layout")
    elif (not isinstance(names, list) or len(names) != dim or not all(isinstance(s, str) for s in names)
          or len(set(names)) != len(names)):
        _fail(label, f"'names' must be a list of {dim} distinct strings")
    if fps is None and obj.get("fps") is None:
        _fail(label, "'fps' is missing")
    return DrivingSequence(list(names), arr, _fps(label, fps if fps is not None else obj.get("fps"), 0.0), source,
                           label, notes)


def _canonical_arkit(label: str, columns: Sequence[str]) -> tuple[list[int], list[str], list[str]]:
    """Indices and canonical names of the ARKit columns; the dropped pose/meta columns."""
    keep, names, dropped = [], [], []
    for j, col in enumerate(columns):
        key = str(col).strip()
        low = key.lower()
        if low in ARKIT_LOWER:
            if ARKIT_LOWER[low] in names:
                _fail(label, f"column {key!r} appears twice")
            keep.append(j)
            names.append(ARKIT_LOWER[low])
        elif low in ARKIT_POSE_COLUMNS or low in ARKIT_META_COLUMNS:
            if low in ARKIT_POSE_COLUMNS:
                dropped.append(key)
        else:
            _fail(label, f"column {key!r} is not an ARKit blendshape name (expected the 52 ARKit names, e.g. "
                         "eyeBlinkLeft, jawOpen; head/eye rotations and Timecode/BlendShapeCount are allowed)")
    if not names:
        _fail(label, "no ARKit blendshape column (expected names such as eyeBlinkLeft, jawOpen)")
    return keep, names, dropped


def _arkit_frames(label: str, rows: list, fps: float | None, default_fps: float, notes: list[str]) -> DrivingSequence:
    """Per-frame dicts name -> value (after MediaPipe normalisation) as an ARKit sequence."""
    columns: list[str] = []
    seen = set()
    for f, row in enumerate(rows):
        if not isinstance(row, dict):
            _fail(label, f"frame {f} must be an object of blendshape weights")
        for k in row:
            if k not in seen:
                seen.add(k)
                columns.append(k)
    keep, names, dropped = _canonical_arkit(label, columns)
    frames = np.zeros((len(rows), len(keep)))
    for f, row in enumerate(rows):
        for c, j in enumerate(keep):
            v = row.get(columns[j], 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                _fail(label, f"frame {f}: {columns[j]} is not a finite number")
            frames[f, c] = v
    _check_frames(label, frames)
    if dropped:
        notes.append(f"dropped head/eye rotation columns: {', '.join(dropped)}")
    return DrivingSequence(names, frames, _fps(label, fps, default_fps), "arkit", label, notes)


def _mediapipe_row(label: str, f: int, row) -> dict:
    if isinstance(row, dict) and "blendshapes" in row:
        row = row["blendshapes"]
    if isinstance(row, list):
        out = {}
        for item in row:
            if not isinstance(item, dict) or "score" not in item or not isinstance(item.get("categoryName"), str):
                _fail(label, f"frame {f}: a blendshape list needs {{categoryName, score}} entries")
            out[item["categoryName"]] = item["score"]
        return out
    return row


def _arkit_json(obj, label: str, fps: float | None) -> DrivingSequence:
    notes: list[str] = []
    file_fps = None
    if isinstance(obj, dict) and isinstance(obj.get("frames"), list):
        file_fps, rows = obj.get("fps"), obj["frames"]
    elif isinstance(obj, list):
        rows = obj
    elif isinstance(obj, dict) and obj and all(isinstance(v, list) for k, v in obj.items() if k != "fps"):
        file_fps = obj.get("fps")
        cols = {k: v for k, v in obj.items() if k != "fps"}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) != 1:
            _fail(label, f"the columns have different lengths {sorted(lengths)}")
        T = lengths.pop()
        rows = [{k: v[t] for k, v in cols.items()} for t in range(T)]
    else:
        _fail(label, "not a driving sequence: expected {num_frames, params_dim, fps, frames} or ARKit blendshape "
                     "weights (a list of per-frame objects, {fps, frames}, or {name: [values]})")
    rows = [_mediapipe_row(label, f, r) for f, r in enumerate(rows)]
    if file_fps is not None:
        _fps(label, file_fps, 0.0)
    return _arkit_frames(label, rows, fps if fps is not None else file_fps, DEFAULT_FPS["arkit"], notes)


TIMECODE_SHAPE = re.compile(r"^\d+:\d+:\d+[:;]\d+(?:\.\d+)?$")
TIMECODE = re.compile(r"^(\d{1,3}):(\d{1,2}):(\d{1,2})[:;](\d{1,3})(?:\.(\d{1,9}))?$")  # bounded: no huge ints


def timecode_fps(codes: Sequence[str]) -> float | None:
    """The frame rate implied by ``hh:mm:ss:ff[.sub]`` timecodes: the frame number reached just before
    the seconds roll over, + 1, rounded up to a common rate; None when they do not parse or never
    roll over (the rate is then unknown)."""
    parsed = []
    for c in codes:
        m = TIMECODE.match(c.strip())
        if not m:
            return None
        h, mi, sec, ff = (int(m.group(i)) for i in range(1, 5))
        parsed.append((h * 3600 + mi * 60 + sec, ff))
    tops = [a[1] for a, b in zip(parsed, parsed[1:]) if b[0] == a[0] + 1 and b[1] < a[1]]
    if not tops:
        return None
    top = max(tops)
    return float(next((rate for rate in (24, 25, 30, 50, 60, 120) if top < rate), top + 1))


def _check_timecode_fields(label: str, codes: Sequence[str]) -> None:
    """A timecode shaped ``h:m:s:f`` whose fields are longer than a timecode's (e.g. hundreds of digits) is
    an error, not a frame rate computed from huge integers."""
    for row, code in enumerate(codes, start=2):
        if TIMECODE_SHAPE.match(code.strip()) and not TIMECODE.match(code.strip()):
            _fail(label, f"row {row}, column Timecode: {code.strip()[:24]!r}... is not a timecode "
                         "(hh:mm:ss:ff[.sub]: hours and frames of up to 3 digits, minutes and seconds of 2)")


def read_arkit_csv(text: str, label: str, fps: float | None = None) -> DrivingSequence:
    """ARKit-52 CSV: a header row of names (Live Link Face layout accepted), one row per frame."""
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:  # a field over csv.field_size_limit() (131,072 characters), a NUL byte, ...
        _fail(label, f"not a readable CSV ({exc})")
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        _fail(label, "needs a header row of blendshape names and at least one frame row")
    header = [c.strip() for c in rows[0]]
    keep, names, dropped = _canonical_arkit(label, header)
    frames = np.zeros((len(rows) - 1, len(keep)))
    for f, row in enumerate(rows[1:]):
        if len(row) != len(header):
            _fail(label, f"row {f + 2} has {len(row)} values, the header has {len(header)}")
        for c, j in enumerate(keep):
            try:
                v = float(row[j])
            except ValueError:
                _fail(label, f"row {f + 2}, column {header[j]}: {row[j][:20]!r} is not a number")
            if not math.isfinite(v):
                _fail(label, f"row {f + 2}, column {header[j]}: not a finite number")
            frames[f, c] = v
    _check_frames(label, frames)
    notes = [f"dropped head/eye rotation columns: {', '.join(dropped)}"] if dropped else []
    if fps is None:
        tc = [j for j, h in enumerate(header) if h.lower() == "timecode"]
        codes = [r[tc[0]] for r in rows[1:]] if tc else []
        _check_timecode_fields(label, codes)
        fps = timecode_fps(codes) if codes else None
        if fps is not None:
            notes.append(f"fps {fps:g} from the timecodes")
    return DrivingSequence(names, frames, fps or DEFAULT_FPS["arkit"], "arkit", label, notes)


def _npz(path: Path) -> dict[str, np.ndarray]:
    label = str(path)
    if path.stat().st_size > MAX_BYTES:
        _fail(label, f"larger than {MAX_BYTES >> 20} MB")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            _fail(label, "holds an object (pickled) array, refused: only numeric arrays are read")
        _fail(label, f"not a readable .npz ({str(exc).splitlines()[0][:120]})")
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        _fail(label, f"not a readable .npz ({str(exc).splitlines()[0][:120]})")


def _pick(arrays: Mapping[str, np.ndarray], keys: Sequence[str]) -> str | None:
    return next((k for k in keys if k in arrays), None)


def _stack(label: str, arrays: Mapping[str, np.ndarray], key: str, width: int | None, what: str) -> np.ndarray:
    arr = _array(label, arrays[key], f"'{key}'")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim == 3 and arr.shape[1] == 1:  # [T, 1, D] (per-frame batches of one)
        arr = arr[:, 0]
    if arr.ndim != 2 or (width is not None and arr.shape[1] != width):
        _fail(label, f"size mismatch: '{key}' ({what}) has shape {list(arr.shape)}, expected [T, {width or 'D'}]")
    return arr


def smirk_sequence(arrays: Mapping[str, np.ndarray], label: str, fps: float | None) -> DrivingSequence:
    """SMIRK outputs as arrays ``[T, 50]`` expression, ``[T, 3]`` jaw, ``[T, 2]`` eyelids."""
    keys = {part: _pick(arrays, cands) for part, cands in SMIRK_KEYS.items()}
    missing = [f"{part} ({' / '.join(SMIRK_KEYS[part])})" for part, k in keys.items() if k is None]
    if missing:
        _fail(label, f"not SMIRK output: missing {', '.join(missing)}")
    exp = _stack(label, arrays, keys["expression"], None, "expression")
    jaw = _stack(label, arrays, keys["jaw"], 3, "jaw")
    lids = _stack(label, arrays, keys["eyelids"], 2, "eyelids")
    if not (exp.shape[0] == jaw.shape[0] == lids.shape[0]):
        _fail(label, f"size mismatch: {exp.shape[0]} expression, {jaw.shape[0]} jaw and {lids.shape[0]} eyelid frames")
    if exp.shape[1] != AUTHORS_EXPRESSION:
        _fail(label, f"size mismatch: SMIRK expressions have {AUTHORS_EXPRESSION} values, '{keys['expression']}' has "
                     f"{exp.shape[1]}")
    frames = np.concatenate([exp, jaw, lids], 1)
    _check_frames(label, frames)
    return DrivingSequence(
        flame_names(AUTHORS_EXPRESSION), frames, _fps(label, fps, DEFAULT_FPS["smirk"]), "smirk", label
    )


def vhap_sequence(arrays: Mapping[str, np.ndarray], label: str, fps: float | None) -> DrivingSequence:
    """VHAP / GaussianAvatars FLAME tracking: ``expr [T, E]`` and ``jaw_pose [T, 3]`` (no eyelids)."""
    for key in ("expr", "jaw_pose"):
        if key not in arrays:
            _fail(label, f"not a VHAP/GaussianAvatars flame_param.npz: missing '{key}'")
    exp = _stack(label, arrays, "expr", None, "expression")
    jaw = _stack(label, arrays, "jaw_pose", 3, "jaw")
    if exp.shape[0] != jaw.shape[0]:
        _fail(label, f"size mismatch: {exp.shape[0]} expression and {jaw.shape[0]} jaw frames")
    frames = np.concatenate([exp, jaw], 1)
    _check_frames(label, frames)
    names = [f"exp_{i}" for i in range(exp.shape[1])] + list(FLAME_TAIL[:3])
    dropped = [k for k in VHAP_DROPPED if k in arrays]
    notes = [f"not part of the animation condition, dropped: {', '.join(dropped)}"] if dropped else []
    notes.append("no eyelid parameters (eyelids stay at their default)")
    return DrivingSequence(names, frames, _fps(label, fps, DEFAULT_FPS["vhap"]), "vhap", label, notes)


def _frame_key(p: Path) -> tuple:
    digits = re.findall(r"\d+", p.stem if p.is_file() else p.name)
    return (int(digits[-1]) if digits else math.inf, p.name)


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        _fail(str(path), "holds an object (pickled) array, refused" if "pickle" in str(exc).lower()
              else f"not a readable .npy ({str(exc)[:100]})")
    except OSError as exc:
        _fail(str(path), f"not a readable .npy ({str(exc)[:100]})")


def _read_folder(path: Path, fps: float | None) -> DrivingSequence:
    label = str(path)
    subdirs = sorted((p for p in path.iterdir() if p.is_dir()), key=_frame_key)
    frame_dirs = [d for d in subdirs if any((d / f"{k}.npy").is_file() for k in SMIRK_KEYS["expression"])]
    if frame_dirs:  # SMIRK: one folder per frame
        parts: dict[str, list[np.ndarray]] = {k: [] for k in SMIRK_KEYS}
        for d in frame_dirs:
            for part, cands in SMIRK_KEYS.items():
                f = next((d / f"{k}.npy" for k in cands if (d / f"{k}.npy").is_file()), None)
                if f is None:
                    _fail(str(d), f"SMIRK frame folder without {' / '.join(c + '.npy' for c in cands)}")
                parts[part].append(_array(str(f), _npy(f), f.name).reshape(-1))
        arrays = {}
        for part, cands in SMIRK_KEYS.items():
            widths = {a.shape[0] for a in parts[part]}
            if len(widths) != 1:
                _fail(label, f"size mismatch: the {part} arrays of the frames have different lengths {sorted(widths)}")
            arrays[cands[0]] = np.stack(parts[part])
        return smirk_sequence(arrays, label, fps)
    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix == ".npz"), key=_frame_key)
    if files:  # VHAP: one npz per timestep
        per = [_npz(f) for f in files]
        for f, a in zip(files, per):
            if "expr" not in a or "jaw_pose" not in a:
                _fail(str(f), "not a VHAP flame_param file: missing 'expr' or 'jaw_pose'")
        arrays = {k: np.concatenate([np.asarray(a[k]).reshape(-1, np.asarray(a[k]).shape[-1]) for a in per])
                  for k in ("expr", "jaw_pose")}
        shapes = {a["expr"].shape[-1] for a in per}
        if len(shapes) != 1:
            _fail(label, f"size mismatch: the timesteps have {sorted(shapes)} expression values")
        arrays.update({k: per[0][k] for k in VHAP_DROPPED if k in per[0]})
        return vhap_sequence(arrays, label, fps)
    _fail(label, "a folder that holds neither SMIRK frame folders (exp.npy, jawpose.npy, eyelid.npy) nor VHAP "
                 "per-timestep .npz files")


def read_sequence(path: str | Path, *, fps: float | None = None) -> DrivingSequence:
    """Read a driving sequence in any supported format (see the module docstring); ``fps`` overrides."""
    path = Path(path)
    label = str(path)
    if fps is not None:
        _fps("--fps", fps, 0.0)
    if not path.exists():
        _fail(label, "file not found")
    if path.is_dir():
        return _read_folder(path, fps)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = _npz(path)
        if "expr" in arrays:
            return vhap_sequence(arrays, label, fps)
        if _pick(arrays, SMIRK_KEYS["expression"]):
            return smirk_sequence(arrays, label, fps)
        _fail(
            label,
            f"an .npz with neither VHAP 'expr'/'jaw_pose' nor SMIRK expression_params/jaw_params/eyelid_params "
            f"arrays (has: {', '.join(sorted(arrays)[:6]) or 'nothing'})",
        )
    if suffix == ".csv":
        return read_arkit_csv(_read_text(path), label, fps)
    if suffix == ".json":
        text = _read_text(path)
        try:
            obj = loads_bounded(text, MAX_JSON_DEPTH)
        except JsonLimitError as exc:  # too deep, an out-of-range integer, NaN/Infinity
            _fail(label, str(exc))
        except ValueError as exc:
            _fail(label, f"not valid JSON ({str(exc).splitlines()[0][:120]})")
        return parse_json_sequence(obj, label, fps)
    _fail(label, f"unknown sequence format {suffix or '(no extension)'}: expected .json, .csv, .npz or a folder")


def write_sequence(seq: DrivingSequence, out: str | Path, description: str | None = None) -> Path:
    """Write the viewer's JSON atomically."""
    out = Path(out)
    text = json.dumps(seq.to_json(description), separators=(",", ":"), allow_nan=False)
    with atomic_write(out) as f:
        f.write(text.encode("utf-8") + b"\n")
    return out


@dataclass
class ConversionReport:
    sequence: DrivingSequence
    match: LayoutMatch | None


def convert_sequence(src: str | Path, out: str | Path, *, parameters: Sequence[Mapping] | None = None,
                     fps: float | None = None, smooth: int = 0, smooth_order: int = 2) -> ConversionReport:
    """``agora-export sequence``: read, optionally match to a bundle's ``parameters`` (refusing a
    layout mismatch; columns then in the bundle's order, all of them), optionally smooth, write."""
    seq = read_sequence(src, fps=fps)
    match = None
    if parameters is not None:
        frames, match = to_bundle_frames(seq, parameters)
        if match.dropped:
            seq.notes.append(f"dropped {len(match.dropped)} expression components the bundle does not have "
                             f"({match.dropped[0]}..{match.dropped[-1]})")
        if match.undriven:
            seq.notes.append(f"{len(match.undriven)} bundle parameter(s) not driven, at their default "
                             f"({', '.join(match.undriven[:4])}{', ...' if len(match.undriven) > 4 else ''})")
        seq = DrivingSequence([str(p["name"]) for p in parameters], frames, seq.fps, seq.source, seq.label, seq.notes)
    if smooth:
        seq.frames = savgol_smooth(seq.frames, smooth, smooth_order)
        seq.notes.append(f"Savitzky-Golay smoothing, window {smooth}, order {smooth_order}")
    write_sequence(seq, out)
    return ConversionReport(seq, match)


__all__ = ["DrivingSequence", "SequenceError", "LayoutMatch", "read_sequence", "parse_json_sequence", "read_arkit_csv",
           "smirk_sequence", "vhap_sequence", "match_layout", "to_bundle_frames", "savgol_smooth", "write_sequence",
           "convert_sequence", "flame_names", "describe_layout", "timecode_fps"]
