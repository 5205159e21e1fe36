"""The WebGL2 viewer (``static/``) and its Flask server: the viewer page, the bundles, and the ``/bench``
page with its ONNX baseline. Uses :mod:`exporter.agm` and :mod:`exporter.interop.baseline`, never the
CLI (which starts it); see ``docs/viewer.md`` and ``docs/architecture.md``."""
