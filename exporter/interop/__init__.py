"""Formats beyond ``.agm``: 3DGS PLY, the ONNX expression path (and the benchmark page's baseline
built from it), the authors' AGORA-M release, and driving sequences.

Builds on :mod:`exporter.agm` and :mod:`agora_core`.
"""
