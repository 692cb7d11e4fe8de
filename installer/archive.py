"""Reading bundles. Nothing in an archive is trusted until :meth:`ZipBundle.open_verified`
has checked the signature, then the member list against the manifest; member bytes are
checked against their hashes while they are read."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import os
import stat
import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from isal import isal_zlib

from installer import solid
from installer.codec import parse_manifest
from installer.errors import BundleRejectedError, UnsafePathError
from installer.format import (
    CHUNK,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    Manifest,
)
from installer.paths import check_relpath, open_regular
from installer.signing import verify_signature

DEFAULT_MAX_BUNDLE_BYTES = 64 * 1024**3
META_NAMES = (MANIFEST_NAME, SIGNATURE_NAME)


class Bundle(Protocol):
    """What the installer needs from a bundle, whatever its container."""

    path: Path

    def has_member(self, name: str) -> bool:
        """Whether the container holds ``name``."""
        ...

    def read_small(self, name: str, limit: int) -> bytes:
        """Read a whole member of at most ``limit`` bytes (manifest, signature)."""
        ...

    def member_names(self) -> list[str]:
        """Every member name besides the manifest and its signature."""
        ...

    def declared_size(self, name: str) -> int:
        """The uncompressed size the container declares for a member."""
        ...

    def iter_member(self, name: str, limit: int) -> Iterator[bytes]:
        """The member's bytes in chunks; stops with an error past ``limit`` bytes."""
        ...

    def close(self) -> None:
        """Release the container."""
        ...


class ZipBundle:
    """A ZIP bundle. Rejects container-level tricks (duplicates, non-regular entries,
    unsafe names) on open, before the signature is even looked at."""

    def __init__(self, path: Path, file: BinaryIO | None = None) -> None:
        """``file``: ``path`` opened already (:func:`open_bundle`); else it is opened here.
        Everything is read through that one descriptor: the central directory and the
        members come from the same file, even if ``path`` is replaced meanwhile."""
        self.path = path
        self._file = file if file is not None else _open(path)
        try:
            self._zip = zipfile.ZipFile(self._file)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, struct.error) as e:
            # NotImplementedError: zipfile's answer to a "version needed" it does not know
            self._file.close()
            raise BundleRejectedError(f"{path}: not a readable ZIP bundle ({e})") from e
        try:
            self._check(infos)
        except BaseException:
            self.close()
            raise
        self._fd = self._file.fileno()
        self._size = os.fstat(self._fd).st_size

    def _check(self, infos: list[zipfile.ZipInfo]) -> None:
        """Refuse container-level tricks; index the members by name."""
        self._infos: dict[str, zipfile.ZipInfo] = {}
        folded: set[str] = set()
        for info in infos:
            name = info.filename
            if info.flag_bits & 0x800 == 0 and not name.isascii():
                raise UnsafePathError("member name is not flagged UTF-8", entry=repr(name))
            if name.endswith("/"):
                raise UnsafePathError("directory entries are not allowed", entry=name)
            check_relpath(name, what="member name")
            ftype = stat.S_IFMT(info.external_attr >> 16)
            if ftype not in (0, stat.S_IFREG):
                raise UnsafePathError("member is not a regular file", entry=name)
            if (info.external_attr >> 16) & 0o7000:
                raise UnsafePathError("member carries setuid/setgid/sticky bits", entry=name)
            if name in self._infos or name.casefold() in folded:
                raise UnsafePathError("member name appears twice (or differs only in case)", entry=name)
            self._infos[name] = info
            folded.add(name.casefold())
        # each record must own its bytes: two names sharing one data record (the ZIP
        # analogue of a hard link) or overlapping records (Fifield's zip bombs) are refused
        spans = sorted(
            (
                i.header_offset,
                i.header_offset + 30 + len(i.orig_filename.encode()) + i.compress_size,
                i.filename,
            )
            for i in infos
        )
        for (_, end, name), (start, _, nxt) in itertools.pairwise(spans):
            if start < end:
                raise UnsafePathError(
                    f"member's data overlaps {name}'s (shared or overlapping records)", entry=nxt
                )

    def has_member(self, name: str) -> bool:
        """See :class:`Bundle`."""
        return name in self._infos

    def read_small(self, name: str, limit: int) -> bytes:
        """See :class:`Bundle`."""
        info = self._infos.get(name)
        if info is None:
            raise BundleRejectedError(f"bundle has no {name}")
        if info.file_size > limit:
            raise BundleRejectedError(f"{name} is larger than {limit} bytes")
        data = b"".join(self.iter_member(name, limit + 1))
        if len(data) > limit:
            raise BundleRejectedError(f"{name} is larger than {limit} bytes")
        return data

    def member_names(self) -> list[str]:
        """See :class:`Bundle`."""
        return [n for n in self._infos if n not in META_NAMES]

    def declared_size(self, name: str) -> int:
        """See :class:`Bundle`."""
        return self._infos[name].file_size

    def iter_member(self, name: str, limit: int) -> Iterator[bytes]:
        """See :class:`Bundle`. Reads the member's byte range with ``pread`` (thread-safe,
        no shared file position) and inflates with ISA-L, which releases the GIL: two
        threads unpack on two cores. Bounds, the local header and its name are checked
        against the central directory first; output past ``limit`` is refused (zip bombs).
        """
        info = self._infos[name]
        head, data_at, end = self._locate(name, info)
        start = info.header_offset + data_at
        inflate = isal_zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
        produced = 0
        raw = head[data_at : data_at + info.compress_size]
        pos = start + len(raw)
        while True:
            if not raw:
                if pos >= end:
                    break
                raw = os.pread(self._fd, min(CHUNK, end - pos), pos)
                if not raw:
                    raise BundleRejectedError("archive ended early", entry=name)
                pos += len(raw)
            if inflate is None:
                produced += len(raw)
                yield raw
                raw = b""
                continue
            try:
                while raw:
                    out = inflate.decompress(raw, CHUNK)
                    raw = inflate.unconsumed_tail
                    produced += len(out)
                    if produced > limit:
                        raise BundleRejectedError("member inflates past its declared size", entry=name)
                    if out:
                        yield out
            except isal_zlib.error as e:  # type: ignore[misc]  # isal's stub types it loosely
                raise BundleRejectedError(f"member does not inflate ({e})", entry=name) from e
        if inflate is not None and not inflate.eof:
            raise BundleRejectedError("member's deflate stream is truncated", entry=name)

    def stored_range(self, name: str) -> tuple[int, int] | None:
        """(offset, size) in the file of a stored member's bytes, its local header checked
        against the central directory; None when the member is deflated. The bundle RPM
        copies its installer out by this range."""
        info = self._infos[name]
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        _, data_at, _ = self._locate(name, info)
        return info.header_offset + data_at, info.compress_size

    def _locate(self, name: str, info: zipfile.ZipInfo) -> tuple[bytes, int, int]:
        """The member's first bytes (from its local header on), where its data starts in
        them, and where its data ends in the file, after every check of the local header
        against the central directory.

        Raises:
            BundleRejectedError: encrypted, another compression, out of range, a local
                header that is corrupt or names another member, truncated.
        """
        if info.flag_bits & 0x1:
            raise BundleRejectedError("member is encrypted", entry=name)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise BundleRejectedError(f"unsupported compression {info.compress_type}", entry=name)
        # one pread for the local header, the name and the first chunk of data (all of a
        # small member's when there is no extra field, as in our bundles): half the reads
        # of three separate ones, for 24k mostly small members
        if info.header_offset < 0 or info.compress_size < 0:  # a corrupt central directory
            raise BundleRejectedError("member offset or size is out of range", entry=name)
        name_guess = len(info.orig_filename.encode("utf-8", "replace"))
        head = os.pread(self._fd, 30 + name_guess + min(info.compress_size, CHUNK), info.header_offset)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise BundleRejectedError("local header is missing or corrupt", entry=name)
        name_len, extra_len = struct.unpack_from("<HH", head, 26)
        local_name = head[30 : 30 + name_len]
        if len(local_name) < name_len:
            local_name = os.pread(self._fd, name_len, info.header_offset + 30)
        if local_name.decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace") != info.orig_filename:
            raise BundleRejectedError("local header names another member", entry=name)
        data_at = 30 + name_len + extra_len  # from the local header
        end = info.header_offset + data_at + info.compress_size
        if end > self._size:
            raise BundleRejectedError("member runs past the end of the archive (truncated?)", entry=name)
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise BundleRejectedError("stored member's sizes disagree", entry=name)
        return head, data_at, end

    def close(self) -> None:
        """See :class:`Bundle`."""
        self._zip.close()
        self._file.close()


def _open(path: Path) -> BinaryIO:
    """The bundle file, opened (:func:`installer.paths.open_regular`).

    Raises:
        BundleRejectedError: missing, unreadable, or not a regular file.
    """
    try:
        return open_regular(path)
    except FileNotFoundError as e:
        raise BundleRejectedError(f"no such bundle: {path}") from e
    except OSError as e:
        raise BundleRejectedError(f"cannot read bundle {path}: {e.strerror}") from e


def open_bundle(path: Path) -> Bundle:
    """Open a bundle file by its content.

    Raises:
        BundleRejectedError: the file is not a bundle this installer reads.
    """
    f = _open(path)
    try:
        head = f.read(4)
        f.seek(0)
    except OSError as e:
        f.close()
        raise BundleRejectedError(f"cannot read bundle {path}: {e.strerror}") from e
    if head.startswith(b"PK"):
        return ZipBundle(path, f)
    f.close()
    if head == b"\xed\xab\xee\xdb":
        raise BundleRejectedError(
            f"{path} is a bundle RPM: install it with dnf, yum or rpm (its %posttrans applies it); "
            "'verify' checks one"
        )
    raise BundleRejectedError(f"{path} is not a ZIP bundle")


def verify_bundle(
    bundle: Bundle,
    trusted: dict[str, Ed25519PublicKey],
    *,
    allow_unsigned: bool = False,
    max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
) -> tuple[Manifest, bytes, bytes]:
    """Signature first, then the manifest, then the member list and declared sizes.

    Member contents are checked by :func:`iter_verified` as they are read.
    Returns (manifest, manifest bytes, signature bytes).

    Raises:
        BundleRejectedError: any check fails.
    """
    sig = b""
    if not allow_unsigned:
        if not bundle.has_member(SIGNATURE_NAME):
            raise BundleRejectedError("bundle is not signed (no manifest.sig)")
        sig = bundle.read_small(SIGNATURE_NAME, MAX_SIGNATURE_BYTES)
    data = bundle.read_small(MANIFEST_NAME, MAX_MANIFEST_BYTES)
    if not allow_unsigned:
        verify_signature(data, sig, trusted)
    manifest = parse_manifest(data)
    promised = manifest.members()
    present = set(bundle.member_names())
    extra = sorted(present - promised.keys())
    if extra:
        raise BundleRejectedError("member is not in the manifest", entry=extra[0])
    missing = sorted(promised.keys() - present)
    if missing:
        raise BundleRejectedError("manifest entry is missing from the archive", entry=missing[0])
    total = manifest.total_size()
    if total > max_bytes:
        raise BundleRejectedError(f"bundle unpacks to {total} bytes, above the limit {max_bytes}")
    for name, (_, size) in promised.items():
        if bundle.declared_size(name) != size:
            raise BundleRejectedError(
                f"archive declares {bundle.declared_size(name)} bytes, manifest {size}", entry=name
            )
    return manifest, data, sig


def iter_verified(bundle: Bundle, name: str, sha256: str, size: int) -> Iterator[bytes]:
    """Yield the member's bytes in chunks; raise at the end (or as soon as it overruns)
    if they do not match the manifest. Callers must discard what they wrote on error.

    Raises:
        BundleRejectedError: size or hash mismatch, or a corrupt member.
    """
    h = hashlib.sha256()
    seen = 0
    try:
        for chunk in bundle.iter_member(name, size):
            seen += len(chunk)
            if seen > size:
                raise BundleRejectedError("member is longer than the manifest says", entry=name)
            h.update(chunk)
            yield chunk
    except OSError as e:
        raise BundleRejectedError(f"member is unreadable ({e})", entry=name) from e
    if seen != size:
        raise BundleRejectedError(f"member has {seen} bytes, manifest says {size}", entry=name)
    if h.hexdigest() != sha256:
        raise BundleRejectedError("sha256 does not match the manifest", entry=name)


def extract(bundle: Bundle, manifest: Manifest, wanted: Mapping[str, Path]) -> None:
    """Write each member named in ``wanted`` to its path, verified, wherever it travels:
    alone, or carried in a solid member (each solid member read once for all it carries).

    Raises:
        BundleRejectedError: the bytes differ from the manifest.
    """
    carried = manifest.packed()

    def put(name: str, chunks: Iterable[bytes]) -> None:
        dest = wanted[name]
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as w:
            for chunk in chunks:
                w.write(chunk)

    members = manifest.members()
    for name in wanted:
        if name not in carried:
            put(name, iter_verified(bundle, name, *members[name]))
    for s in {carried[n][0].name: carried[n][0] for n in wanted if n in carried}.values():
        solid.unpack(
            iter_verified(bundle, s.name, s.sha256, s.size),
            s,
            lambda p, c: put(p.name, c) if p.name in wanted else None,
        )


def verify_members(bundle: Bundle, manifest: Manifest, tick: Callable[[int], None] | None = None) -> None:
    """Read every member of a bundle whose manifest is verified and check its size and
    sha256, and those a solid member carries (two threads, largest members first: the last
    to end is a small one).

    Raises:
        BundleRejectedError: a member differs from the manifest.
    """
    from installer.parallel import run_each

    members = manifest.members()
    solids = {s.name: s for s in manifest.solids}

    def read(name: str) -> Iterator[bytes]:
        sha, size = members[name]
        for chunk in iter_verified(bundle, name, sha, size):
            if tick is not None:
                tick(len(chunk))
            yield chunk

    def check(name: str) -> None:
        if name in solids:
            solid.unpack(read(name), solids[name], lambda _p, _c: None)
        else:
            collections.deque(read(name), maxlen=0)

    run_each(check, sorted(members, key=lambda n: -members[n][1]), threads=2)


Opened = tuple["Bundle", Manifest, bytes, bytes]
"""A bundle whose signature and manifest are verified: (bundle, manifest, its bytes, signature)."""


@contextlib.contextmanager
def opened_bundles(
    paths: Sequence[Path], trusted: dict[str, Ed25519PublicKey], allow_unsigned: bool, max_bytes: int
) -> Iterator[list[Opened]]:
    """Open and verify (signature first) each bundle, closing all of them on the way out.

    Raises:
        BundleRejectedError: a bundle fails a check (those opened before are closed).
    """
    opened: list[Opened] = []
    try:
        for path in paths:
            bundle = open_bundle(path)
            try:
                manifest, data, sig = verify_bundle(
                    bundle, trusted, allow_unsigned=allow_unsigned, max_bytes=max_bytes
                )
            except BaseException:
                bundle.close()
                raise
            opened.append((bundle, manifest, data, sig))
        yield opened
    finally:
        for o in opened:
            o[0].close()
