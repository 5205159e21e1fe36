"""The ``.agm`` bundle (``docs/agm-format.md``): in-memory model, writer, reader, inspector, building a
bundle from an AGORA-M extraction, sparse storage, and synthetic bundles for tests and benchmarks.

Builds on :mod:`agora_core`; the interop, the viewer and the CLI build on it.
"""
from exporter.agm.inspect import inspect_agm
from exporter.agm.layout import AgmFormatError
from exporter.agm.model import AgmBasis, AgmBundle, AgmIdentity, AgmLayer, AgmMLP
from exporter.agm.read import read_agm
from exporter.agm.write import WriteStats, write_agm

__all__ = ["AgmBasis", "AgmBundle", "AgmFormatError", "AgmIdentity", "AgmLayer", "AgmMLP", "WriteStats",
           "inspect_agm", "read_agm", "write_agm"]
