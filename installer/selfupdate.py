"""The installer replaces itself: a committed release bundle leaves its frozen installer
on the manager, and later runs of an older installer hand over to it.

``<root>/var/lib/jumpkit/bin/bundle-install`` is the manager's installer; next to it
``bundle-install.json`` says which version and sha256 it is, ``bundle-install.d`` is a
link to its tree kept unpacked in ``.trees/`` so that it starts without unpacking
(:mod:`installer.resident`), and ``bundle-install.prev`` (+ ``.prev.json``, ``.prev.d``) is the one
it replaced, put back by a rollback of that apply.

Why hand over: a journal written by a newer installer may hold steps an older one does not
know, and the newer one carries the fixes. Only the frozen binary hands over (a Python
checkout runs what it is), once (``JUMPKIT_NO_REEXEC`` stops a loop), and only to a
strictly newer version.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from installer import __version__, resident
from installer.errors import VersionError
from installer.paths import fsync_dir
from installer.version import Version

if TYPE_CHECKING:  # hand_over() runs before every command: keep pydantic out of its imports
    from installer.format import InstallerInfo

INSTALLED = "var/lib/jumpkit/bin/bundle-install"
NO_REEXEC = "JUMPKIT_NO_REEXEC"


def installed_path(root: Path) -> Path:
    """Where the manager's own installer lives."""
    return root / INSTALLED


def _meta(path: Path) -> dict[str, str] | None:
    try:
        doc = json.loads(path.with_name(path.name + ".json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def installed_info(root: Path) -> dict[str, str] | None:
    """Version and sha256 of the installed installer, if there is one."""
    path = installed_path(root)
    return _meta(path) if path.is_file() else None


def _place(src: Path, dest: Path, meta: dict[str, str]) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o755)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    side = dest.with_name(dest.name + ".json")
    side_tmp = side.with_name(f".{side.name}.tmp")
    side_tmp.write_text(json.dumps(meta, sort_keys=True) + "\n")
    os.replace(tmp, dest)  # the binary first: a crash between leaves a stale sidecar, which
    os.replace(side_tmp, side)  # the next install overwrites; never a sidecar without its binary


def install(root: Path, staged: Path, info: InstallerInfo) -> bool:
    """Make ``staged`` (the bundle's bin/bundle-install) the manager's installer, keeping
    the current one as ``.prev``. Idempotent (resume after a crash): False when it already is.
    """
    dest = installed_path(root)
    current = installed_info(root)
    if current is not None and current.get("sha256") == info.sha256:
        resident.keep(dest)  # a crash may have come between the binary and its tree
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and current is not None:
        prev = dest.with_name(dest.name + ".prev")
        shutil.copyfile(dest, prev)
        os.chmod(prev, 0o755)
        prev.with_name(prev.name + ".json").write_text(json.dumps(current, sort_keys=True) + "\n")
        resident.move(dest, prev)
    _place(staged, dest, {"version": info.version, "sha256": info.sha256})
    fsync_dir(dest.parent)
    resident.keep(dest)
    return True


def restore(root: Path, info: InstallerInfo) -> bool:
    """Undo :func:`install` of ``info`` (rollback of a committed apply): put ``.prev`` back,
    or remove the installer when there was none before. False when ``info`` is not installed.
    """
    dest = installed_path(root)
    current = installed_info(root)
    if current is None or current.get("sha256") != info.sha256:
        return False
    prev = dest.with_name(dest.name + ".prev")
    prev_meta = _meta(prev) if prev.is_file() else None
    if prev_meta is not None:
        _place(prev, dest, prev_meta)
        resident.move(prev, dest)
        resident.discard(prev)
        prev.unlink()
        prev.with_name(prev.name + ".json").unlink(missing_ok=True)
    else:
        resident.discard(dest)
        dest.unlink()
        dest.with_name(dest.name + ".json").unlink(missing_ok=True)
    fsync_dir(dest.parent)
    return True


def fresh_env() -> dict[str, str]:
    """Environment for starting another frozen installer from this one: without it, the new
    PyInstaller bootloader takes the inherited _PYI_* variables for its own and runs from
    this process's unpack dir, which is deleted when this process ends (it died silently)."""
    return {**os.environ, NO_REEXEC: "1", "PYINSTALLER_RESET_ENVIRONMENT": "1"}


def _root_from_argv(argv: list[str]) -> Path:
    for i, arg in enumerate(argv):
        if arg == "--root" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--root="):
            return Path(arg.partition("=")[2])
    return Path("/")


def newer_installed(argv: list[str]) -> Path | None:
    """The installed installer when it is strictly newer than this one, else None."""
    root = _root_from_argv(argv)
    info = installed_info(root)
    if info is None:
        return None
    try:
        if Version.parse(str(info.get("version"))) <= Version.parse(__version__):
            return None
    except VersionError:
        return None
    path = installed_path(root)
    return path if os.access(path, os.X_OK) else None


def hand_over(argv: list[str]) -> None:
    """In the frozen binary: exec the manager's newer installer with the same arguments.
    Returns (and this installer runs) when there is none, or when handing over fails."""
    if not getattr(sys, "frozen", False) or os.environ.get(NO_REEXEC):
        return
    target = newer_installed(argv)
    if target is None:
        return
    version = (installed_info(_root_from_argv(argv)) or {}).get("version")
    print(
        f"bundle-install {__version__}: handing over to the manager's newer installer {version} ({target})",
        file=sys.stderr,
    )
    with contextlib.suppress(OSError):
        os.execve(target, [str(target), *argv[1:]], fresh_env())
    print(f"bundle-install: could not run {target}; continuing with {__version__}", file=sys.stderr)
