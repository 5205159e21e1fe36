"""Build-time helpers of ``setup.py`` (not part of the installed package)."""
