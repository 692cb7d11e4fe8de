"""jumpkit builder: turns jump specs into signed, reproducible bundles (build host only)."""

from installer import __version__

__all__ = ["__version__"]
