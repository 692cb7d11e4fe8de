"""Reading bundles. Nothing in an archive is trusted until :meth:`ZipBundle.open_verified`
has checked the signature, then the member list against the manifest; member bytes are
checked against their hashes while they are read."""

from __future__ import annotations

import hashlib
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from installer.errors import BundleRejectedError, UnsafePathError
from installer.format import (
    CHUNK,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    Manifest,
    parse_manifest,
    verify_signature,
)
from installer.paths import check_relpath

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

    def open_member(self, name: str) -> IO[bytes]:
        """A binary stream of the member's bytes."""
        ...

    def close(self) -> None:
        """Release the container."""
        ...


class ZipBundle:
    """A ZIP bundle. Rejects container-level tricks (duplicates, non-regular entries,
    unsafe names) on open, before the signature is even looked at."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        try:
            self._zip = zipfile.ZipFile(path)
            infos = self._zip.infolist()
        except FileNotFoundError as e:
            raise BundleRejectedError(f"no such bundle: {path}") from e
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise BundleRejectedError(f"not a readable ZIP bundle ({e})") from e
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
        with self.open_member(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise BundleRejectedError(f"{name} is larger than {limit} bytes")
        return data

    def member_names(self) -> list[str]:
        """See :class:`Bundle`."""
        return [n for n in self._infos if n not in META_NAMES]

    def declared_size(self, name: str) -> int:
        """See :class:`Bundle`."""
        return self._infos[name].file_size

    def open_member(self, name: str) -> IO[bytes]:
        """See :class:`Bundle`. Thread-safe: each thread reads through its own handle."""
        zf: zipfile.ZipFile | None = getattr(self._local, "zip", None)
        if zf is None:
            zf = (
                zipfile.ZipFile(self.path)
                if threading.current_thread() is not threading.main_thread()
                else self._zip
            )
            self._local.zip = zf
        try:
            return zf.open(self._infos[name])
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
            raise BundleRejectedError(f"cannot read member ({e})", entry=name) from e

    def close(self) -> None:
        """See :class:`Bundle`."""
        self._zip.close()


def open_bundle(path: Path) -> Bundle:
    """Open a bundle file by its content.

    Raises:
        BundleRejectedError: the file is not a bundle this installer reads.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise BundleRejectedError(f"cannot read bundle {path}: {e.strerror}") from e
    if head.startswith(b"PK"):
        return ZipBundle(path)
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
        with bundle.open_member(name) as f:
            while chunk := f.read(CHUNK):
                seen += len(chunk)
                if seen > size:
                    raise BundleRejectedError("member is longer than the manifest says", entry=name)
                h.update(chunk)
                yield chunk
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise BundleRejectedError(f"member is corrupt ({e})", entry=name) from e
    if seen != size:
        raise BundleRejectedError(f"member has {seen} bytes, manifest says {size}", entry=name)
    if h.hexdigest() != sha256:
        raise BundleRejectedError("sha256 does not match the manifest", entry=name)
