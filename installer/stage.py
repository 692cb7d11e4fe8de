"""Unpacking a verified bundle into the staging area, hashing every byte on the way.

The staging area is ``<state>/staging/<bundle-id>/``, built as ``<bundle-id>.partial``
and renamed into place once complete, so a crash never leaves a half staging that looks
whole. Layout::

    manifest.json, manifest.sig   as verified
    files/<path>     files to swap into the root (configs go here once planned)
    defaults/<path>  the bundle's config files, as shipped
    bundle/<name>    hooks/, migrations/, bin/ (a patched installer built there:
                     :mod:`installer.selfpatch`)
    base/<path>      a rewrite config's from-version default (format 2; the merge base)

A delta entry's file (format 2) is built into ``files/`` from its patch member, read
verified into memory, and the manager's old file, read beneath the root (or from an
earlier jump's staging in a chain) and checked against the manifest's old sha256,
before anything stops (:mod:`installer.delta`). Patches are built on the same threads
as members unpack, largest first, and never more at once than the largest one's memory
(:class:`~installer.parallel.Budget`): on the delta bench (1,065 patched files, 137
unpacked) writing each patch to disk and building the files after the unpack took
0.92 s of a 1.3 s stage; most of it creating, reading and removing 1,065 patch files.

Solid members (format 4, :mod:`installer.solid`) unpack on the same threads, one job each:
what they carry goes straight to its place above, and a patch they carry (the builder
carries patches of at most 64 KiB) builds its file in that job as soon as its bytes are
verified; none is written to disk (1,065 patch files written and read back took 0.92 s of
a 1.3 s stage, above).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from installer import selfpatch, solid
from installer.archive import Bundle, iter_verified
from installer.codec import parse_manifest
from installer.delta import apply_patch
from installer.errors import BundleRejectedError, PreconditionError, SpaceError, UsageError
from installer.failpoints import failpoint
from installer.format import BASE_PREFIX, MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest, Packed, Solid
from installer.parallel import Budget, run_each
from installer.paths import read_beneath
from installer.state import StateDir, write_atomic

COMPLETE_MARK = ".complete"
Progress = Callable[[int], None]


def patched_installer(manifest: Manifest) -> bool:
    """The bundle's installer is built on the manager from a patch (format 3)."""
    return manifest.installer is not None and manifest.installer.base is not None


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
    """Where each member unpacks whole (a delta entry's patch member is read, not unpacked)."""
    # strings, not Paths: 24k Path joins took 0.1 s (the paths were checked when parsed)
    join = os.path.join
    files, defaults, extras = (join(root, d) for d in ("files", "defaults", "bundle"))
    out: dict[str, tuple[str, int]] = {}
    for f in manifest.files:
        if f.kind != "symlink" and f.delta is None:
            out[f.member] = (join(defaults if f.kind == "config" else files, f.path), f.mode)
        if f.base is not None:
            out[BASE_PREFIX + f.path] = (join(root, "base", f.path), 0o600)
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
    path, sha = entry.old_file
    if path in earlier:
        src = earlier[path]
        data = src.read_bytes() if src is not None else None
    else:
        data = read_beneath(root, path, entry.delta.from_size)
    if data is None or hashlib.sha256(data).hexdigest() != sha:
        how = "missing" if data is None else "modified"
        of = "" if path == entry.path else f", the base of {entry.path}"
        raise PreconditionError(
            f"{path}: {how} (differs from {manifest.from_version}{of}); a delta needs the exact "
            "old file: use a full bundle (bundle-build --delta none)"
        )
    return data


def patch_memory(entry: FileEntry) -> int:
    """Bytes building a delta entry's file holds at most: the old file, the patch, the new
    file, and bsdiff's decompressed diff block (up to the new file's size)."""
    assert entry.delta is not None
    return entry.delta.from_size + entry.delta.size + 2 * entry.size


def _write_new(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _says_to_version(manifest: Manifest, files_dir: str) -> None:
    """The staged version file (its bytes matched the signed sha256) says the jump's
    to-version: the signature proves who built the bundle, not that its release tree was
    right. Pre-flight of the next jump reads this file.

    Raises:
        BundleRejectedError: it says something else.
    """
    with open(os.path.join(files_dir, manifest.version_file), "rb") as f:
        said = f.read(4097).strip()
    if said != manifest.to_version.encode():
        shown = said[:40].decode(errors="replace")
        raise BundleRejectedError(
            f"its version file {manifest.version_file} says {shown!r}, not {manifest.to_version}: "
            "the manager would report the wrong version after the jump"
        )


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
    if (manifest.deltas() or patched_installer(manifest)) and root is None:
        raise UsageError("a delta bundle is staged against a manager's root")
    state.ensure()
    final = staged_path(state, manifest)
    if is_staged(state, manifest_data, manifest.bundle_id):
        return final
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    partial.mkdir(parents=True, mode=0o700)
    try:
        stager = _Stager(bundle, manifest, partial, progress, root, earlier)
        stager.run(workers)
        _says_to_version(manifest, stager.files_dir)
        _complete(partial, manifest, manifest_data, sig)
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


class _Stager:
    """One staging: members extracted and patched files built, on worker threads."""

    def __init__(
        self,
        bundle: Bundle,
        manifest: Manifest,
        partial: Path,
        progress: Progress | None,
        root: Path | None,
        earlier: OldFiles | None,
    ) -> None:
        self.bundle, self.manifest, self.progress = bundle, manifest, progress
        self.root, self.earlier, self.partial = root, earlier or {}, partial
        self.promised = manifest.members()
        self.targets = _destinations(partial, manifest)
        self.deltas = sorted(manifest.deltas(), key=lambda f: (-f.size, f.path)) if root is not None else []
        # a patch carried in a solid member is applied by the solid's job as its bytes end
        carried = manifest.packed()
        self.carried = {f.member: f for f in self.deltas if f.member in carried}
        self.budget = Budget(max((patch_memory(f) for f in self.deltas), default=0))
        self.files_dir = os.path.join(partial, "files")
        self.umask = os.umask(0o022)
        os.umask(self.umask)

    def run(self, workers: int) -> None:
        dests = [p for p, _ in self.targets.values()] + [
            os.path.join(self.files_dir, f.path) for f in self.deltas
        ]
        for d in sorted({os.path.dirname(p) for p in dests}):
            os.makedirs(d, exist_ok=True)
        # patches first, largest first (the longest does not start last); solid members
        # next, largest first; members in archive order: neighbours in a directory are
        # created together, as unzip does
        solids = sorted(self.manifest.solids, key=lambda x: (-x.raw_size, x.name))
        jobs: list[str | FileEntry | Solid] = [
            *(f for f in self.deltas if f.member not in self.carried),
            *solids,
            *(n for n in self.promised if n in self.targets),
        ]
        run_each(self._job, jobs, threads=workers)
        if self.root is not None:  # after the members: the patch is one of them
            selfpatch.build(self.manifest, self.root, self.partial / "bundle", self.earlier)

    def _job(self, item: str | FileEntry | Solid) -> None:
        if isinstance(item, str):
            self._extract(item)
        elif isinstance(item, Solid):
            self._solid(item)
        else:
            self._build(item)

    def _extract(self, name: str) -> None:
        dest, mode = self.targets[name]
        sha, size = self.promised[name]
        self._write(dest, mode, iter_verified(self.bundle, name, sha, size))
        failpoint("stage:member")

    def _solid(self, s: Solid) -> None:
        def put(p: Packed, chunks: Iterator[bytes]) -> None:
            if p.name in self.targets:
                self._write(*self.targets[p.name], chunks)
            elif p.name in self.carried:  # small (the stream is at most MAX_SOLID_RAW)
                self._build(self.carried[p.name], b"".join(chunks))

        solid.unpack(iter_verified(self.bundle, s.name, s.sha256, s.size), s, put)
        failpoint("stage:member")

    def _write(self, dest: str, mode: int, chunks: Iterator[bytes]) -> None:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            if mode & self.umask:
                os.fchmod(fd, mode)
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                if self.progress is not None:
                    self.progress(len(chunk))
        finally:
            os.close(fd)

    def _build(self, f: FileEntry, carried: bytes | None = None) -> None:
        """``f``'s file from its patch: read from the bundle, or ``carried`` (verified as its
        solid member was read)."""
        assert f.delta is not None and f.sha256 is not None and self.root is not None
        with self.budget.claim(patch_memory(f)):
            if carried is not None:
                patch = carried
            else:
                patch = b"".join(iter_verified(self.bundle, f.member, f.delta.sha256, f.delta.size))
            old = old_bytes(self.root, self.manifest, f, self.earlier)
            new = apply_patch(f.delta.method, old, patch, f.size, f.sha256)
            del patch, old
            _write_new(os.path.join(self.files_dir, f.path), new, f.mode)
            del new
        if self.progress is not None:
            self.progress(f.delta.size + f.size)
        failpoint("stage:patch")


def _complete(partial: Path, manifest: Manifest, manifest_data: bytes, sig: bytes) -> None:
    """Symlinks, the manifest and its signature, one flush, and the mark that says done."""
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
