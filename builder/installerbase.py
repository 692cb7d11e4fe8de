"""The installer a patched one is built against (``bundle-build --installer-base``).

A manager at the from-version keeps the installer that the from-version's release bundle
carried; a bundle whose installer travels as a patch against it (bundle format 3,
:mod:`installer.selfpatch`) carries a few hundred bytes when jumpkit did not change
instead of the whole ~23 MB binary. The base is named by:

- ``none``: no patch form (the default);
- ``auto``: the full release bundle ``<product>-<any>-to-<from>.zip`` in the output
  directory, else (with ``--repo``) the full release bundle to the from-version among the
  TUF repository's targets (the repository this release is published to, where the
  from-release was); none in either: no patch form, and the build says so;
- a path: that bundle ZIP, or a frozen ``bundle-install``;
- an ``http(s)://`` URL of either, downloaded once into the build cache.

A base taken from a bundle is checked against the sha256 its manifest records; its
version comes from the manifest, a bare binary's from ``--version``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from builder.frozen import cache_dir, probe_installer
from installer.codec import parse_manifest
from installer.delta import MAX_PATCHED_BYTES
from installer.errors import JumpkitError
from installer.format import INSTALLER_MEMBER, MANIFEST_NAME, MAX_MANIFEST_BYTES
from installer.signing import sha256_file
from installer.store import Store, open_store

PATCH_SUFFIX = ".installer-patch"
"""Inserted before ``.zip`` in the name of a bundle whose installer is a patch."""


@dataclass(frozen=True)
class BaseInstaller:
    """The base's bytes on the build host and what a manager's kept copy must match."""

    path: Path
    sha256: str
    size: int
    version: str
    formats: tuple[int, ...]
    """The bundle formats it reads: the patch form needs one that reads format 3."""
    source: str
    """Where it came from, for the build's summary."""


def resolve_base(
    spec: str, *, out: Path, product: str, frm: str, repo: str | None = None
) -> BaseInstaller | None:
    """``--installer-base`` made concrete (None: no patch form).

    Raises:
        BuildError: the path or URL holds no usable installer; the repository cannot be read.
    """
    if spec == "none":
        return None
    if spec == "auto":
        for candidate in sorted(out.glob(f"{product}-*-to-{frm}.zip")):
            try:
                return _from_bundle(candidate)
            except BuildError:
                continue  # a development bundle, a patch form: not a base
        return _from_repo(repo, product, frm) if repo else None
    if spec.startswith(("http://", "https://")):
        return _from_path(_download(spec), spec)
    return _from_path(Path(spec), spec)


def _from_path(path: Path, source: str) -> BaseInstaller:
    if not path.is_file():
        raise BuildError(f"--installer-base {source}: no such file")
    if zipfile.is_zipfile(path):
        return _from_bundle(path, source)
    frozen = probe_installer(path)
    sha, size = _digest(path)
    return BaseInstaller(path, sha, size, frozen.version, frozen.formats, source)


def _from_bundle(path: Path, source: str | None = None) -> BaseInstaller:
    """The whole installer a release bundle carries, unpacked into the build cache."""
    what = f"--installer-base {source or path}"
    try:
        with zipfile.ZipFile(path) as z:
            if z.getinfo(MANIFEST_NAME).file_size > MAX_MANIFEST_BYTES:
                raise BuildError(f"{what}: its manifest is larger than {MAX_MANIFEST_BYTES} bytes")
            manifest = parse_manifest(z.read(MANIFEST_NAME))
            info = manifest.installer
            if info is None:
                raise BuildError(f"{what}: a development bundle, it carries no installer")
            if info.base is not None:
                raise BuildError(f"{what}: its installer is itself a patch; name the full bundle")
            dest = cache_dir() / "installer-bases" / info.sha256
            if not dest.is_file():
                _unpack(z, dest)
    except (OSError, KeyError, zipfile.BadZipFile, JumpkitError) as e:
        why = e.message if isinstance(e, JumpkitError) else str(e)
        raise BuildError(f"{what}: not a readable release bundle: {why}") from e
    sha, size = _digest(dest)
    if sha != info.sha256:
        dest.unlink()
        raise BuildError(f"{what}: its {INSTALLER_MEMBER} does not match the sha256 its manifest records")
    return BaseInstaller(dest, sha, size, info.version, info.formats, source or str(path))


def _from_repo(repo: str, product: str, frm: str) -> BaseInstaller | None:
    """The full release bundle to ``frm`` among the targets of the TUF repository at
    ``repo`` (the first by name, as in the output directory), downloaded once into the
    build cache and checked against the length and sha256 the targets metadata records."""
    from builder.tufrepo import Keys, Repo  # tuf's metadata API: only a build that asks

    store = open_store(repo)
    targets = Repo(store, Keys(Path(), {})).current()[1].signed.targets
    for name in sorted(targets):
        t = targets[name]
        custom = t.unrecognized_fields.get("custom") or {}
        if (custom.get("product"), custom.get("to"), custom.get("format")) != (product, frm, "zip"):
            continue
        if not custom.get("installer") or custom.get("installer_base"):
            continue  # a development bundle, a patch form: not a base
        sha = t.hashes["sha256"]
        dest = cache_dir() / "installer-bases" / f"target-{sha}.zip"
        if not dest.is_file():
            _fetch(store, f"targets/{sha}.{name}", dest, t.length)
        if sha256_file(dest) != (sha, t.length):
            dest.unlink()
            raise BuildError(
                f"--installer-base auto: {repo} target {name} does not match its targets metadata"
            )
        return _from_bundle(dest, f"{repo} target {name}")
    return None


def _fetch(store: Store, path: str, dest: Path, length: int) -> None:
    try:
        if not _save(store.read(path), dest, length):
            raise BuildError(f"--installer-base auto: {path} is longer than its targets metadata says")
    except JumpkitError as e:
        raise BuildError(f"--installer-base auto: cannot download {path}: {e.message}") from e


def _save(chunks: Iterable[bytes], dest: Path, limit: int) -> bool:
    """``chunks`` into ``dest`` (replaced at once); False, and nothing written, past ``limit`` bytes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as f:
            got = 0
            for chunk in chunks:
                got += len(chunk)
                if got > limit:
                    return False
                f.write(chunk)
        os.replace(tmp, dest)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _unpack(z: zipfile.ZipFile, dest: Path) -> None:
    if z.getinfo(INSTALLER_MEMBER).file_size > MAX_PATCHED_BYTES:
        raise BuildError(f"its {INSTALLER_MEMBER} is larger than {MAX_PATCHED_BYTES} bytes")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".base-")
    with os.fdopen(fd, "wb") as f, z.open(INSTALLER_MEMBER) as src:
        while chunk := src.read(1024 * 1024):
            f.write(chunk)
    os.replace(tmp, dest)


def _download(url: str) -> Path:
    """``url`` into the build cache (named by the URL's hash), once."""
    dest = cache_dir() / "installer-bases" / ("url-" + hashlib.sha256(url.encode()).hexdigest()[:32])
    if dest.is_file():
        return dest
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            body = iter(lambda: r.read(1024 * 1024), b"")
            if not _save(body, dest, MAX_PATCHED_BYTES + MAX_MANIFEST_BYTES):
                raise BuildError(f"--installer-base {url}: larger than any bundle of an installer")
    except OSError as e:
        raise BuildError(f"--installer-base {url}: cannot download it: {e}") from e
    return dest


def _digest(path: Path) -> tuple[str, int]:
    sha, size = sha256_file(path)
    if size > MAX_PATCHED_BYTES:
        raise BuildError(f"--installer-base {path}: larger than {MAX_PATCHED_BYTES} bytes")
    return sha, size
