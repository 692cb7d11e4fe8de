"""Which mount a path is on, from /proc/self/mountinfo.

A rename cannot cross mounts: not only filesystems (EXDEV, seen by ``st_dev``) but also
two bind mounts of one filesystem (EXDEV as well, with one ``st_dev``), and a file or
directory that is itself a mount point cannot be renamed away (EBUSY). Pre-flight uses
this to refuse a jump whose swap would hit one of those once the services are stopped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mounts:
    """The mount points of this process's mount namespace."""

    points: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Mounts:
        """From mountinfo text (the fifth field of each line is the mount point)."""
        points = set()
        for line in text.splitlines():
            fields = line.split()
            if len(fields) > 4:
                points.add(_unescape(fields[4]))
        return cls(frozenset(points))

    @classmethod
    def read(cls) -> Mounts | None:
        """This namespace's mounts; None where /proc is not mounted (a bare chroot)."""
        try:
            return cls.parse(MOUNTINFO.read_text(errors="surrogateescape"))
        except OSError:
            return None

    def of(self, path: str) -> str:
        """The mount point that ``path`` (absolute, no symlink in it) is on: the deepest
        one at or above it."""
        probe = path
        while probe not in self.points:
            parent = os.path.dirname(probe)
            if parent == probe:
                return probe
            probe = parent
        return probe

    def is_point(self, path: str) -> bool:
        """Whether something is mounted at ``path`` (absolute, no symlink in it)."""
        return path in self.points
