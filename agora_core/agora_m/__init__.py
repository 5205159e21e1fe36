"""AGORA-M extraction: Gaussian blendshapes (streaming SVD) and the coefficient MLP fitted to a
generator, with the fidelity report against the full AGORA path.

Builds on :mod:`agora_core.render`, :mod:`agora_core.generator`, :mod:`agora_core.heads` and
:mod:`agora_core.types`; independent of :mod:`agora_core.training`.
"""
from agora_core.agora_m.config import ExtractionConfig
from agora_core.agora_m.extract import extract_agora_m
from agora_core.agora_m.result import ExtractionResult

__all__ = ["ExtractionConfig", "ExtractionResult", "extract_agora_m"]
