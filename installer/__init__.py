"""jumpkit installer: verifies, stages and applies version-jump bundles on a target host.

This package is frozen into ``bundle-install`` and must import nothing that only a
build host has (no ``builder``, no jinja2).
"""

__version__ = "0.1.0"

READABLE_FORMATS = (1, 2, 3, 4, 5)
"""Bundle format versions this installer reads (``format`` in the manifest): 2 adds
delta entries (a file built from the old one and a patch: :mod:`installer.delta`), 3 the
installer itself as a patch against the manager's kept one (:mod:`installer.selfpatch`)."""


def version_line() -> str:
    """What ``bundle-install --version`` prints (the builder parses it)."""
    return f"bundle-install {__version__} (bundle formats {', '.join(map(str, READABLE_FORMATS))})"
