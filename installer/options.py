"""What the operator chose on ``bundle-install``'s command line, as the engine reads it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from installer.archive import DEFAULT_MAX_BUNDLE_BYTES


@dataclass
class Options:
    """What the operator chose on the command line."""

    root: Path
    state_dir: Path | None = None
    trust: list[Path] = field(default_factory=list)
    allow_unsigned: bool = False
    accept_drift: bool = False
    force: bool = False
    max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES
    selinux: bool = True
    """Label placed files from the root's SELinux policy (``--no-selinux``: do not)."""
    detach_components: bool = False
    """Install component RPMs from a detached process that waits for rpm's lock (%posttrans)."""
    detach_jobs: bool = True
    """Run post-upgrade jobs from a detached ``bundle-install jobs`` (False: before apply returns)."""
    record_refusal: str | None = None
    """Record a refusal (exit 3 or 4) in status.json with this next step, for a caller
    whose output nobody may read (the bundle RPM's %posttrans: rpm and dnf exit 0)."""
