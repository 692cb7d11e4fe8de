"""Jump specs: ``specs/<product>/product.yaml`` and ``specs/<product>/jumps/<from>-<to>.yaml``,
validated into typed models. Every error names the file and the field."""

from __future__ import annotations

import datetime as dt
import graphlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from builder.errors import SpecError, UnknownJumpError
from builder.specfile import Located, Problem, refuse, validation_problems
from builder.specfile import load as load_located
from installer.errors import PolicyError, VersionError
from installer.format import Check, Cluster, HealthCheck, HookWhen, Lookup, RewriteRule, Service
from installer.graph import Graph, Policy, violations
from installer.paths import check_relpath
from installer.version import Version

M = TypeVar("M", bound=BaseModel)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


UnitName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.(service|socket|target|mount|timer|path|slice|scope)$"
    ),
]
"""A systemd unit name with its suffix (``network-online.target``, ``db.service``)."""


class SocketSpec(_Spec):
    """The ``.socket`` unit the builder renders beside a service's unit."""

    listen_stream: tuple[str, ...] = Field(min_length=1)
    """ListenStream= addresses (``127.0.0.1:8080``, ``/run/app.sock``); the service takes
    them as inherited descriptors (``LISTEN_FDS``, from fd 3)."""
    backlog: int | None = Field(default=None, ge=1, le=65535)
    """Backlog= (connections that wait while the service restarts; systemd's default: 4096)."""


class UnitSpec(_Spec):
    """A systemd unit the builder renders (templates/systemd/service.j2) when a jump adds
    a service; it ships as ``etc/systemd/system/<name>.service``."""

    exec_start: tuple[str, ...]
    """ExecStart argv of the unit."""
    description: str | None = None
    """Description= (default: the product and service name)."""
    type: Literal["simple", "exec", "notify", "forking", "oneshot"] = "simple"
    """Type=."""
    user: str | None = None
    """User= (default: root)."""
    working_directory: str | None = None
    """WorkingDirectory=."""
    environment: dict[str, str] = Field(default_factory=dict)
    """Environment= variables, by name."""
    after: tuple[UnitName, ...] = ("network.target",)
    """After= units."""
    requires: tuple[UnitName, ...] = ()
    """Requires= units."""
    wants: tuple[UnitName, ...] = ()
    """Wants= units."""
    restart: Literal["no", "on-failure", "always"] = "on-failure"
    """Restart=."""
    restart_sec: float | None = Field(default=None, ge=0)
    """RestartSec= in seconds (systemd's default: 0.1)."""
    exec_reload: tuple[str, ...] = ()
    """ExecReload= argv (``systemctl reload``), e.g. ``["/bin/kill", "-HUP", "$MAINPID"]``."""
    wanted_by: UnitName = "multi-user.target"
    """WantedBy= of the [Install] section."""
    socket: SocketSpec | None = None
    """Render ``<name>.socket`` too and restart the service behind it: the socket stays
    while the service is stopped, swapped and started, so no connection is refused."""

    @field_validator("exec_start", "exec_reload")
    @classmethod
    def _absolute(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if v and not v[0].startswith("/"):
            raise ValueError(f"the command must be an absolute path (systemd runs no shell): {v[0]!r}")
        return v


def start_order(services: tuple[Service, ...], where: str) -> tuple[Service, ...]:
    """Services sorted so each starts after its dependencies (stable: spec order otherwise).

    Raises:
        SpecError: a dependency names no service, or the dependencies form a cycle.
    """

    names = {s.name for s in services}
    for s in services:
        unknown = [d for d in s.depends_on if d not in names]
        if unknown:
            raise SpecError(f"{where}: service {s.name} depends on unknown {', '.join(unknown)}")
    ts: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for s in services:
        ts.add(s.name, *s.depends_on)
    try:
        ts.prepare()
    except graphlib.CycleError as e:
        raise SpecError(f"{where}: services depend on each other in a cycle: {' -> '.join(e.args[1])}") from e
    order: list[str] = []
    position = {s.name: i for i, s in enumerate(services)}
    while ts.is_active():
        ready = sorted(ts.get_ready(), key=position.__getitem__)
        order += ready
        ts.done(*ready)
    by_name = {s.name: s for s in services}
    return tuple(by_name[n] for n in order)


class ServicesSpec(_Spec):
    """How the product runs its services (per product; a jump may override)."""

    backend: Literal["supervisord", "systemd", "command", "none"] = "none"
    """What starts and stops the services: supervisord (XML-RPC), systemd
    (systemctl), command (argv per service) or none."""
    socket: str | None = None
    """supervisord: its unix socket, relative to the root."""
    services: tuple[Service, ...] = ()
    """The manager's services, started in order (and after ``depends_on``), stopped
    in reverse."""
    health: tuple[HealthCheck, ...] = ()
    """Checks that must pass after the start before the apply commits."""
    settle: float = Field(default=0.0, ge=0, le=600)
    """Seconds the started services must then keep running, as their backend sees them (no
    exit, no restart: systemd's ``NRestarts``), before the apply commits."""


class DatabaseSpec(_Spec):
    """A database of the product, migrated by alembic."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Names the database in plans, logs and the bundle (``migrations/<name>/``)."""
    script_dir: str
    """The alembic script dir inside each release dir (its ``versions/`` ship)."""
    url: Lookup
    """Where the installer finds the URL on the target (never put a password here)."""
    url_kind: Literal["url", "sqlite-path"] = "url"
    """``url``: the lookup gives a SQLAlchemy URL; ``sqlite-path``: a SQLite file
    path relative to the root."""

    @field_validator("script_dir")
    @classmethod
    def _rel(cls, v: str) -> str:
        return check_relpath(v)


class SandboxSpec(_Spec):
    """How ``bundle-build sandbox`` lays out a fresh install for demos and tests: the
    release's files and rendered configs, then ``init`` for what a fresh install creates
    at run time (its database, sample data). The init script runs with the Python that
    runs ``bundle-build`` (so it can import jumpkit), the sandbox root as its argument and
    ``JUMPKIT_ROOT``, ``JUMPKIT_VERSION`` and ``JUMPKIT_RELEASE`` (the release's directory)
    in its environment. The supported way to create a database at the release's schema
    head is the installer's own migration path: ``from installer.migrate import
    create_at_head`` then ``create_at_head(Path(os.environ["JUMPKIT_RELEASE"]) /
    "migrations/main", f"sqlite:///{root}/var/lib/app/app.db")`` (a PostgreSQL URL works
    too); insert sample rows after it (the demo's ``sandbox-init.py``). A non-zero exit
    fails the sandbox, which then removes what it made."""

    init: str | None = None
    """Script (relative to product.yaml) run after the release is laid out, with the
    sandbox root as its argument (see above)."""
    programs: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """supervisord program argv per service; ``{root}`` and ``{python}`` are expanded."""


class PackageSpec(_Spec):
    """RPM header fields of the product's bundle RPMs."""

    license: str = "Proprietary"
    """RPM License: (an SPDX identifier)."""
    url: str = ""
    """RPM URL:."""
    packager: str = ""
    """RPM Packager:."""
    group: str = "System Environment/Base"
    """RPM Group:."""


class ProductSpec(_Spec):
    """product.yaml"""

    product: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    """The product's name: its directory under specs/, bundle names and
    ``etc/jumpkit/product`` on the manager."""
    summary: str = ""
    """One line describing the product (RPM Summary:)."""
    version_file: str
    """File under the root whose first line is the installed version."""
    releases: str = "releases"
    """Directory (relative to product.yaml) holding one ``<version>/`` dir per release,
    each with ``root/`` (files as laid out on the target) and ``config/`` (jinja2 templates
    of config files, ``<target path>.j2``)."""
    variables: dict[str, Any] = Field(default_factory=dict)
    """Values for the config templates (``{{ port }}``); a jump's ``variables``
    override them."""
    lookups: dict[str, Lookup] = Field(default_factory=dict)
    """Values the installer reads on the target (INI key or environment), used in
    health checks as ``{name}``."""
    services: ServicesSpec = ServicesSpec()
    """How the product's services run; a jump's ``services`` replaces it for that
    jump."""
    checks: tuple[Check, ...] = ()
    """Pre-flight checks of every jump (a jump's own ``checks`` add to them)."""
    databases: tuple[DatabaseSpec, ...] = ()
    """Databases migrated by alembic during the apply (their revisions ship in the
    bundle)."""
    sandbox: SandboxSpec = SandboxSpec()
    """How ``bundle-build sandbox`` lays out a fresh install (demos and tests)."""
    package: PackageSpec = PackageSpec()
    """Header fields of the bundle RPMs."""
    policy: Policy = Policy()
    """Which jumps are allowed (MSR's rules by default; each switchable; exceptions with a reason)."""
    required_stops: tuple[str, ...] = ()
    """Versions every chain that crosses them must stop at (GitLab's required upgrade stops)."""
    cluster: Cluster | None = None
    """Leader probe, member health gate and leader pinning for ``bundle-build rollout``."""

    @field_validator("required_stops")
    @classmethod
    def _stops(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for s in v:
            version_value(s)
        return v

    @field_validator("version_file")
    @classmethod
    def _rel(cls, v: str) -> str:
        return check_relpath(v)


class ModeSpec(_Spec):
    """What a pattern's files (and new directories) get on the manager, like rpm's
    ``%attr``: a mode, an owner and group by name, and for one exact path the permission
    to carry setuid/setgid/sticky bits or file capabilities."""

    mode: str | None = None
    """Octal mode, e.g. ``0640`` (``4755`` with ``allow_setuid``). Placed as it is; without
    it a file keeps any read or write bit its manager's copy lacks narrowed away."""
    owner: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
    """User name on the manager (pre-flight refuses one its etc/passwd lacks); default:
    the replaced file's owner, else root."""
    group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
    """Group name on the manager (etc/group), likewise."""
    allow_setuid: bool = False
    """Required for setuid, setgid or sticky bits, for this exact path only."""
    allow_caps: bool = False
    """Required for file capabilities (the release file's ``security.capability``, as
    ``setcap`` left it), for this exact path only."""


class FilesSpec(_Spec):
    """Which parts of the release tree the jump carries."""

    include: tuple[str, ...] = ("**",)
    """fnmatch patterns on target paths; ``*`` also matches ``/``."""
    exclude: tuple[str, ...] = ()
    """fnmatch patterns of target paths left out on purpose (lint reports files no
    pattern names)."""
    modes: dict[str, str | ModeSpec] = Field(default_factory=dict)
    """pattern -> octal mode, overriding the mode the release tree has; or an exact path ->
    ``{mode: "4755", allow_setuid: true}`` for a setuid/setgid/sticky file."""
    remove: tuple[str, ...] = ()
    """Extra paths to delete that the diff of the two releases does not show."""

    @field_validator("modes")
    @classmethod
    def _modes(cls, v: dict[str, str | ModeSpec]) -> dict[str, str | ModeSpec]:
        for pat, spec in v.items():
            mode, allow = (spec, False) if isinstance(spec, str) else (spec.mode, spec.allow_setuid)
            if isinstance(spec, ModeSpec) and spec.allow_caps and any(c in pat for c in "*?["):
                raise ValueError(f"allow_caps is for one exact path, not the pattern {pat!r}")
            if mode is None:
                continue
            try:
                m = int(str(mode), 8)
            except ValueError as e:
                raise ValueError(f"mode for {pat!r} is not octal: {mode!r}") from e
            if m > 0o7777:
                raise ValueError(f"mode for {pat!r} is above 7777")
            if m & 0o7000 and not allow:
                raise ValueError(
                    f"mode for {pat!r} has setuid/setgid/sticky bits: write "
                    f"{{mode: {mode!r}, allow_setuid: true}} for that exact path"
                )
            if allow and any(c in pat for c in "*?["):
                raise ValueError(f"allow_setuid is for one exact path, not the pattern {pat!r}")
        return v


class ConfigSpec(_Spec):
    """A config file's policy in this jump."""

    path: str
    """The config file's target path (its template is ``config/<path>.j2`` in each
    release)."""
    policy: Literal["replace", "keep-local", "rewrite"] = "replace"
    """``replace``: the new default replaces an unedited file (an edited one is
    drift); ``keep-local``: the operator's file stays, the new default is written
    beside it as ``.jumpkit-new``; ``rewrite``: ``rules`` edit the operator's file
    in place."""
    rules: tuple[RewriteRule, ...] = ()
    """With ``policy: rewrite``: substitutions applied line by line (lint refuses
    rules under another policy). The release's own changes to the default (a new key, a
    header) are merged into the operator's file too."""
    required: bool = False
    """keep-local or rewrite: place the new default even where the operator deleted the
    file (otherwise a deleted config stays deleted, the new default written beside it)."""

    @field_validator("path")
    @classmethod
    def _rel(cls, v: str) -> str:
        return check_relpath(v)


class HookSpec(_Spec):
    """A deploy hook: a script from the jump dir run with the services stopped."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Names the hook in logs and in the bundle (``hooks/<name>``)."""
    when: HookWhen
    """When it runs (see ``HookWhen``): ``pre``/``post`` around the swap with
    services stopped; ``cluster-pre``, ``node``, ``cluster-post`` in a fleet
    rollout."""
    script: str
    """The script, relative to the jump file's directory; run with the root as
    working directory."""
    undo_script: str | None = None
    """Run on rollback after the hook ran (relative to the jump file's directory)."""
    timeout: float = 300.0
    """Seconds the script may take."""


class JobSpec(_Spec):
    """A post-upgrade background job: a script from the jump dir run after the commit,
    retried with exponential backoff (MSR's metadata store migration)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Names the job in logs, status and the bundle."""
    script: str
    """The script, relative to the jump file's directory."""
    retries: int = Field(default=3, ge=0, le=100)
    """Tries after the first failure."""
    backoff: float = Field(default=5.0, ge=0, le=3600)
    """Seconds before the first retry, doubling each time."""
    timeout: float = Field(default=3600.0, gt=0)
    """Seconds one try may take."""


class JumpSpec(_Spec):
    """jumps/<from>-<to>.yaml"""

    from_version: str = Field(alias="from")
    """The version this jump upgrades from (the file name's first half; quote x.y
    versions)."""
    to_version: str = Field(alias="to")
    """The version it reaches."""
    date: dt.date | None = None
    """Release date; fixes timestamps in the bundle unless SOURCE_DATE_EPOCH is set."""
    notes: str | None = Field(default=None, max_length=65536)
    """Release notes for operators, shown on the upgrade-path site (``bundle-build
    site``): plain text, paragraphs apart by a blank line, a line starting ``- `` an item."""
    files: FilesSpec = FilesSpec()
    """Which files of the release tree the jump carries."""
    configs: tuple[ConfigSpec, ...] = ()
    """Config files' policies (a config the jump changes with no entry here is
    replaced)."""
    variables: dict[str, Any] = Field(default_factory=dict)
    """Template values for this jump, over the product's."""
    checks: tuple[Check, ...] = ()
    """Pre-flight checks of this jump, after the product's."""
    hooks: tuple[HookSpec, ...] = ()
    """Scripts run during the apply or the rollout."""
    jobs: tuple[JobSpec, ...] = ()
    """Background jobs run after the commit, retried."""
    services: ServicesSpec | None = None
    """Replaces the product's services for this jump."""
    units: dict[str, UnitSpec] = Field(default_factory=dict)
    """Services this jump adds, by name: systemd units rendered into the payload."""
    revisions: dict[str, str] = Field(default_factory=dict)
    """Per database: the target revision (default: the to-release's head)."""
    components: tuple[str, ...] = ()
    """Component RPMs (paths relative to the jump file) installed after the apply has
    committed, by rpm, outside any running rpm transaction."""

    @field_validator("from_version", "to_version")
    @classmethod
    def _version(cls, v: str) -> str:
        return version_value(v)


def full_version(text: str) -> str | None:
    """``text`` as the MAJOR.MINOR.PATCH it most likely means (``2.1`` -> ``2.1.0``), or
    None when it is one already or looks like no version."""
    parts = text.strip().split(".")
    if 1 <= len(parts) <= 2 and all(p.isdigit() for p in parts):
        return ".".join([*(str(int(p)) for p in parts), *["0"] * (3 - len(parts))])
    return None


def version_value(v: str) -> str:
    """A spec's version value, checked (a field validator: its error gets file:line).

    Raises:
        ValueError: not MAJOR.MINOR.PATCH[-PRE] (with the full version it likely means).
    """
    try:
        Version.parse(v)
    except VersionError as e:
        near = full_version(v) if isinstance(v, str) else None
        raise ValueError(e.message + (f'; did you mean "{near}"?' if near else "")) from None
    return v


def parses(text: str) -> bool:
    """Whether ``text`` is a version."""
    try:
        Version.parse(text)
    except VersionError:
        return False
    return True


class Product:
    """A loaded product: its spec, its directory and its jumps."""

    def __init__(self, spec: ProductSpec, directory: Path) -> None:
        self.spec = spec
        self.dir = directory

    @property
    def name(self) -> str:
        """The product name."""
        return self.spec.product

    def release_dir(self, version: str) -> Path:
        """``releases/<version>``."""
        return self.dir / self.spec.releases / version

    def jump_files(self) -> dict[tuple[str, str], Path]:
        """Every defined jump, keyed by (from, to) as its file name says."""
        out: dict[tuple[str, str], Path] = {}
        for p in sorted((self.dir / "jumps").glob("*.yaml")):
            frm, sep, to = p.stem.partition("-")
            if sep:
                out[(frm, to)] = p
        return out

    def graph(self) -> Graph:
        """The jumps defined here, the required stops and the policy (what chains may use);
        a jump file whose name holds no versions is left out (lint names it), so the others
        still plan and build."""
        named = [j for j in self.jump_files() if parses(j[0]) and parses(j[1])]
        return Graph(
            jumps=tuple(sorted(named, key=lambda j: (Version.parse(j[0]), Version.parse(j[1])))),
            required_stops=self.spec.required_stops,
            policy=self.spec.policy,
        )

    def jump(self, frm: str, to: str) -> JumpSpec:
        """Load and validate one jump.

        Raises:
            UnknownJumpError: no such jump (the message lists the defined ones).
            SpecError: the jump file is invalid.
        """
        jumps = self.jump_files()
        path = jumps.get((frm, to))
        if path is None:
            defined = ", ".join(f"{a} -> {b}" for a, b in sorted(jumps)) or "none"
            raise UnknownJumpError(f"{self.name} has no jump {frm} -> {to}; defined: {defined}")
        broken = violations(self.spec.policy, frm, to)
        if broken:
            raise PolicyError(
                f"{self.name} jump {frm} -> {to} breaks the version policy: {'; '.join(broken)}. "
                f"If it must exist, list it under policy.exceptions in product.yaml with a reason"
            )
        spec = _validate(JumpSpec, path)
        if (spec.from_version, spec.to_version) != (frm, to):
            raise SpecError(
                f"{path}: from/to ({spec.from_version} -> {spec.to_version}) do not match the file name"
            )
        return spec


VERSION_KEYS = frozenset({"from", "to", "required_stops"})
_DOTTED = re.compile(r"\d+(?:\.\d+)+")


def version_numbers(doc: Located) -> list[Problem]:
    """Versions YAML reads as numbers (``to: 1.10`` is the float 1.1): one problem each,
    quoting the text as written."""
    out = []
    for loc, text in sorted(doc.raw.items(), key=lambda kv: doc.lines.get(kv[0], 0)):
        keys = [k for k in loc if isinstance(k, str)]
        if keys and keys[-1] in VERSION_KEYS and _DOTTED.fullmatch(text) and _is_number(doc.data, loc):
            read = _at(doc.data, loc)
            field = ".".join(map(str, loc))
            out.append(
                doc.problem(
                    loc,
                    f"{field}: {text} is a number to YAML (it reads {read!r}); a version is "
                    f'MAJOR.MINOR.PATCH, quoted: "{full_version(text) or text}"',
                )
            )
    return out


def _at(data: Any, loc: tuple[str | int, ...]) -> Any:
    for k in loc:
        data = data[k]
    return data


def _is_number(data: Any, loc: tuple[str | int, ...]) -> bool:
    try:
        v = _at(data, loc)
    except (KeyError, IndexError, TypeError):
        return False
    return isinstance(v, int | float) and not isinstance(v, bool)


def load_spec(model: type[M], path: Path) -> tuple[M | None, Located | None, list[Problem]]:
    """Parse and validate ``path``: the model (None when invalid), the located document,
    and every problem with its line."""
    try:
        doc = load_located(path)
    except FileNotFoundError:
        return None, None, [Problem(path, None, "no such file")]
    except OSError as e:
        return None, None, [Problem(path, None, f"cannot read it ({e.strerror})")]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        what = getattr(e, "problem", None) or str(e)
        return None, None, [Problem(path, mark.line + 1 if mark else None, f"not valid YAML: {what}")]
    if numbers := version_numbers(doc):  # validating them would only add type errors
        return None, doc, [*doc.duplicates, *numbers]
    try:
        spec = model.model_validate(doc.data if doc.data is not None else {}, strict=False)
    except ValidationError as e:
        return None, doc, [*doc.duplicates, *validation_problems(doc, model, e)]
    return (None if doc.duplicates else spec), doc, list(doc.duplicates)


def _validate(model: type[M], path: Path) -> M:
    spec, _, problems = load_spec(model, path)
    refuse(problems)
    assert spec is not None
    return spec


def load_product(specs_dir: Path, product: str | None) -> Product:
    """Load ``specs/<product>/product.yaml``; with no product named, the only one there.

    Raises:
        SpecError: missing or invalid, or several products and none named.
    """
    named = product is not None and (specs_dir / product / "product.yaml").is_file()
    if (specs_dir / "product.yaml").is_file() and not named:
        # --specs named a product's own directory: read it as the specs dir holding that one
        specs_dir, here = specs_dir.resolve().parent, specs_dir.resolve().name
        if product not in (None, here):
            raise SpecError(f"--specs {specs_dir / here} is product {here}'s directory, not {product}'s")
        product = here
    if product is None:
        found = sorted(p.parent.name for p in specs_dir.glob("*/product.yaml"))
        if not found:
            raise SpecError(
                f"{specs_dir} holds no product (no */product.yaml): --specs names the directory "
                "that holds one directory per product (specs/, with specs/<product>/product.yaml)"
            )
        if len(found) != 1:
            raise SpecError(f"{specs_dir} holds {len(found)} products ({', '.join(found)}); pass --product")
        product = found[0]
    path = specs_dir / product / "product.yaml"
    if not path.is_file() and not path.parent.is_dir():
        found = sorted(p.parent.name for p in specs_dir.glob("*/product.yaml"))
        raise SpecError(
            f"no product {product!r} in {specs_dir}"
            + (f": it holds {', '.join(found)}" if found else " (it holds no */product.yaml)")
        )
    spec = _validate(ProductSpec, path)
    if spec.product != product:
        raise SpecError(f"{path}: product: {spec.product!r} does not match its directory {product!r}")
    return Product(spec, path.parent)
