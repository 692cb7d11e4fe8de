"""jumpkit installer: verifies, stages and applies version-jump bundles on a target host.

This package is frozen into ``bundle-install`` and must import nothing that only a
build host has (no ``builder``, no jinja2).
"""

__version__ = "0.1.0"

READABLE_FORMATS = (1,)
"""Bundle format versions this installer reads (``format`` in the manifest)."""
