"""The frozen installer a release bundle carries as ``bin/bundle-install``.

The builder runs the binary once (``--version``) to learn its version and the bundle
formats it reads, and refuses one that cannot read the bundle it would travel in.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from installer.format import FORMAT_VERSION

DEFAULT_INSTALLER = Path("dist/bundle-install")
"""Where ``scripts/freeze-installer`` leaves the binary; used when --installer is not given."""

_VERSION_LINE = re.compile(r"^bundle-install (\S+) \(bundle formats ([0-9, ]+)\)$")


@dataclass(frozen=True)
class FrozenInstaller:
    """A frozen ``bundle-install`` found on the build host."""

    path: Path
    version: str
    formats: tuple[int, ...]


def probe_installer(path: Path, timeout: float = 60.0) -> FrozenInstaller:
    """Run ``path --version`` and check that it reads this builder's bundle format.

    Raises:
        BuildError: missing, not executable, not a bundle-install, or too old.
    """
    if not path.is_file():
        raise BuildError(f"installer {path}: no such file (build it with scripts/freeze-installer)")
    if not os.access(path, os.X_OK):
        raise BuildError(f"installer {path}: not executable")
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
    formats = tuple(int(f) for f in match.group(2).replace(" ", "").split(",") if f)
    if FORMAT_VERSION not in formats:
        raise BuildError(
            f"installer {path} ({match.group(1)}) reads bundle formats {formats}, "
            f"not format {FORMAT_VERSION} that this builder writes"
        )
    return FrozenInstaller(path, match.group(1), formats)
