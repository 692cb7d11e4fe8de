"""Unpacking a verified bundle into the staging area, hashing every byte on the way.

The staging area is ``<state>/staging/<bundle-id>/``, built as ``<bundle-id>.partial``
and renamed into place once complete, so a crash never leaves a half staging that looks
whole. Layout::

    manifest.json, manifest.sig   as verified
    files/<path>     files to swap into the root (configs go here once planned)
    defaults/<path>  the bundle's config files, as shipped
    bundle/<name>    hooks/, migrations/, bin/
    patches/<path>   delta patches while their files are built (format 2; then removed)

A delta entry's file is built here from the manager's old file, read beneath the root
(or from an earlier jump's staging in a chain) and checked against the manifest's old
sha256, before anything stops (:mod:`installer.delta`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from installer.archive import Bundle, iter_verified
from installer.delta import apply_patch
from installer.errors import BundleRejectedError, PreconditionError, SpaceError, UsageError
from installer.failpoints import failpoint
from installer.format import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest, parse_manifest
from installer.parallel import run_each
from installer.paths import read_beneath
from installer.state import StateDir, write_atomic

COMPLETE_MARK = ".complete"
Progress = Callable[[int], None]


def staged_path(state: StateDir, manifest: Manifest) -> Path:
    """Where ``manifest``'s bundle is (or will be) staged."""
    return state.staging_dir(manifest.bundle_id)


def is_staged(state: StateDir, manifest_data: bytes, bundle_id: str) -> bool:
    """True when the same manifest was staged completely before."""
    d = state.staging_dir(bundle_id)
    try:
        return (d / COMPLETE_MARK).exists() and (d / MANIFEST_NAME).read_bytes() == manifest_data
    except OSError:
        return False


def load_staged(state: StateDir, bundle_id: str) -> tuple[Manifest, bytes]:
    """Read back a complete staging's manifest (it was verified when staged).

    Raises:
        BundleRejectedError: the staging is incomplete or its manifest is unreadable.
    """
    d = state.staging_dir(bundle_id)
    if not (d / COMPLETE_MARK).exists():
        raise BundleRejectedError(f"{d} is not a complete staging")
    data = (d / MANIFEST_NAME).read_bytes()
    return parse_manifest(data), data


def only_staged(state: StateDir) -> tuple[Manifest, bytes, bytes]:
    """The one complete staging (manifest, its bytes, its signature file).

    Raises:
        UsageError: none, or several: the operator names the bundle.
    """
    complete = [d for d in sorted(state.staging.glob("*")) if (d / COMPLETE_MARK).exists()]
    if len(complete) != 1:
        raise UsageError(f"{len(complete)} staged bundles in {state.staging}; name the bundle")
    manifest, data = load_staged(state, complete[0].name)
    return manifest, data, (complete[0] / SIGNATURE_NAME).read_bytes()


def _destinations(root: Path, manifest: Manifest) -> dict[str, tuple[str, int]]:
    # strings, not Paths: 24k Path joins took 0.1 s (the paths were checked when parsed)
    join = os.path.join
    files, defaults, extras = (join(root, d) for d in ("files", "defaults", "bundle"))
    out: dict[str, tuple[str, int]] = {}
    patches = join(root, "patches")
    for f in manifest.files:
        if f.delta is not None:
            out[f.member] = (join(patches, f.path), 0o600)
        elif f.kind != "symlink":
            out[f.member] = (join(defaults if f.kind == "config" else files, f.path), f.mode)
    for m in manifest.extras:
        out[m.name] = (join(extras, m.name), m.mode)
    return out


OldFiles = Mapping[str, Path | None]
"""What earlier jumps of a chain leave at a path: their staged file, or None (removed)."""


def old_bytes(root: Path, manifest: Manifest, entry: FileEntry, earlier: OldFiles) -> bytes:
    """The from-version bytes a delta entry patches: from an earlier jump's staging, else
    read beneath the root (bounded by the manifest's old size), checked by sha256.

    Raises:
        PreconditionError: missing or different (exit 4: use a full bundle).
        RootLinkError: a symlink on its way leads out of the root.
    """
    assert entry.delta is not None
    if entry.path in earlier:
        src = earlier[entry.path]
        data = src.read_bytes() if src is not None else None
    else:
        data = read_beneath(root, entry.path, entry.delta.from_size)
    if data is None or hashlib.sha256(data).hexdigest() != entry.from_sha256:
        how = "missing" if data is None else "modified"
        raise PreconditionError(
            f"{entry.path}: {how} (differs from {manifest.from_version}); a delta needs the exact "
            "old file: use a full bundle (bundle-build --delta none)"
        )
    return data


def _build_patched(partial: Path, manifest: Manifest, old: Callable[[FileEntry], bytes]) -> None:
    """Each delta entry's file, built from its old file and patch (one in memory at a time)."""
    for f in manifest.deltas():
        assert f.delta is not None and f.sha256 is not None
        patch = partial / "patches" / f.path
        new = apply_patch(f.delta.method, old(f), patch.read_bytes(), f.size, f.sha256)
        dest = partial / "files" / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, f.mode)
        try:
            os.fchmod(fd, f.mode)
            view = memoryview(new)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        del new
        patch.unlink()
        failpoint("stage:patch")
    shutil.rmtree(partial / "patches", ignore_errors=True)


def stage_bundle(
    bundle: Bundle,
    manifest: Manifest,
    manifest_data: bytes,
    sig: bytes,
    state: StateDir,
    *,
    progress: Progress | None = None,
    workers: int = 2,
    root: Path | None = None,
    earlier: OldFiles | None = None,
) -> Path:
    """Unpack every member (verifying its hash) into the staging area, then build each
    delta entry's file from its old one (read beneath ``root``, or ``earlier``'s).

    Returns the staging directory. Idempotent: an identical complete staging is reused.

    Raises:
        BundleRejectedError: a member does not match the manifest, or a patch does not
            build the promised file (staging removed).
        PreconditionError: a delta's old file differs from the from-version (staging removed).
        SpaceError: the disk filled up (staging removed).
    """
    if manifest.deltas() and root is None:
        raise UsageError("a delta bundle is staged against a manager's root")
    state.ensure()
    final = staged_path(state, manifest)
    if is_staged(state, manifest_data, manifest.bundle_id):
        return final
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    partial.mkdir(parents=True, mode=0o700)
    promised = manifest.members()
    targets = _destinations(partial, manifest)
    umask = os.umask(0o022)
    os.umask(umask)

    def extract(name: str) -> None:
        dest, mode = targets[name]
        sha, size = promised[name]
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            if mode & umask:
                os.fchmod(fd, mode)
            for chunk in iter_verified(bundle, name, sha, size):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                if progress is not None:
                    progress(len(chunk))
        finally:
            os.close(fd)
        failpoint("stage:member")

    try:
        for d in sorted({os.path.dirname(p) for p, _ in targets.values()}):
            os.makedirs(d, exist_ok=True)
        # archive order: neighbours in a directory are created together, as unzip does
        run_each(extract, list(promised), threads=workers)
        if root is not None:
            _build_patched(partial, manifest, lambda f: old_bytes(root, manifest, f, earlier or {}))
        for f in manifest.files:
            if f.kind == "symlink":
                link = partial / "files" / f.path
                link.parent.mkdir(parents=True, exist_ok=True)
                assert f.link_target is not None
                os.symlink(f.link_target, link)
        (partial / MANIFEST_NAME).write_bytes(manifest_data)
        (partial / SIGNATURE_NAME).write_bytes(sig)
        os.sync()  # one flush for every file: cheaper than an fsync per file
        write_atomic(partial / COMPLETE_MARK, b"ok\n")
        os.replace(partial, final)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SpaceError(f"disk full while staging into {state.staging}; staging removed") from e
        raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final
