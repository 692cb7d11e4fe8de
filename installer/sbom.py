"""What a jump changes in a manager's components, as the manifest records it, and the
installed release's SBOM kept on the manager.

The builder reads each release's components (:mod:`builder.sbom`) and writes the
to-release's CycloneDX SBOM into the bundle as the extra member ``sbom/<product>-<to>.cdx.json``
(format 5); the manifest names it and lists the jump's :class:`ComponentChange` entries, so
both are covered by the signature. A committed apply keeps the SBOM in the state dir
(:func:`install`), where ``bundle-install report`` finds it; a rollback puts the one before
back (:func:`restore`), as :mod:`installer.selfupdate` does for the installer.

Names and versions come from a signed bundle but are shown in terminals and pages: they are
limited to the characters package names and versions use, never a control character.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from installer.modelbase import _Model
from installer.paths import fsync_dir

SBOM_PREFIX = "sbom/"
SBOM_SUFFIX = ".cdx.json"
MAX_SBOM_BYTES = 64 * 1024 * 1024
MAX_CHANGES = 100_000
INSTALLED = "sbom.cdx.json"
"""The installed release's SBOM, in the product's state dir."""
PREVIOUS = "sbom.prev.cdx.json"

ComponentKind = Literal["python", "rpm", "library", "ansible-collection", "product"]
_TEXT = r"^[A-Za-z0-9_][A-Za-z0-9._+~:@!-]{0,199}$"


class ComponentChange(_Model):
    """One component the jump adds (``before`` None), removes (``after`` None) or moves to
    another version."""

    kind: ComponentKind
    name: str = Field(pattern=_TEXT)
    before: str | None = Field(default=None, pattern=_TEXT)
    after: str | None = Field(default=None, pattern=_TEXT)

    @property
    def line(self) -> str:
        """``~ django 5.1.3 -> 5.1.4``, ``+ community.general 10.2.0 (ansible-collection)``."""
        tail = "" if self.kind == "python" else f" ({self.kind})"
        if self.before is None:
            return f"+ {self.name} {self.after}{tail}"
        if self.after is None:
            return f"- {self.name} {self.before}{tail}"
        return f"~ {self.name} {self.before} -> {self.after}{tail}"


def summary(changes: tuple[ComponentChange, ...] | list[ComponentChange]) -> str:
    """``3 changed, 1 added, 1 removed`` (or ``no component changes``)."""
    added = sum(c.before is None for c in changes)
    removed = sum(c.after is None for c in changes)
    changed = len(changes) - added - removed
    parts = [f"{n} {what}" for n, what in ((changed, "changed"), (added, "added"), (removed, "removed")) if n]
    return ", ".join(parts) if parts else "no component changes"


def installed(state_dir: Path) -> Path | None:
    """The installed release's SBOM, if a committed apply left one."""
    path = state_dir / INSTALLED
    return path if path.is_file() else None


def _sha(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _place(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def install(state_dir: Path, staged: Path | None, sha256: str | None) -> bool:
    """Make ``staged`` (the bundle's SBOM member, its sha256 checked when staged) the
    installed SBOM, keeping the current one as the previous; ``staged`` None: the release
    now installed came without one, so none is installed (an SBOM of the release before
    would describe what is no longer there). Idempotent (resume after a crash): False when
    nothing changes."""
    dest, prev = state_dir / INSTALLED, state_dir / PREVIOUS
    if _sha(dest) == sha256:
        return False
    if dest.is_file():
        _place(dest, prev)
    else:  # none before this apply: a rollback removes this one
        prev.unlink(missing_ok=True)
    if staged is not None:
        _place(staged, dest)
    else:
        dest.unlink(missing_ok=True)
    fsync_dir(state_dir)
    return True


def restore(state_dir: Path, sha256: str | None) -> bool:
    """Undo :func:`install` of the SBOM ``sha256`` (None: of none; rollback of a committed
    apply): put the previous one back, or remove it when there was none. False when
    ``sha256`` is not what is installed."""
    dest, prev = state_dir / INSTALLED, state_dir / PREVIOUS
    if _sha(dest) != sha256:
        return False
    if prev.is_file():
        os.replace(prev, dest)
    else:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
    fsync_dir(state_dir)
    return True
