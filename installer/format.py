"""The bundle format: the single definition shared by the builder (writes) and the
installer (reads): the manifest's schema and the constants of a bundle's layout. Its byte
form is :mod:`installer.codec`, its signature :mod:`installer.signing`, the checks of the
rules and paths it names :mod:`installer.rules`.

A bundle (ZIP or RPM payload) holds::

    manifest.json   canonical JSON of :class:`Manifest`
    manifest.sig    canonical JSON ``{"keyid": ..., "sig": base64}`` over manifest.json
    payload/<path>  one member per file or config in ``Manifest.files``
    hooks/, migrations/, bin/, components/   members listed in ``Manifest.extras``
    sbom/<product>-<to>.cdx.json   (format 5) the to-release's SBOM, ``Manifest.sbom``
    solid/<n>       (format 4) one zstd frame holding small payload, delta and base members
                    end to end, listed in ``Manifest.solids`` (:mod:`installer.solid`)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from installer import READABLE_FORMATS
from installer.delta import MAX_PATCHED_BYTES
from installer.errors import UnsafePathError, VersionError
from installer.graph import Graph
from installer.modelbase import Account as Account
from installer.modelbase import Mode as Mode
from installer.modelbase import Sha256 as Sha256
from installer.modelbase import _Model
from installer.paths import check_link_target, check_relpath
from installer.rules import check_not_reserved, check_rule
from installer.runspec import Check as Check
from installer.runspec import Cluster as Cluster
from installer.runspec import HealthCheck as HealthCheck
from installer.runspec import Hook as Hook
from installer.runspec import HookWhen as HookWhen
from installer.runspec import Job as Job
from installer.runspec import Lookup as Lookup
from installer.runspec import Service as Service
from installer.runspec import Services as Services
from installer.sbom import MAX_CHANGES, MAX_SBOM_BYTES, SBOM_PREFIX, SBOM_SUFFIX, ComponentChange
from installer.version import Version

FORMAT_VERSION = 1
DELTA_FORMAT_VERSION = 2
"""The format of a bundle that holds delta entries, config merge bases or required
configs (one without stays at 1, which every installer reads)."""
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
PAYLOAD_PREFIX = "payload/"
DELTA_PREFIX = "delta/"
BASE_PREFIX = "base/"
"""Members holding the from-version default of a ``rewrite`` config (format 2)."""
EXTRA_PREFIXES = ("hooks/", "migrations/", "bin/", "components/", SBOM_PREFIX)
INSTALLER_MEMBER = "bin/bundle-install"
INSTALLER_PATCH_FORMAT = 3
"""The format of a bundle whose installer comes as a patch (:mod:`installer.selfpatch`)."""
INSTALLER_PATCH_MEMBER = "bin/bundle-install.patch"
SOLID_FORMAT = 4
"""The format of a bundle whose small members travel in solid members (:class:`Solid`)."""
SOLID_PREFIX = "solid/"
PACKABLE_PREFIXES = (PAYLOAD_PREFIX, DELTA_PREFIX, BASE_PREFIX)
SBOM_FORMAT = 5
"""The format of a bundle that carries the to-release's SBOM and its component changes
(:mod:`installer.sbom`)."""
MAX_SOLID_RAW = 16 * 1024 * 1024
"""A solid member's stream is at most this long (the builder cuts after 8 MiB, with
members of at most 64 KiB): what a reader may hold of it at once is bounded by it."""
MAX_MANIFEST_BYTES = 128 * 1024 * 1024
MAX_SIGNATURE_BYTES = 4096
MAX_FILES = 300_000
MAX_REMOVED = 100_000
MAX_EXTRAS = 10_000
"""Caps on a manifest's entries: everything a manifest asks for runs while the lock is
held (a manifest of 1.05M removals held it for 5.5 min in 1.3 GB). A real release tree of
the benchmark's size has 25,867 files."""
MAX_INT_DIGITS = 20  # every integer a manifest holds (sizes, modes, times) fits in 64 bits
CHUNK = 1024 * 1024


class RewriteRule(_Model):
    """A regex substitution applied line by line to an operator's config file. Pattern and
    replacement are checked where the manifest is made and again where it is read, so a
    rule that cannot run fails the build or the verify, never the apply."""

    pattern: str
    """RE2 regular expression matched against each line of the operator's file
    (linear time: no catastrophic backtracking)."""
    replacement: str
    """What a match becomes; ``\\1`` refers to the pattern's first group."""

    @model_validator(mode="after")
    def _compiles(self) -> RewriteRule:
        check_rule(self.pattern, self.replacement)
        return self


class Delta(_Model):
    """How a file entry's bytes travel as a patch against a from-version file (format 2):
    member ``delta/<path>`` holds the patch; the entry's ``sha256``, ``size`` and ``mode``
    stay the new file's. The old file is the entry's own path (its ``from_sha256``), or,
    for a file the jump adds, ``base``: another from-version file (``base_sha256``), such
    as the library or dist-info file a release renamed (``libfoo-1a2b.so`` ->
    ``libfoo-3c4d.so``). Either is read beneath the root while staging, before anything
    stops, so a base the jump removes or replaces is still the from-version's."""

    method: Literal["zstd-patch", "bsdiff"]
    sha256: Sha256
    """Of the patch member."""
    size: int = Field(ge=0)
    """Of the patch member."""
    from_size: int = Field(ge=0, le=MAX_PATCHED_BYTES)
    """Of the old file (read beneath the root, at most this many bytes)."""
    base: str | None = None
    """The from-version file patched when it is not the entry's path (an added file)."""
    base_sha256: Sha256 | None = None

    @field_validator("base")
    @classmethod
    def _base_ok(cls, v: str | None) -> str | None:
        return None if v is None else check_relpath(v)

    @model_validator(mode="after")
    def _pair(self) -> Delta:
        if (self.base is None) != (self.base_sha256 is None):
            raise ValueError("a delta's base and base_sha256 come together")
        return self


class ConfigBase(_Model):
    """The from-version's default of a config: the member ``base/<path>``."""

    sha256: Sha256
    size: int = Field(ge=0, le=16 * 1024 * 1024)


class FileEntry(_Model):
    """A file, config or symlink the jump places under the root."""

    path: str
    kind: Literal["file", "config", "symlink"] = "file"
    sha256: Sha256 | None = None
    size: int = Field(default=0, ge=0)
    mode: Mode = 0o644
    from_sha256: Sha256 | None = None
    """Hash of the from-version file this replaces (drift check); None: the jump adds it."""
    policy: Literal["replace", "keep-local", "rewrite"] = "replace"
    rules: tuple[RewriteRule, ...] = ()
    link_target: str | None = None
    delta: Delta | None = None
    """Format 2: the bytes come as a patch of the from-version file (absent: whole)."""
    base: ConfigBase | None = None
    """Format 2, a ``rewrite`` config: the from-version's default (member ``base/<path>``),
    the base of a 3-way merge that carries the new default's changes (new keys, header)
    into the operator's edited file."""
    required: bool = False
    """Format 2, a ``keep-local`` or ``rewrite`` config: placed even when the operator
    deleted it (otherwise a deleted config stays deleted, the new default beside it)."""
    owner: Account | None = None
    """The user that owns it on the manager, by name (the spec's ``owner``; resolved in the
    manager's etc/passwd at pre-flight). None: the owner of the file it replaces, else root."""
    group: Account | None = None
    """Its group, by name (etc/group), likewise."""
    mode_explicit: bool = False
    """The spec sets ``mode``: placed as it is. Otherwise a read or write bit the replaced
    file lacks is not added (a manager's narrower mode wins)."""
    caps: str | None = Field(default=None, pattern=r"^(?:[0-9a-f]{2}){4,64}$")
    """File capabilities: the ``security.capability`` value (hex) the release's file has,
    allowed for this exact path by the product spec (``capabilities``)."""

    @field_validator("path")
    @classmethod
    def _path_ok(cls, v: str) -> str:
        return check_relpath(v)

    @model_validator(mode="after")
    def _kind_ok(self) -> FileEntry:
        if self.kind == "symlink":
            if self.link_target is None or self.sha256 is not None:
                raise ValueError("a symlink has link_target and no sha256")
            check_link_target(self.path, self.link_target)
        else:
            if self.sha256 is None or self.link_target is not None:
                raise ValueError("a file has sha256 and no link_target")
        if self.kind != "config" and (self.policy != "replace" or self.rules):
            raise ValueError("only configs have a policy or rules")
        if self.base is not None and (self.policy != "rewrite" or self.base.sha256 != self.from_sha256):
            raise ValueError("a merge base is the from-version default of a rewrite config (its from_sha256)")
        if self.required and self.policy == "replace":
            raise ValueError("required is for keep-local and rewrite configs")
        if self.delta is not None:
            if self.kind != "file":
                raise ValueError("only a file (kind file) travels as a delta")
            if (self.delta.base is None) == (self.from_sha256 is None):
                raise ValueError(
                    "a delta patches the entry's own from-version file (from_sha256 set) or, "
                    "for an added file, a base (delta.base set), not both"
                )
            if self.delta.base == self.path:
                raise ValueError("a delta's base is another path than the entry's")
        if self.delta is not None and self.size > MAX_PATCHED_BYTES:
            raise ValueError(f"a patched file is at most {MAX_PATCHED_BYTES} bytes")
        return self

    @property
    def old_file(self) -> tuple[str, str]:
        """A delta entry's old file: (path, sha256) of the from-version file it patches."""
        assert self.delta is not None
        if self.delta.base is not None:
            assert self.delta.base_sha256 is not None
            return self.delta.base, self.delta.base_sha256
        assert self.from_sha256 is not None
        return self.path, self.from_sha256

    @property
    def needs_format_2(self) -> bool:
        """True when the entry uses what a format-1 installer does not read."""
        return self.delta is not None or self.base is not None or self.required

    @property
    def member(self) -> str:
        """Name of the archive member holding this file's bytes (or its patch)."""
        return (DELTA_PREFIX if self.delta is not None else PAYLOAD_PREFIX) + self.path


class RemovedEntry(_Model):
    """A from-version file that the jump deletes."""

    path: str
    from_sha256: Sha256 | None = None

    @field_validator("path")
    @classmethod
    def _path_ok(cls, v: str) -> str:
        return check_relpath(v)


class Member(_Model):
    """An archive member that is not placed under the root (hooks, migrations, installer)."""

    name: str
    sha256: Sha256
    size: int = Field(ge=0)
    mode: Mode = 0o644

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        check_relpath(v)
        if not v.startswith(EXTRA_PREFIXES):
            raise ValueError(f"extra members live under {', '.join(EXTRA_PREFIXES)}")
        return v


class Packed(_Model):
    """A member carried in a solid member: bytes ``[offset, offset + size)`` of the solid's
    decompressed stream, checked against ``sha256`` as they are read."""

    name: str
    offset: int = Field(ge=0)
    size: int = Field(ge=0)
    sha256: Sha256


class Solid(_Model):
    """A ``solid/<n>`` member (format 4): one zstd frame whose stream is its ``members``
    end to end, in order, with neither gap nor overlap. Small members compress together
    (a ZIP entry costs ~100 bytes of headers and compresses alone)."""

    name: str
    sha256: Sha256
    size: int = Field(ge=0)
    """Of the compressed member, as it sits in the archive."""
    raw_size: int = Field(ge=0, le=MAX_SOLID_RAW)
    members: tuple[Packed, ...]

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        check_relpath(v)
        if not v.startswith(SOLID_PREFIX) or "/" in v[len(SOLID_PREFIX) :]:
            raise ValueError(f"a solid member is named {SOLID_PREFIX}<name>")
        return v


class DirEntry(_Model):
    """A directory the to-release adds whose owner, group or mode the spec sets (others get
    root and 0755 when the swap creates them)."""

    path: str
    mode: Mode | None = None
    owner: Account | None = None
    group: Account | None = None

    @field_validator("path")
    @classmethod
    def _path_ok(cls, v: str) -> str:
        return check_relpath(v)


class Database(_Model):
    """A database migrated by alembic from ``migrations/<name>/versions/``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    url: Lookup
    url_kind: Literal["url", "sqlite-path"] = "url"
    """``sqlite-path``: the lookup gives a SQLite file path (relative to the root)."""
    from_revision: str | None
    to_revision: str
    revisions: tuple[str, ...] = ()
    """The revisions the upgrade runs, oldest first."""
    rehearsal_seconds: float = 0.0

    @property
    def script_dir(self) -> str:
        """Where the alembic script dir lives in the bundle (and in the staging area)."""
        return f"migrations/{self.name}"


class InstallerBase(_Model):
    """The installer a patched one is built from: the one the from-version's release bundle
    carried, which the manager keeps (:mod:`installer.selfupdate`)."""

    sha256: Sha256
    version: str
    size: int = Field(ge=1, le=MAX_PATCHED_BYTES)
    method: Literal["zstd-patch", "bsdiff"]


class InstallerInfo(_Model):
    """The frozen installer shipped in ``bin/bundle-install`` (its bytes are the extra member of
    that name; this records what ``bundle-install --version`` said when the bundle was built),
    or built on the manager from ``base`` and the patch member ``bin/bundle-install.patch``."""

    sha256: Sha256
    version: str
    formats: tuple[int, ...]
    size: int | None = Field(default=None, ge=1, le=MAX_PATCHED_BYTES)
    base: InstallerBase | None = None


class Manifest(_Model):
    """Everything a bundle promises; signed as canonical JSON."""

    format: int
    product: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    from_version: str
    to_version: str
    version_file: str
    files: tuple[FileEntry, ...] = ()
    removed: tuple[RemovedEntry, ...] = ()
    extras: tuple[Member, ...] = ()
    lookups: dict[str, Lookup] = Field(default_factory=dict)
    services: Services = Services()
    checks: tuple[Check, ...] = ()
    hooks: tuple[Hook, ...] = ()
    jobs: tuple[Job, ...] = ()
    cluster: Cluster | None = None
    databases: tuple[Database, ...] = ()
    installer: InstallerInfo | None = None
    development: bool = False
    components: tuple[str, ...] = ()
    """Extra members (``components/*.rpm``) installed by rpm after the commit."""
    graph: Graph | None = None
    """The product's jumps, required stops and policy when the bundle was built: lets the
    installer name the chain an operator needs when this bundle does not fit."""
    special_modes: tuple[str, ...] = ()
    """The exact paths of file entries that carry setuid, setgid or sticky bits because
    the product spec allows them there (``modes: {PATH: {mode: "4755", allow_setuid:
    true}}``); every other entry, config, hook or extra with such a bit is refused."""
    capabilities: tuple[str, ...] = ()
    """The exact paths of file entries that carry file capabilities because the product
    spec allows them there (``modes: {PATH: {allow_caps: true}}``); a ``caps`` anywhere
    else is refused, as loudly as setuid."""
    dirs: tuple[DirEntry, ...] = ()
    """New directories with the spec's owner, group or mode."""
    solids: tuple[Solid, ...] = ()
    """Format 4: members carried inside solid members instead of one archive member each."""
    sbom: str | None = None
    """Format 5: the extra member holding the to-release's CycloneDX SBOM."""
    changes: tuple[ComponentChange, ...] = Field(default=(), max_length=MAX_CHANGES)
    """Format 5: the components the jump adds, removes or moves to another version."""
    builder_version: str
    created: int = Field(ge=0)

    @field_validator("format")
    @classmethod
    def _format_ok(cls, v: int) -> int:
        if v not in READABLE_FORMATS:
            raise ValueError(f"format {v} is not one this installer reads {READABLE_FORMATS}")
        return v

    @field_validator("from_version", "to_version")
    @classmethod
    def _version_ok(cls, v: str) -> str:
        try:
            Version.parse(v)
        except VersionError as e:
            raise ValueError(e.message) from e
        return v

    @field_validator("version_file")
    @classmethod
    def _vf_ok(cls, v: str) -> str:
        return check_relpath(v)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        for rule in MANIFEST_RULES:
            rule(self)
        return self

    @property
    def bundle_id(self) -> str:
        """Stable name for staging and backup directories."""
        return f"{self.product}-{self.from_version}-to-{self.to_version}"

    def members(self) -> dict[str, tuple[str, int]]:
        """Every archive member the manifest promises (besides manifest and signature),
        mapped to (sha256, size): the solid members, not what they carry."""
        packed = self.packed()
        out = {name: v for name, v in self.contents().items() if name not in packed}
        for s in self.solids:
            out[s.name] = (s.sha256, s.size)
        return out

    def packed(self) -> dict[str, tuple[Solid, Packed]]:
        """The members carried in solid members, by name."""
        return {p.name: (s, p) for s in self.solids for p in s.members}

    def contents(self) -> dict[str, tuple[str, int]]:
        """Every member's bytes the manifest promises, wherever they travel (alone or in a
        solid member), mapped to (sha256, size)."""
        out: dict[str, tuple[str, int]] = {}
        for f in self.files:
            if f.delta is not None:
                out[f.member] = (f.delta.sha256, f.delta.size)
            elif f.sha256 is not None:
                out[f.member] = (f.sha256, f.size)
            if f.base is not None:
                out[BASE_PREFIX + f.path] = (f.base.sha256, f.base.size)
        for m in self.extras:
            out[m.name] = (m.sha256, m.size)
        return out

    def total_size(self) -> int:
        """Bytes the staging takes: every member unpacked, each patched file built, and an
        installer built from its patch."""
        patched = self.installer is not None and self.installer.base is not None
        built = (self.installer.size or 0) if patched and self.installer else 0
        return (
            sum(size for _, size in self.contents().values())
            + built
            + sum(f.size for f in self.files if f.delta is not None)
        )

    def deltas(self) -> list[FileEntry]:
        """The entries whose bytes come as patches (format 2)."""
        return [f for f in self.files if f.delta is not None]


# --- the manifest's consistency rules: each raises ValueError or UnsafePathError -------


def to_version_ascends(m: Manifest) -> None:
    if Version.parse(m.to_version) <= Version.parse(m.from_version):
        raise ValueError(f"to_version {m.to_version} is not above {m.from_version}")


def paths_unique_and_not_reserved(m: Manifest) -> None:
    """Case-insensitively: a case-folding file system would write two entries to one file."""
    seen: dict[str, str] = {}
    for p in [f.path for f in m.files] + [r.path for r in m.removed]:
        check_not_reserved(p)
        low = p.casefold()
        if low in seen:
            raise ValueError(f"path listed twice (or differing only in case): {p}")
        seen[low] = p


def nothing_below_another_entry(m: Manifest) -> None:
    """A file below another entry would be written through it: through a symlink to
    wherever it points (inside the root, but not where the manifest says)."""
    placed = {f.path.casefold(): f.path for f in m.files}
    for f in m.files:
        parts = f.path.casefold().split("/")
        for i in range(1, len(parts)):
            above = placed.get("/".join(parts[:i]))
            if above is not None:
                raise UnsafePathError(f"{f.path} lies below another entry ({above})", entry=f.path)


def special_modes_allowed(m: Manifest) -> None:
    """setuid, setgid and sticky only on the exact files the product spec allows."""
    allowed = set(m.special_modes)
    for f in m.files:
        if f.mode & 0o7000 and not (f.kind == "file" and f.path in allowed):
            raise UnsafePathError(
                f"mode {f.mode:04o}: setuid, setgid and sticky bits need the product spec's "
                "allow_setuid for this exact path",
                entry=f.path,
            )
    if allowed - {f.path for f in m.files if f.kind == "file" and f.mode & 0o7000}:
        raise ValueError("special_modes names a path that is no file entry with such a bit")


def capabilities_allowed(m: Manifest) -> None:
    """File capabilities only on the exact files the product spec allows."""
    capable = set(m.capabilities)
    for f in m.files:
        if f.caps is not None and not (f.kind == "file" and f.path in capable):
            raise UnsafePathError(
                "file capabilities need the product spec's allow_caps for this exact path", entry=f.path
            )
    if capable - {f.path for f in m.files if f.caps is not None}:
        raise ValueError("capabilities names a path that is no file entry with capabilities")


def extras_plain_and_unique(m: Manifest) -> None:
    for x in m.extras:
        if x.mode & 0o7000:
            raise UnsafePathError(f"mode {x.mode:04o}: no hook or extra member may be setuid", entry=x.name)
    names = [x.name for x in m.extras]
    if len(set(names)) != len(names):
        raise ValueError("an extra member is listed twice")


def installer_shipped_unless_development(m: Manifest) -> None:
    if (m.installer is None) != m.development:
        raise ValueError("a bundle is a development bundle exactly when it ships no installer")


def components_are_rpm_members(m: Manifest) -> None:
    names = {x.name for x in m.extras}
    for c in m.components:
        if c not in names or not c.startswith("components/") or not c.endswith(".rpm"):
            raise ValueError(f"component {c!r} is not a components/*.rpm extra member")


def scripts_have_members(m: Manifest) -> None:
    """Hook and job names are unique, and each (and each undo) is a ``hooks/`` member."""
    names = {x.name for x in m.extras}
    scripts = [h.name for h in m.hooks] + [j.name for j in m.jobs]
    if len(set(scripts)) != len(scripts):
        raise ValueError("a hook or job name is used twice")
    for script in scripts + [h.undo for h in m.hooks if h.undo]:
        if f"hooks/{script}" not in names:
            raise ValueError(f"hook or job {script!r} has no hooks/{script} extra member")


def format_holds_its_entries(m: Manifest) -> None:
    """Patches, config bases and required configs exist from format 2; a patch's base is
    a release file, never the installer's own."""
    if m.format < DELTA_FORMAT_VERSION and any(f.needs_format_2 for f in m.files):
        raise ValueError(
            f"delta entries, config bases and required configs need bundle format {DELTA_FORMAT_VERSION}"
        )
    for f in m.files:
        if f.delta is not None and f.delta.base is not None:
            check_not_reserved(f.delta.base)


def installer_is_a_member(m: Manifest) -> None:
    """The installer travels whole (its member's sha256 is the one recorded) or as a patch
    against a base (format 3, its size bounding what the patch may build), never both."""
    if m.installer is None:
        return
    members = {x.name: x for x in m.extras}
    whole, patch = members.get(INSTALLER_MEMBER), members.get(INSTALLER_PATCH_MEMBER)
    if m.installer.base is None:
        if whole is None or patch is not None:
            raise ValueError(f"installer recorded but {INSTALLER_MEMBER} is not an extra member")
        if whole.sha256 != m.installer.sha256:
            raise ValueError(f"the installer's sha256 is not that of {INSTALLER_MEMBER}")
        return
    if patch is None or whole is not None:
        raise ValueError(f"an installer with a base travels as {INSTALLER_PATCH_MEMBER} alone")
    if m.installer.size is None or m.format < INSTALLER_PATCH_FORMAT:
        raise ValueError(f"an installer patch needs its size and bundle format {INSTALLER_PATCH_FORMAT}")


def solids_tile_their_streams(m: Manifest) -> None:
    """Each solid member's stream is its members end to end (an overlap would let one
    range stand for two files, a gap hide bytes nobody checks); each carried member is one
    the manifest promises (a payload, patch or base, with the same sha256 and size), carried
    once; solids exist from format 4."""
    if not m.solids:
        return
    if m.format < SOLID_FORMAT:
        raise ValueError(f"solid members need bundle format {SOLID_FORMAT}")
    if len(m.solids) > MAX_EXTRAS:
        raise ValueError(f"{len(m.solids)} solid members, above the limit {MAX_EXTRAS}")
    contents, carried, names = m.contents(), set(), set()
    for s in m.solids:
        if s.name in names:
            raise ValueError(f"solid member {s.name} is listed twice")
        if not s.members:
            raise ValueError(f"solid member {s.name} carries nothing")
        names.add(s.name)
        at = 0
        for p in s.members:
            if p.offset != at:
                why = "overlaps the one before" if p.offset < at else "leaves a gap before it"
                raise ValueError(f"{s.name}: {p.name} at offset {p.offset} {why} (expected {at})")
            at += p.size
            if not p.name.startswith(PACKABLE_PREFIXES) or contents.get(p.name) != (p.sha256, p.size):
                raise ValueError(f"{s.name}: {p.name} is no payload, patch or base the manifest lists so")
            if p.name in carried:
                raise ValueError(f"{p.name} is carried twice")
            carried.add(p.name)
        if at != s.raw_size:
            raise ValueError(f"{s.name}: its members end at {at}, its stream at {s.raw_size}")


def sbom_is_a_member(m: Manifest) -> None:
    """The SBOM is a bounded ``sbom/*.cdx.json`` extra member; it and the component changes
    exist from format 5."""
    if m.sbom is None and not m.changes:
        return
    if m.format < SBOM_FORMAT:
        raise ValueError(f"an SBOM and component changes need bundle format {SBOM_FORMAT}")
    if m.sbom is None:
        raise ValueError("component changes come with the SBOM they were read from")
    member = next((x for x in m.extras if x.name == m.sbom), None)
    if member is None or not m.sbom.startswith(SBOM_PREFIX) or not m.sbom.endswith(SBOM_SUFFIX):
        raise ValueError(f"sbom {m.sbom!r} is not an {SBOM_PREFIX}*{SBOM_SUFFIX} extra member")
    if member.size > MAX_SBOM_BYTES:
        raise ValueError(f"the SBOM is {member.size} bytes, above the limit {MAX_SBOM_BYTES}")


def replaces_the_version_file(m: Manifest) -> None:
    """The jump leaves the version file saying its to-version (its content is checked when
    staged): without it the manager would still say the from-version afterwards."""
    if not any(f.path == m.version_file and f.kind == "file" for f in m.files):
        raise ValueError(
            f"the jump does not replace its version file {m.version_file} with a file "
            f"(the manager would still say {m.from_version} after it)"
        )


MANIFEST_RULES: tuple[Callable[[Manifest], None], ...] = (
    to_version_ascends,
    paths_unique_and_not_reserved,
    nothing_below_another_entry,
    special_modes_allowed,
    capabilities_allowed,
    extras_plain_and_unique,
    installer_shipped_unless_development,
    components_are_rpm_members,
    scripts_have_members,
    format_holds_its_entries,
    installer_is_a_member,
    solids_tile_their_streams,
    sbom_is_a_member,
    replaces_the_version_file,
)
"""What a manifest must satisfy beyond its fields' own types, in the order checked (the
first broken rule is the one reported)."""
