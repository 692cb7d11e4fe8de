"""The frozen installer a release bundle carries as ``bin/bundle-install``.

The builder runs the binary once (``--version``) to learn its version and the bundle
formats it reads, and refuses one that cannot read the bundle it would travel in. The
answer is cached by the binary's sha256 (a onefile binary unpacks itself on every run:
~0.4 s of every build otherwise); other bytes at the same path are probed afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from installer.format import FORMAT_VERSION

"""Where ``scripts/freeze-installer`` leaves the binary; used when --installer is not given."""

_VERSION_LINE = re.compile(r"^bundle-install (\S+) \(bundle formats ([0-9, ]+)\)$")


@dataclass(frozen=True)
class FrozenInstaller:
    """A frozen ``bundle-install`` found on the build host."""

    path: Path
    version: str
    formats: tuple[int, ...]


def cache_dir() -> Path:
    """``$JUMPKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/jumpkit``, else ``~/.cache/jumpkit``."""
    env = os.environ.get("JUMPKIT_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "jumpkit"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _cached(entry: Path) -> tuple[str, tuple[int, ...]] | None:
    try:
        doc = json.loads(entry.read_text())
        version, formats = doc["version"], doc["formats"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(version, str) or not all(isinstance(f, int) for f in formats):
        return None
    return version, tuple(formats)


def _remember(entry: Path, version: str, formats: tuple[int, ...]) -> None:
    """Best effort: a cache that cannot be written only costs the next build a probe."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".probe-")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": version, "formats": list(formats)}, f)
        os.replace(tmp, entry)
    except OSError:
        return


def probe_installer(path: Path, timeout: float = 60.0, cache: Path | None = None) -> FrozenInstaller:
    """Run ``path --version`` (or recall its answer for these exact bytes from ``cache``,
    default :func:`cache_dir`) and check that it reads this builder's bundle format.

    Raises:
        BuildError: missing, not executable, not a bundle-install, or too old.
    """
    if not path.is_file():
        raise BuildError(f"installer {path}: no such file (build it with scripts/freeze-installer)")
    if not os.access(path, os.X_OK):
        raise BuildError(f"installer {path}: not executable")
    entry = (cache or cache_dir()) / "installers" / f"{_sha256(path)}.json"
    known = _cached(entry)
    if known is None:
        known = _run_version(path, timeout)
        _remember(entry, *known)
    version, formats = known
    if FORMAT_VERSION not in formats:
        raise BuildError(
            f"installer {path} ({version}) reads bundle formats {formats}, "
            f"not format {FORMAT_VERSION} that this builder writes"
        )
    return FrozenInstaller(path, version, formats)


def _run_version(path: Path, timeout: float) -> tuple[str, tuple[int, ...]]:
    try:
        proc = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"installer {path}: cannot run it: {e}") from e
    line = proc.stdout.strip()
    match = _VERSION_LINE.match(line)
    if proc.returncode != 0 or match is None:
        said = (proc.stderr.strip() or line).splitlines()[-1:] or ["no output"]
        raise BuildError(f"installer {path}: '--version' failed (exit {proc.returncode}): {said[0]}")
    return match.group(1), tuple(int(f) for f in match.group(2).replace(" ", "").split(",") if f)


def choose_installer(
    path: Path | None, *, none: bool, note: Callable[[str], None] | None
) -> FrozenInstaller | None:
    """The installer to embed: ``path`` (--installer), else the one this install carries
    (a platform wheel's), else a checkout's dist/bundle-install when it exists; None with
    ``none`` or when there is none (``note`` hears why: a DEVELOPMENT bundle follows).

    Raises:
        BuildError: ``path`` is not a frozen installer this builder can embed.
    """
    from builder.resources import DEFAULT_INSTALLER, packaged_installer

    if none:
        return None
    if path is None:
        path = packaged_installer() or (DEFAULT_INSTALLER if DEFAULT_INSTALLER.is_file() else None)
        if path is None:
            if note is not None:
                note(
                    f"no frozen installer (this install carries none, and there is no {DEFAULT_INSTALLER}; "
                    "scripts/freeze-installer builds it): building a DEVELOPMENT bundle without an installer"
                )
            return None
    return probe_installer(path)
