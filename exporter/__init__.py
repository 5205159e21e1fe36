"""From AGORA-M to files and command lines: the ``.agm`` bundle (:mod:`exporter.agm`), other formats
(:mod:`exporter.interop`) and the CLIs (:mod:`exporter.cli`, the only package that imports
:mod:`webviewer`). Builds on :mod:`agora_core`; see ``docs/architecture.md``."""
