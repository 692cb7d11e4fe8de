"""Delta entries for a bundle (format 2): for each changed file of the from-release, the
smallest patch that pays, else the whole file.

Per file, a bounded search by measured size (issue 21; on a real release pair bsdiff won on
ELF code, zstd patches on text, xdelta3 on nothing):

- ``zstd-patch`` (zstd with the old file as a raw-content dictionary, long-distance
  matching, the window over the whole file): every candidate; level 19 up to
  ``ZSTD_HIGH_MAX`` bytes, 15 above (level 19 runs at ~1-2 MB/s on large files);
- ``bsdiff``: files that look binary (a NUL byte in their first 8 KiB: ELF, shared
  libraries) of at most ``bsdiff_max`` bytes. bsdiff holds ~9x the file in memory
  (suffix array), so larger files stay on zstd: that caps the build host's memory;
- the patch is kept only if it is at most ``KEEP_RATIO`` of the file deflated whole
  (ISA-L level 2, what the ZIP writer would store), so a file a patch barely helps
  travels whole and needs no old file on the manager.

A file the jump adds may be patched against a from-version file the jump removes or
replaces whose path has the same shape once version numbers and hashes are blanked
(:func:`shape`): a release that renames ``numpy.libs/libscipy_openblas64_-ff651d7f.so``
to ``...-6bb31eeb.so`` (22 MB) or ``Django-5.0.8.dist-info/RECORD`` to
``Django-5.1.dist-info/RECORD`` ships a patch, not the file (the bench's jump: 7.8 of
10.8 MiB were such files). Only files the jump already needs exact serve as bases, so a
delta never widens what must match the from-version on the manager.

Patches are computed in worker processes (both cores) and cached on disk by (old
sha256, new sha256, method, parameters): rebuilding a jump reads them back. The chosen
patch is applied once with the installer's own code (:mod:`installer.delta`, bounds
included) before it ships. Files under
``MIN_BYTES`` travel whole (a patch's framing costs more than it saves).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from isal import isal_zlib

from installer.delta import MAX_PATCHED_BYTES, Method, apply_patch, window_log
from installer.errors import PatchError

MIN_BYTES = 512
KEEP_RATIO = 0.8
ZSTD_HIGH_MAX = 16 * 1024 * 1024
BSDIFF_MAX = 64 * 1024 * 1024
"""Default cap on a file bsdiff may take (~600 MB of build-host memory at the cap)."""
CACHE_TAG = "v1"  # bump when a method's parameters change: old cache entries then miss


_VERSIONISH = re.compile(r"[0-9a-f]*[0-9][0-9a-f]*")
_DOTTED = re.compile(r"#(?:[._]#)+")


def shape(path: str) -> str:
    """``path`` with each run of digits and hex letters that holds a digit (versions,
    build hashes) blanked to ``#``, dotted runs to one: ``Django-5.0.8.dist-info/RECORD``
    and ``Django-5.1.dist-info/RECORD`` both give ``Django-#.dist-info/RECORD``."""
    return _DOTTED.sub("#", _VERSIONISH.sub("#", path))


def find_bases(added: Mapping[str, int], olds: Mapping[str, int]) -> dict[str, str]:
    """For each added path (by size), the from-version path among ``olds`` (by size) of the
    same :func:`shape` and the nearest size, if any: the file its patch is made against."""
    by_shape: dict[str, list[tuple[str, int]]] = {}
    for path, size in sorted(olds.items()):
        by_shape.setdefault(shape(path), []).append((path, size))
    out = {}
    for path, size in added.items():
        cands = by_shape.get(shape(path))
        if cands:
            out[path] = min(cands, key=lambda c: (abs(c[1] - size), c[0]))[0]
    return out


@dataclass(frozen=True, slots=True)
class PatchJob:
    """One changed or added file: its path in the bundle, the old and the new release
    file, and for an added file the from-version path patched (``base``)."""

    path: str
    old: str
    new: str
    base: str | None = None


@dataclass(frozen=True, slots=True)
class Choice:
    """A patch that pays for ``path``: where it is (in the cache), and what it builds."""

    path: str
    method: Method
    patch: Path
    new_sha256: str
    new_size: int
    old_size: int
    old_sha256: str
    base: str | None
    """The from-version path patched, when it is not ``path``."""
    whole_deflated: int
    """The file deflated whole: what the patch saves against."""


def _is_binary(data: bytes) -> bool:
    return b"\0" in data[:8192]


def zstd_patch(old: bytes, new: bytes) -> bytes:
    """``new`` as one zstd frame against ``old`` (zstd --patch-from)."""
    import zstandard as zstd

    level = 19 if len(new) <= ZSTD_HIGH_MAX else 15
    params = zstd.ZstdCompressionParameters.from_level(
        level, window_log=window_log(len(old), len(new)), enable_ldm=True, write_content_size=True
    )
    rawdict = zstd.ZstdCompressionDict(old, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    return zstd.ZstdCompressor(dict_data=rawdict, compression_params=params).compress(new)


def bsdiff_patch(old: bytes, new: bytes) -> bytes:
    """``new`` as a BSDIFF40 patch against ``old``."""
    import bsdiff4

    return bytes(bsdiff4.diff(old, new))


def _cached(cache: Path, key: str, make: Callable[[], bytes]) -> Path:
    path = cache / key
    if not path.exists():
        data = make()
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def choose(job: PatchJob, cache: Path, bsdiff_max: int) -> Choice | None:
    """The smallest patch for ``job`` that pays, or None (the file travels whole)."""
    old = Path(job.old).read_bytes()
    new = Path(job.new).read_bytes()
    if len(new) < MIN_BYTES or len(old) < MIN_BYTES or max(len(old), len(new)) > MAX_PATCHED_BYTES:
        return None
    old_sha, new_sha = hashlib.sha256(old).hexdigest(), hashlib.sha256(new).hexdigest()
    whole = len(isal_zlib.compress(new, 2, -15))
    makers: dict[Method, Callable[[], bytes]] = {"zstd-patch": lambda: zstd_patch(old, new)}
    if _is_binary(new) and max(len(old), len(new)) <= bsdiff_max:
        makers["bsdiff"] = lambda: bsdiff_patch(old, new)
    made = []
    for method, make in makers.items():
        path = _cached(cache, f"{old_sha}-{new_sha}.{method}.{CACHE_TAG}", make)
        made.append((path.stat().st_size, method, path))
    for size, method, path in sorted(made):
        if size > KEEP_RATIO * whole:
            break
        try:  # exactly what the installer will do, bounds included: one it refuses is not shipped
            apply_patch(method, old, path.read_bytes(), len(new), new_sha)
        except PatchError:
            continue
        return Choice(job.path, method, path, new_sha, len(new), len(old), old_sha, job.base, whole)
    return None


def _choose(args: tuple[PatchJob, Path, int]) -> Choice | None:
    return choose(*args)


def choose_all(
    jobs: list[PatchJob], cache: Path, *, workers: int = 2, bsdiff_max: int = BSDIFF_MAX
) -> dict[str, Choice]:
    """A :class:`Choice` per job that has a patch worth shipping, by path; largest files
    first across ``workers`` processes (the longest patch does not start last)."""
    order = sorted(jobs, key=lambda j: -os.path.getsize(j.new))
    if workers <= 1 or len(order) < 2:
        results = [choose(j, cache, bsdiff_max) for j in order]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_choose, [(j, cache, bsdiff_max) for j in order]))
    return {c.path: c for c in results if c is not None}
