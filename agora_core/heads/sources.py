"""Choose a head model by name: ``builtin`` (ships with the package) or a path to FLAME files."""
from __future__ import annotations

from pathlib import Path

from agora_core.heads.model import HeadModel
from agora_core.types.errors import AgoraError

BUILTIN_HEAD = "builtin"  # the source name of the head model that ships with the package


def load_head_model(source: str = BUILTIN_HEAD, *, num_expression: int = 50) -> HeadModel:
    """``"builtin"`` -> the built-in MakeHuman-derived head; otherwise a FLAME model file path.

    ``num_expression`` selects how many FLAME expression components drive the model (SMIRK: 50).
    """
    if source == BUILTIN_HEAD:
        from agora_core.heads.builtin import builtin_head_model

        return builtin_head_model()
    path = Path(source)
    if not path.exists():
        raise AgoraError(f"head model '{source}' not found: pass 'builtin' or the path of a FLAME .pkl/.npz file")
    from agora_core.heads.flame import load_flame

    return HeadModel(load_flame(path, num_expression=num_expression))


def head_center(head: HeadModel) -> tuple[float, float, float]:
    """A framing target: the centre of the template's bounding box above the neck's lower third."""
    v = head.v_template
    lo, hi = v.min(0).values, v.max(0).values
    keep = v[:, 1] > lo[1] + 0.25 * (hi[1] - lo[1])
    vk = v[keep] if bool(keep.any()) else v
    c = 0.5 * (vk.min(0).values + vk.max(0).values)
    return tuple(float(x) for x in c)


def head_radius(head: HeadModel) -> float:
    """Half the diagonal of the template's bounding box (for choosing camera distances)."""
    v = head.v_template
    return float(0.5 * (v.max(0).values - v.min(0).values).norm())


__all__ = ["BUILTIN_HEAD", "head_center", "head_radius", "load_head_model"]
