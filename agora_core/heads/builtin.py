"""The built-in head model: a FLAME-like skinned head derived from MakeHuman's CC0 data.

The asset ``agora_core/data/builtin_head.npz`` is produced by ``scripts/build_builtin_head.py``
(provenance, licence and conventions in ``agora_core/data/BUILTIN_HEAD.md``). Loading needs only
numpy: no network access and no ``anny`` import.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from agora_core.heads.model import HeadModel, HeadModelData

ASSET_PATH = Path(__file__).resolve().parents[1] / "data" / "builtin_head.npz"


def _dense_basis(z: np.lib.npyio.NpzFile, name: str, num_vertices: int, num_columns: int) -> np.ndarray:
    """Rebuild a ``[V, 3, K]`` basis stored as ``{name}_index [n,2]`` (vertex, column) + ``{name}_value [n,3]``."""
    out = np.zeros((num_vertices, 3, num_columns), dtype=np.float32)
    index = z[f"{name}_index"].astype(np.int64)
    out[index[:, 0], :, index[:, 1]] = z[f"{name}_value"].astype(np.float32)
    return out


def load_builtin_head(path: str | Path | None = None) -> HeadModelData:
    """Read the built-in head asset and return validated :class:`HeadModelData` (float32 / int64)."""
    path = Path(path) if path is not None else ASSET_PATH
    if not path.is_file():
        raise FileNotFoundError(f"built-in head asset not found: run scripts/build_builtin_head.py (looked for {path})")
    with np.load(path, allow_pickle=False) as z:
        v_template = z["v_template"].astype(np.float32)
        V = len(v_template)
        expression_names = [str(n) for n in z["expression_names"]]
        shape_names = [str(n) for n in z["shape_names"]]
        J = len(z["joint_names"])
        regions = {key[len("region_") :]: z[key].astype(bool) for key in z.files if key.startswith("region_")}
        data = HeadModelData(
            name="builtin",
            v_template=v_template,
            faces=z["faces"].astype(np.int64),
            uvs=z["uvs"].astype(np.float32),
            uv_faces=z["uv_faces"].astype(np.int64),
            J_regressor=z["J_regressor"].astype(np.float32),
            lbs_weights=z["lbs_weights"].astype(np.float32),
            shapedirs=_dense_basis(z, "shapedirs", V, len(shape_names)),
            exprdirs=_dense_basis(z, "exprdirs", V, len(expression_names)),
            posedirs=np.zeros((9 * (J - 1), V * 3), dtype=np.float32),  # MakeHuman has no pose correctives
            expression_names=expression_names,
            shape_names=shape_names,
            regions=regions,
            eyelid_dirs=_dense_basis(z, "eyelid_dirs", V, 2),
            expression_ranges=z["expression_ranges"].astype(np.float32),
            joint_names=tuple(str(n) for n in z["joint_names"]),
            parents=tuple(int(p) for p in z["parents"]),
            metadata=json.loads(str(z["metadata_json"])),
        )
    return data.validate()


@lru_cache(maxsize=1)
def builtin_head_model() -> HeadModel:
    """The built-in head as a :class:`HeadModel` (loaded once per process; treat it as read-only)."""
    return HeadModel(load_builtin_head())
