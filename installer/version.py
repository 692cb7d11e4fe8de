"""Product version parsing: MAJOR.MINOR.PATCH with an optional pre-release tag."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from installer.errors import VersionError

_VERSION_RE = re.compile(r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})(?:-([0-9A-Za-z.-]{1,64}))?$")


@total_ordering
@dataclass(frozen=True)
class Version:
    """A parsed product version; orders as semver (a pre-release sorts before its release)."""

    major: int
    minor: int
    patch: int
    pre: str | None = None

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``text``.

        Raises:
            VersionError: ``text`` is not ``MAJOR.MINOR.PATCH[-PRE]``.
        """
        if not isinstance(text, str):
            raise VersionError(f"version must be a string, not {type(text).__name__}")
        m = _VERSION_RE.match(text.strip())
        if m is None:
            raise VersionError(f"not a version (want MAJOR.MINOR.PATCH): {text[:40]!r}")
        return cls(int(m[1]), int(m[2]), int(m[3]), m[4])

    def _key(self) -> tuple[int, int, int, int, str]:
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, self.pre or "")

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}.{self.patch}"
        return f"{base}-{self.pre}" if self.pre else base
