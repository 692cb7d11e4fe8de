"""The bundle format: the single definition shared by the builder (writes) and the
installer (reads): the manifest's schema and the constants of a bundle's layout. Its byte
form is :mod:`installer.codec`, its signature :mod:`installer.signing`, the checks of the
rules and paths it names :mod:`installer.rules`.

A bundle (ZIP or RPM payload) holds::

    manifest.json   canonical JSON of :class:`Manifest`
    manifest.sig    canonical JSON ``{"keyid": ..., "sig": base64}`` over manifest.json
    payload/<path>  one member per file or config in ``Manifest.files``
    hooks/, migrations/, bin/   members listed in ``Manifest.extras``
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from installer import READABLE_FORMATS
from installer.delta import MAX_PATCHED_BYTES
from installer.errors import VersionError
from installer.graph import Graph
from installer.paths import check_link_target, check_relpath
from installer.rules import check_rule
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
EXTRA_PREFIXES = ("hooks/", "migrations/", "bin/", "components/")
INSTALLER_MEMBER = "bin/bundle-install"
INSTALLER_PATCH_FORMAT = 3
"""The format of a bundle whose installer comes as a patch (:mod:`installer.selfpatch`)."""
INSTALLER_PATCH_MEMBER = "bin/bundle-install.patch"
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

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Mode = Annotated[int, Field(ge=0, le=0o7777)]
Account = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")]
"""A user or group name (resolved on the manager)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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


class Lookup(_Model):
    """Where the installer finds a value on the target: an INI key or an environment variable."""

    file: str | None = None
    """INI file on the target, relative to the root (with ``key``)."""
    key: str | None = None
    """``section.option`` in an INI file."""
    env: str | None = None
    """Environment variable of the installer's process (instead of ``file``)."""
    default: str | None = None
    """The value when the file, key or variable is missing (none: the lookup fails
    pre-flight)."""

    @model_validator(mode="after")
    def _one_source(self) -> Lookup:
        if (self.file is None) == (self.env is None):
            raise ValueError("a lookup names either file+key or env")
        if self.file is not None:
            check_relpath(self.file)
            if not self.key or "." not in self.key:
                raise ValueError("a file lookup needs key 'section.option'")
        return self


class HealthCheck(_Model):
    """A check that must pass after start before the apply commits."""

    name: str
    """Names the check in logs, status and errors."""
    kind: Literal["http", "tcp", "command"]
    """``http``: GET ``url``; ``tcp``: connect to ``host``:``port``; ``command``:
    run argv in the root, exit 0 passes."""
    url: str | None = None
    """For ``http``: the URL; ``{port}``, ``{version}`` and the product's lookups
    are expanded."""
    expect_status: int = 200
    """For ``http``: the status code that passes."""
    expect_body: str | None = None
    """For ``http``: text the body must contain (expanded like ``url``)."""
    host: str = "127.0.0.1"
    """For ``tcp``: the host to connect to."""
    port: str | None = None
    """For ``tcp``: the port (a number or ``{lookup}``)."""
    command: tuple[str, ...] = ()
    """For ``command``: argv, no shell; run with the root as working directory."""
    timeout: float = Field(default=2.0, gt=0, le=600)
    """Seconds each try may take."""
    interval: float = Field(default=0.2, gt=0, le=600)
    """Seconds between tries."""
    retries: int = Field(default=50, ge=1, le=10000)
    """Tries before the check fails (the apply then rolls back)."""


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


class Service(_Model):
    """A service of the manager; started in list order, stopped in reverse."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")
    """The service's name in the backend (supervisord program, systemd unit without
    .service)."""
    stop_timeout: float = Field(default=30.0, gt=0)
    """Seconds a stop may take before it fails (the apply then rolls back)."""
    start_timeout: float = Field(default=60.0, gt=0)
    """Seconds a start may take."""
    start: tuple[str, ...] = ()
    """``command`` backend: argv that starts it (no shell)."""
    stop: tuple[str, ...] = ()
    """``command`` backend: argv that stops it."""
    status: tuple[str, ...] = ()
    """``command`` backend: argv that exits 0 while it runs."""
    added: bool = False
    """The jump adds this service: it is started after the swap although it never ran."""
    depends_on: tuple[str, ...] = ()
    """Services this one needs: they start before it and stop after it."""
    socket: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:@-]{1,121}\.socket$")
    """systemd: the ``.socket`` unit that listens for this service. It stays up while the
    service restarts, so clients wait in its backlog instead of being refused; a jump that
    changes the socket unit itself restarts it too (and refuses connections meanwhile)."""
    removed: bool = False
    """The jump removes this service: stopped and disabled before the swap, never started
    again; a rollback enables and starts it again as it was."""


class Services(_Model):
    """How the target runs its services and which ones the jump restarts. ``services``
    is in start order (every service after those it depends on); stop is the reverse."""

    backend: Literal["supervisord", "systemd", "command", "none"] = "none"
    socket: str | None = None
    """supervisord: unix socket path relative to the root (resolved beneath it)."""
    services: tuple[Service, ...] = ()
    health: tuple[HealthCheck, ...] = ()
    settle: float = Field(default=0.0, ge=0, le=600)
    """Seconds every started service must keep running after the health checks pass, as
    its backend sees it (no exit, no restart), before the apply commits: a service that
    answers once and then crash-loops under ``Restart=always`` fails health."""

    @field_validator("socket")
    @classmethod
    def _socket_ok(cls, v: str | None) -> str | None:
        return None if v is None else check_relpath(v, what="supervisord socket")

    @model_validator(mode="after")
    def _order_ok(self) -> Services:
        seen: set[str] = set()
        for s in self.services:
            if s.name in seen:
                raise ValueError(f"service {s.name} is listed twice")
            missing = [d for d in s.depends_on if d not in seen]
            if missing:
                raise ValueError(f"service {s.name} starts before {', '.join(missing)}, which it depends on")
            seen.add(s.name)
        return self


class Check(_Model):
    """A pre-flight check."""

    kind: Literal["disk-space", "writable", "command"]
    """``disk-space``: ``min_mb`` free under ``path``; ``writable``: ``path`` is
    writable; ``command``: argv exits 0."""
    path: str = "."
    """Relative to the root (``.``: the root itself)."""
    min_mb: int = Field(default=0, ge=0)
    """For ``disk-space``: MiB that must be free (staging and backup space is
    checked apart)."""
    command: tuple[str, ...] = ()
    """For ``command``: argv, no shell, run in the root; exit 0 passes."""
    timeout: float = Field(default=60.0, gt=0)
    """Seconds the command may take."""
    description: str = ""
    """What the check means, shown in plan and in the refusal."""

    @field_validator("path")
    @classmethod
    def _path_ok(cls, v: str) -> str:
        return v if v == "." else check_relpath(v, what="check path")


HookWhen = Literal["pre", "post", "cluster-pre", "node", "cluster-post"]
"""``pre``/``post``: run by the apply with the services stopped. ``cluster-pre`` (once, on the
leader, before any host), ``node`` (on each host after its apply) and ``cluster-post`` (once,
after every host): run by a fleet rollout through ``bundle-install cluster hook``."""


class Hook(_Model):
    """A script from ``hooks/`` the deploy (or a fleet rollout) runs."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    when: HookWhen
    timeout: float = Field(default=300.0, gt=0)
    undo: str | None = None
    """Optional hook name run when the step is rolled back."""


class Job(_Model):
    """A post-upgrade background job (a script from ``hooks/``) run after the commit, retried
    ``retries`` times with exponential backoff; re-run by ``bundle-install jobs``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    retries: int = Field(default=3, ge=0, le=100)
    backoff: float = Field(default=5.0, ge=0, le=3600)
    """Seconds before the first retry; doubled for each further one."""
    timeout: float = Field(default=3600.0, gt=0)


class Cluster(_Model):
    """How a fleet rollout treats a cluster of managers (``bundle-build rollout``)."""

    leader: HealthCheck | None = None
    """Passes on the leader only (run on every host); no probe: the first host leads."""
    member_health: tuple[HealthCheck, ...] = ()
    """The cluster gate after each host's apply (e.g. "member rejoined"), retried as declared."""
    pin_leader: tuple[str, ...] = ()
    """Run on the leader before the rollout: no other member may take over (Rok's master
    candidates); ``unpin_leader`` undoes it after the rollout, also after a failure."""
    unpin_leader: tuple[str, ...] = ()
    """Run on the leader after the rollout, also after a failure: undoes
    ``pin_leader``."""


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
        from installer.manifestrules import MANIFEST_RULES  # they read this module's models

        for rule in MANIFEST_RULES:
            rule(self)
        return self

    @property
    def bundle_id(self) -> str:
        """Stable name for staging and backup directories."""
        return f"{self.product}-{self.from_version}-to-{self.to_version}"

    def members(self) -> dict[str, tuple[str, int]]:
        """Every archive member the manifest promises (besides manifest and signature),
        mapped to (sha256, size)."""
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
            sum(size for _, size in self.members().values())
            + built
            + sum(f.size for f in self.files if f.delta is not None)
        )

    def deltas(self) -> list[FileEntry]:
        """The entries whose bytes come as patches (format 2)."""
        return [f for f in self.files if f.delta is not None]
