"""The command lines: ``agora-export`` (:mod:`exporter.cli.export`) and ``agora-train``
(:mod:`exporter.cli.train`), with their shared options (:mod:`exporter.cli.options`).

The top layer of the package: the only one that imports :mod:`webviewer` (``agora-export serve``).
"""
