"""jumpkit builder: turns jump specs into signed, reproducible bundles (build host only)."""

from installer import __version__

__all__ = ["INSTALLER_MODULES", "__version__"]

INSTALLER_MODULES = frozenset(
    {
        # the bundle contract: what a bundle is, and how it is read, signed and verified
        "installer.format", "installer.codec", "installer.signing", "installer.rules",
        "installer.archive", "installer.delta", "installer.paths",
        "installer.version", "installer.errors", "installer.graph",
        # what the installer will do with a bundle, which the builder checks ahead
        "installer.attrs", "installer.swapplan", "installer.preflight", "installer.health",
        "installer.services", "installer.migrate", "installer.rpmbundle", "installer.runspec",
        "installer.selfupdate",  # where a manager keeps its installer (the patch RPM's %pre)
        "installer.sbom",  # the component changes a manifest records
        # shared plumbing: one error rendering for both CLIs, one repository client
        "installer.entry", "installer.store",
    }
)  # fmt: skip
"""The installer modules the builder may import (tests/test_errors.py checks it): the
builder reuses the installer's own reading of a bundle rather than a second one, and
nothing of how an apply runs."""
