"""bundle-build's library side: spec -> collected inputs -> reproducible, signed ZIP."""

from __future__ import annotations

import calendar
import contextlib
import gc
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import __version__
from builder.collect import Collected, attrs_of, collect, normalized_mode
from builder.delta import BSDIFF_MAX, PatchJob, choose_all, zstd_patch
from builder.errors import BuildError
from builder.frozen import FrozenInstaller, cache_dir
from builder.installerbase import PATCH_SUFFIX, BaseInstaller
from builder.keys import load_private_key
from builder.lint import lint_jump, release_trees
from builder.migrations import plan_database
from builder.sbom import Bom
from builder.solid import Packing, pack
from builder.spec import JumpSpec, Product, load_product, start_order
from builder.specfile import refuse
from builder.zipwriter import Source, ZipWriter
from installer.codec import manifest_bytes
from installer.delta import apply_patch
from installer.errors import PatchError
from installer.format import (
    DELTA_FORMAT_VERSION,
    DELTA_PREFIX,
    FORMAT_VERSION,
    INSTALLER_MEMBER,
    INSTALLER_PATCH_FORMAT,
    INSTALLER_PATCH_MEMBER,
    MANIFEST_NAME,
    SBOM_FORMAT,
    SIGNATURE_NAME,
    SOLID_FORMAT,
    ConfigBase,
    Database,
    Delta,
    DirEntry,
    FileEntry,
    Hook,
    InstallerBase,
    InstallerInfo,
    Job,
    Manifest,
    Member,
    RemovedEntry,
    Service,
    Services,
    Solid,
)
from installer.signing import sha256_file, sign_manifest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DOS_EPOCH = 315532800  # 1980-01-01, the earliest time a ZIP can hold


class _OutFile:
    """The bundle being written, and its trip to the disk."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "wb")  # noqa: SIM115
        self._early: threading.Thread | None = None
        self._early_error: OSError | None = None

    def flush_early(self) -> None:
        """Start putting what is written so far on disk, in the background: the payload
        reaches the disk while the manifest is made, and close() waits only for the tail."""
        self.f.flush()
        self._early = threading.Thread(target=self._sync, args=(self.f.fileno(),), daemon=True)
        self._early.start()

    def _sync(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as e:  # a write-back error is reported once per open file: keep it
            self._early_error = e

    def close(self) -> None:
        if self._early is not None:
            self._early.join()
            if self._early_error is not None:
                raise self._early_error
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()

    def discard(self) -> None:
        if self._early is not None:
            self._early.join()
        self.f.close()


@dataclass
class BuildResult:
    """What a build produced."""

    path: Path
    sha256: str | None
    size: int
    manifest: Manifest
    seconds: float
    delta_whole_bytes: int = 0
    """The patched files deflated whole: what their patches (``Delta.size``) save against."""


def bundle_name(product: str, frm: str, to: str) -> str:
    """``<product>-<from>-to-<to>``."""
    return f"{product}-{frm}-to-{to}"


def source_epoch(date_epoch: int | None) -> int:
    """SOURCE_DATE_EPOCH if set, else the jump's date, else 1980-01-01."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env and env.isdigit():
        return max(int(env), DOS_EPOCH)
    return max(date_epoch or DOS_EPOCH, DOS_EPOCH)


@contextlib.contextmanager
def _few_gc_passes() -> Iterator[None]:
    """A build makes ~10 objects per file and no cycles worth collecting while it runs:
    the collector's default thresholds spent ~5% of a 24k-file build walking the heap.
    Objects from before the build (imports) are frozen out of its passes."""
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(20_000, 50, 1000)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def build_bundle(
    specs_dir: Path,
    product_name: str | None,
    frm: str,
    to: str,
    out_dir: Path,
    *,
    key: Path | None,
    **options: Any,
) -> BuildResult:
    """:func:`build_jump` of the product loaded from ``specs_dir``."""
    return build_jump(load_product(specs_dir, product_name), frm, to, out_dir, key=key, **options)


@_few_gc_passes()
def build_jump(
    product: Product,
    frm: str,
    to: str,
    out_dir: Path,
    *,
    key: Path | None,
    level: int = 6,
    workers: int = 2,
    checksum: bool = False,
    rehearse: bool = True,
    installer: FrozenInstaller | None = None,
    progress: Callable[[int], None] | None = None,
    delta: bool = True,
    bsdiff_max: int = BSDIFF_MAX,
    installer_base: BaseInstaller | None = None,
    solid: bool | None = None,
    sbom: bool | None = None,
) -> BuildResult:
    """Build ``<out_dir>/<product>-<from>-to-<to>.zip``. ``key`` None builds an unsigned
    bundle; ``installer`` None a development bundle (no ``bin/bundle-install``); ``delta``
    ships changed files as patches where that pays (format 2; :mod:`builder.delta`);
    ``installer_base`` ships the installer as a patch against it instead, in
    ``<product>-<from>-to-<to>.installer-patch.zip`` (format 3; :mod:`installer.selfpatch`);
    ``solid`` packs small members into solid members (format 4; :mod:`builder.solid`); None
    (auto) does when the bundle carries an installer and every installer that reads this
    manifest reads format 4 (the shipped one, and a patch form's base): a development
    bundle is read by an installer the build does not know, so it stays one member each.
    ``sbom`` ships the to-release's SBOM and the jump's component changes (format 5;
    :mod:`builder.sbom`); None (auto) does on the same terms as ``solid``.

    Raises:
        SpecError: invalid or unknown specs. BuildError: missing key or inputs.
    """
    t0 = time.monotonic()
    jump = product.jump(frm, to)
    private = load_private_key(key) if key is not None else None
    epoch = source_epoch(calendar.timegm(jump.date.timetuple()) if jump.date else None)
    collected, databases, bom = _inputs(product, jump, rehearse, installer, installer_base, epoch)
    if installer is not None and DELTA_FORMAT_VERSION not in installer.formats:
        delta = False  # the installer that travels with the bundle could not read patches,
        for p in collected.files:  # nor merge bases: rewrite and keep-local as format 1 does
            p.base_source, p.required = None, False
    whole_deflated = _patch(collected, workers, bsdiff_max) if delta else 0
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = PATCH_SUFFIX if installer_base is not None and installer is not None else ""
    dest = out_dir / f"{bundle_name(product.name, frm, to)}{suffix}.zip"
    info = _installer_info(installer, installer_base if suffix else None)
    readers = [x for x in (installer, installer_base if suffix else None) if x is not None]
    unable = [x.version for x in readers if SOLID_FORMAT not in x.formats]
    if solid and unable:
        raise BuildError(f"--solid on: bundle-install {unable[0]} reads no bundle format {SOLID_FORMAT}")
    solid = solid if solid is not None else bool(readers) and not unable
    unable = [x.version for x in readers if SBOM_FORMAT not in x.formats]
    if sbom and unable:
        raise BuildError(f"--sbom on: bundle-install {unable[0]} reads no bundle format {SBOM_FORMAT}")
    shipped = bom if (sbom if sbom is not None else bool(readers) and not unable) else None
    if shipped is not None:
        collected.extras.append(Source(shipped.member, 0o644, data=shipped.data))

    def manifest_of(digests: dict[str, tuple[str, int]], solids: tuple[Solid, ...]) -> Manifest:
        return _manifest(product, frm, to, collected, digests, epoch, jump, databases, info, solids, shipped)

    packing = pack(collected.sources(), workers) if solid else Packing(alone=collected.sources())
    size, manifest = _write(dest, packing, manifest_of, private, epoch, level, workers, progress)
    # --checksum: one more pass (the signed manifest already covers every byte that matters)
    digest = sha256_file(dest)[0] if checksum else None
    return BuildResult(dest, digest, size, manifest, time.monotonic() - t0, whole_deflated)


def _installer_info(installer: FrozenInstaller | None, base: BaseInstaller | None) -> InstallerInfo | None:
    """What the manifest records of the installer: whole, or a patch against ``base``."""
    if installer is None:
        return None
    sha, size = sha256_file(installer.path)
    return InstallerInfo(
        sha256=sha,
        version=installer.version,
        formats=installer.formats,
        size=None if base is None else size,
        base=None
        if base is None
        else InstallerBase(sha256=base.sha256, version=base.version, size=base.size, method="zstd-patch"),
    )


def installer_patch(installer: FrozenInstaller, base: BaseInstaller) -> bytes:
    """The installer as a zstd patch against ``base``, checked by applying it as a manager
    will (the installer's own :func:`~installer.delta.apply_patch`).

    Raises:
        BuildError: the patch does not rebuild the installer.
    """
    new, old = installer.path.read_bytes(), base.path.read_bytes()
    patch = zstd_patch(old, new)
    try:
        apply_patch("zstd-patch", old, patch, len(new), hashlib.sha256(new).hexdigest())
    except PatchError as e:
        raise BuildError(f"the installer patch against {base.source} does not rebuild it: {e.message}") from e
    return patch


def _inputs(
    product: Product,
    jump: JumpSpec,
    rehearse: bool,
    installer: FrozenInstaller | None,
    base: BaseInstaller | None,
    epoch: int,
) -> tuple[Collected, list[Database], Bom]:
    """Everything the bundle will hold, linted: payload, migrations (rehearsed), installer,
    and the to-release's SBOM with the jump's component changes (added by the caller)."""
    jump_path = product.jump_files()[(jump.from_version, jump.to_version)]
    trees = release_trees(product, jump)
    refuse(lint_jump(product, jump_path, trees))  # what lint calls an error, a build refuses
    collected = collect(product, jump, jump_path.parent, trees)
    bom = Bom.of_jump(product, jump, trees, epoch)
    del trees
    databases = []
    for spec in product.spec.databases:
        db, sources = plan_database(product, jump, spec, rehearse=rehearse)
        databases.append(db)
        collected.extras += sources
    if installer is not None and base is not None:
        collected.extras.append(Source(INSTALLER_PATCH_MEMBER, 0o644, data=installer_patch(installer, base)))
    elif installer is not None:
        # stored: the bundle RPM ships only this ZIP and takes the installer out of it by its
        # byte range (rpm's Lua has no inflate); it is zstd inside, deflate saved ~2% of it
        collected.extras.append(Source(INSTALLER_MEMBER, 0o755, path=installer.path, store=True))
    return collected, databases, bom


def _write(
    dest: Path,
    packing: Packing,
    manifest_of: Callable[[dict[str, tuple[str, int]], tuple[Solid, ...]], Manifest],
    private: Ed25519PrivateKey | None,
    epoch: int,
    level: int,
    workers: int,
    progress: Callable[[int], None] | None,
) -> tuple[int, Manifest]:
    """Write the ZIP beside ``dest`` and rename it there: payload first, then the manifest
    of its digests and its signature. A failure leaves no file."""
    partial = dest.with_name(f".{dest.name}.partial")
    out = _OutFile(partial)
    try:
        with ZipWriter(out.f, epoch=epoch, level=level, workers=workers, spill_dir=dest.parent) as writer:
            digests = writer.write_all(packing.sources, progress) | packing.digests()
            out.flush_early()
            manifest = manifest_of(digests, tuple(s for s, _ in packing.solids))
            data = manifest_bytes(manifest)
            writer.add_bytes(MANIFEST_NAME, data)
            if private is not None:
                writer.add_bytes(SIGNATURE_NAME, sign_manifest(data, private))
            writer.close()
        size = out.f.tell()
        out.close()
        os.replace(partial, dest)
    except BaseException as e:
        out.discard()
        partial.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise BuildError(f"cannot write {dest.name}: {e}") from e
        raise
    return size, manifest


def _patch(collected: Collected, workers: int, bsdiff_max: int) -> int:
    """Swap each changed file whose patch pays for its patch member (cached); returns the
    patched files' size deflated whole."""
    jobs = [
        PatchJob(p.path, p.old_path, str(p.source.path), p.base)
        for p in collected.files
        if p.kind == "file" and p.old_path is not None and p.source is not None and p.source.path is not None
    ]
    if not jobs:
        return 0
    choices = choose_all(jobs, cache_dir() / "delta", workers=workers, bsdiff_max=bsdiff_max)
    for p in collected.files:
        c = choices.get(p.path)
        if c is not None:
            p.delta = c
            p.source = Source(DELTA_PREFIX + p.path, 0o644, path=c.patch, size=c.patch.stat().st_size)
    return sum(c.whole_deflated for c in choices.values())


def new_dirs(files: list[FileEntry], jump: JumpSpec) -> tuple[DirEntry, ...]:
    """The directories above the jump's new files that a ``modes`` pattern gives an owner,
    group or mode (a directory the manager lacks is made with them; one it has stays as it is)."""
    out = []
    for d in sorted(
        {
            f.path.rsplit("/", i)[0]
            for f in files
            if f.from_sha256 is None
            for i in range(1, f.path.count("/") + 1)
        }
    ):
        attrs = attrs_of(d, jump.files.modes)
        mode = normalized_mode(d, 0o755, jump.files.modes) if attrs.mode_explicit else None
        if attrs.owner or attrs.group or mode is not None:
            out.append(DirEntry(path=d, mode=mode, owner=attrs.owner, group=attrs.group))
    return tuple(out)


UNIT_FILE = re.compile(r"^(?:etc|usr/lib|lib)/systemd/system/([^/]+)\.service$")


def service_changes(
    services: tuple[Service, ...], jump: JumpSpec, files: list[FileEntry], removed: list[RemovedEntry]
) -> tuple[Service, ...]:
    """The manifest's services: each marked ``added`` when the jump renders its unit
    (``units:``) or ships a unit file the from-release lacks, with the ``.socket`` it
    renders; then a unit file the to-release adds that no service names, as ``added``; and,
    stopped first, a service whose unit file the jump removes, as ``removed`` (with its
    socket when that goes too). Added units are enabled and started, removed ones stopped
    and disabled; a rollback reverses both."""
    added_files = {m.group(1) for f in files if f.from_sha256 is None and (m := UNIT_FILE.match(f.path))}
    gone = {r.path for r in removed}
    out = []
    for s in services:
        unit = jump.units.get(s.name)
        update: dict[str, object] = {"added": s.name in jump.units or s.name in added_files}
        if unit is not None and unit.socket is not None:
            update["socket"] = f"{s.name}.socket"
        out.append(s.model_copy(update=update))
    names = {s.name for s in services}
    placed = {f.path for f in files if f.from_sha256 is None}
    for path in sorted(placed):  # a unit the release adds that the spec lists no service for
        m = UNIT_FILE.match(path)
        if m and m.group(1) not in names:
            name = m.group(1)
            sock = f"{name}.socket" if path.removesuffix(".service") + ".socket" in placed else None
            out.append(Service(name=name, added=True, socket=sock))
    for path in sorted(gone):
        m = UNIT_FILE.match(path)
        if m and m.group(1) not in names:
            name = m.group(1)
            sock = f"{name}.socket" if path.removesuffix(".service") + ".socket" in gone else None
            out.append(Service(name=name, removed=True, socket=sock))
    return tuple(out)


def _file_entries(collected: Collected, digests: dict[str, tuple[str, int]]) -> list[FileEntry]:
    """The manifest's file entries, sorted by path. Consumes collected.files and their
    digests as it goes: each pending entry is freed as its FileEntry is made, so both never
    coexist for tens of thousands of files."""
    pending = collected.files
    pending.sort(key=lambda p: p.path, reverse=True)
    files = []
    while pending:
        p = pending.pop()
        sha, size = digests.pop(p.source.name) if p.source is not None else (None, 0)
        base = digests.pop(p.base_source.name) if p.base_source is not None else None
        patch = None
        if p.delta is not None:
            assert sha is not None
            patch = Delta(
                method=p.delta.method,
                sha256=sha,
                size=size,
                from_size=p.delta.old_size,
                base=p.delta.base,
                base_sha256=p.delta.old_sha256 if p.delta.base is not None else None,
            )
            sha, size = p.delta.new_sha256, p.delta.new_size
        files.append(
            FileEntry(
                path=p.path,
                kind=p.kind,
                sha256=sha,
                size=size,
                mode=p.mode,
                from_sha256=p.from_sha256,
                policy=p.policy,
                rules=p.rules,
                link_target=p.link_target,
                delta=patch,
                base=ConfigBase(sha256=base[0], size=base[1]) if base is not None else None,
                required=p.required,
                owner=p.attrs.owner,
                group=p.attrs.group,
                mode_explicit=p.attrs.mode_explicit,
                caps=p.caps,
            )
        )
    return files


def _manifest(
    product: Product,
    frm: str,
    to: str,
    collected: Collected,
    digests: dict[str, tuple[str, int]],
    epoch: int,
    jump: JumpSpec,
    databases: list[Database],
    installer: InstallerInfo | None,
    solids: tuple[Solid, ...] = (),
    bom: Bom | None = None,
) -> Manifest:
    """The manifest of what was written. Empties ``collected.files`` and takes their
    entries out of ``digests``."""
    files = _file_entries(collected, digests)
    extras = [
        Member(name=s.name, sha256=digests[s.name][0], size=digests[s.name][1], mode=s.mode)
        for s in collected.extras
    ]
    svc = jump.services or product.spec.services
    hooks = [
        Hook(name=h.name, when=h.when, timeout=h.timeout, undo=f"{h.name}-undo" if h.undo_script else None)
        for h in jump.hooks
    ]
    try:
        return Manifest(
            format=SBOM_FORMAT
            if bom is not None
            else SOLID_FORMAT
            if solids
            else INSTALLER_PATCH_FORMAT
            if installer is not None and installer.base is not None
            else DELTA_FORMAT_VERSION
            if any(f.needs_format_2 for f in files)
            else FORMAT_VERSION,
            product=product.name,
            from_version=frm,
            to_version=to,
            version_file=product.spec.version_file,
            files=tuple(files),
            removed=tuple(sorted(collected.removed, key=lambda r: r.path)),
            extras=tuple(extras),
            lookups=product.spec.lookups,
            services=Services(
                backend=svc.backend,
                socket=svc.socket,
                services=service_changes(
                    start_order(svc.services, f"{product.name} services"), jump, files, collected.removed
                ),
                health=svc.health,
                settle=svc.settle,
            ),
            checks=product.spec.checks + jump.checks,
            hooks=tuple(hooks),
            jobs=tuple(
                Job(name=j.name, retries=j.retries, backoff=j.backoff, timeout=j.timeout) for j in jump.jobs
            ),
            cluster=product.spec.cluster,
            databases=tuple(databases),
            installer=installer,
            development=installer is None,
            components=tuple(sorted(s.name for s in collected.extras if s.name.startswith("components/"))),
            graph=product.graph(),
            special_modes=tuple(sorted(f.path for f in files if f.kind == "file" and f.mode & 0o7000)),
            capabilities=tuple(sorted(f.path for f in files if f.caps is not None)),
            dirs=new_dirs(files, jump),
            solids=solids,
            sbom=bom.member if bom is not None else None,
            changes=bom.changes if bom is not None else (),
            builder_version=__version__,
            created=epoch,
        )
    except ValueError as e:
        raise BuildError(f"the jump does not make a valid manifest: {e}") from e
