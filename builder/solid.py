"""Small members packed end to end into solid members (bundle format 4; read by
``installer/solid.py``).

A ZIP entry costs a local header and a central-directory record (~76 bytes plus twice its
path) and is deflated alone, so on a release of thousands of small files a bundle is
largely container: the issue that asked for this measured ~1.6 MB of a 10.3 MB bundle. A
solid member is one zstd frame of many members, so the headers go and each file is
compressed with its neighbours as context.

- Which: payload files, patches and config bases of at most :data:`SMALL` bytes (hooks,
  migrations and the installer travel alone: other readers take them by name).
- Order: by extension, then path, so that similar files sit together (``.py`` with
  ``.py``, a package's modules side by side) within zstd's window.
- Cuts: a solid closes past :data:`SOLID_RAW` bytes, so that a large release unpacks on
  several threads and no reader ever needs a large stream.
- Reproducible: fixed order, fixed zstd parameters (:data:`LEVEL`, one thread per frame,
  content size written, no checksum: every member's sha256 is in the signed manifest).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from builder.zipwriter import Source
from installer.format import PACKABLE_PREFIXES, SOLID_PREFIX, Packed, Solid

SMALL = 64 * 1024
"""A member of at most this many bytes travels in a solid member."""
SOLID_RAW = 8 * 1024 * 1024
"""A solid member closes once it holds this many bytes."""
LEVEL = 19


@dataclass
class Packing:
    """What :func:`pack` made of a bundle's members."""

    alone: list[Source] = field(default_factory=list)
    """Members that travel as archive members of their own."""
    solids: list[tuple[Solid, bytes]] = field(default_factory=list)
    """Each solid member and its compressed bytes (written stored)."""

    @property
    def sources(self) -> list[Source]:
        """Every archive member to write: the solids, then the members alone."""
        return [Source(s.name, 0o644, data=data, store=True) for s, data in self.solids] + self.alone

    def digests(self) -> dict[str, tuple[str, int]]:
        """(sha256, size) of every carried member, as the archive writer gives the others'."""
        return {p.name: (p.sha256, p.size) for s, _ in self.solids for p in s.members}


def _size(s: Source) -> int:
    if s.data is not None:
        return len(s.data)
    return s.size if s.size is not None else os.stat(s.path or "").st_size


def _bytes(s: Source) -> bytes:
    if s.data is not None:
        return s.data
    with open(s.path or "", "rb") as f:
        return f.read()


def _order(s: Source) -> tuple[str, str]:
    return PurePosixPath(s.name).suffix.lower(), s.name


def pack(sources: Iterable[Source], workers: int = 2) -> Packing:
    """Split ``sources`` into members alone and solid members holding the small ones."""
    out = Packing()
    small: list[Source] = []
    for s in sources:
        (small if s.name.startswith(PACKABLE_PREFIXES) and _size(s) <= SMALL else out.alone).append(s)
    groups: list[list[Source]] = []
    filled = SOLID_RAW
    for s in sorted(small, key=_order):
        if filled >= SOLID_RAW:
            groups.append([])
            filled = 0
        groups[-1].append(s)
        filled += _size(s)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        out.solids = list(pool.map(_solid, range(len(groups)), groups))
    return out


def _solid(index: int, group: list[Source]) -> tuple[Solid, bytes]:
    import zstandard

    members, raw, at = [], [], 0
    for s in group:
        data = _bytes(s)
        members.append(
            Packed(name=s.name, offset=at, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        )
        raw.append(data)
        at += len(data)
    cctx = zstandard.ZstdCompressor(level=LEVEL, threads=0, write_checksum=False, write_content_size=True)
    data = cctx.compress(b"".join(raw))
    solid = Solid(
        name=f"{SOLID_PREFIX}{index:03d}",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        raw_size=at,
        members=tuple(members),
    )
    return solid, data
