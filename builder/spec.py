"""Jump specs: ``specs/<product>/product.yaml`` and ``specs/<product>/jumps/<from>-<to>.yaml``,
validated into typed models. Every error names the file and the field."""

from __future__ import annotations

import datetime as dt
import graphlib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from builder.errors import SpecError, UnknownJumpError
from installer.format import Check, Cluster, HealthCheck, HookWhen, Lookup, RewriteRule, Service
from installer.graph import Graph, Policy, PolicyError, violations
from installer.paths import check_relpath
from installer.version import Version

M = TypeVar("M", bound=BaseModel)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UnitSpec(_Spec):
    """A systemd unit the builder renders (templates/systemd/service.j2) when a jump adds
    a service; it ships as ``etc/systemd/system/<name>.service``."""

    exec_start: tuple[str, ...]
    description: str | None = None
    type: Literal["simple", "exec", "notify", "forking", "oneshot"] = "simple"
    user: str | None = None
    working_directory: str | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    after: tuple[str, ...] = ("network.target",)
    requires: tuple[str, ...] = ()
    restart: Literal["no", "on-failure", "always"] = "on-failure"
    wanted_by: str = "multi-user.target"


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
    socket: str | None = None
    services: tuple[Service, ...] = ()
    health: tuple[HealthCheck, ...] = ()


class DatabaseSpec(_Spec):
    """A database of the product, migrated by alembic."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    script_dir: str
    """The alembic script dir inside each release dir (its ``versions/`` ship)."""
    url: Lookup
    """Where the installer finds the URL on the target (never put a password here)."""
    url_kind: Literal["url", "sqlite-path"] = "url"

    @field_validator("script_dir")
    @classmethod
    def _rel(cls, v: str) -> str:
        return check_relpath(v)


class SandboxSpec(_Spec):
    """How ``bundle-build sandbox`` lays out a fresh install for demos and tests."""

    init: str | None = None
    """Script (relative to product.yaml) run with the sandbox root as its argument."""
    programs: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """supervisord program argv per service; ``{root}`` and ``{python}`` are expanded."""


class PackageSpec(_Spec):
    """RPM header fields of the product's bundle RPMs."""

    license: str = "Proprietary"
    url: str = ""
    packager: str = ""
    group: str = "System Environment/Base"


class ProductSpec(_Spec):
    """product.yaml"""

    product: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    summary: str = ""
    version_file: str
    releases: str = "releases"
    """Directory (relative to product.yaml) holding one ``<version>/`` dir per release,
    each with ``root/`` (files as laid out on the target) and ``config/`` (jinja2 templates
    of config files, ``<target path>.j2``)."""
    variables: dict[str, Any] = Field(default_factory=dict)
    lookups: dict[str, Lookup] = Field(default_factory=dict)
    services: ServicesSpec = ServicesSpec()
    checks: tuple[Check, ...] = ()
    databases: tuple[DatabaseSpec, ...] = ()
    sandbox: SandboxSpec = SandboxSpec()
    package: PackageSpec = PackageSpec()
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
            Version.parse(s)
        return v

    @field_validator("version_file")
    @classmethod
    def _rel(cls, v: str) -> str:
        return check_relpath(v)


class ModeSpec(_Spec):
    """A mode with setuid, setgid or sticky bits, allowed explicitly for one path."""

    mode: str
    allow_setuid: bool = False


class FilesSpec(_Spec):
    """Which parts of the release tree the jump carries."""

    include: tuple[str, ...] = ("**",)
    """fnmatch patterns on target paths; ``*`` also matches ``/``."""
    exclude: tuple[str, ...] = ()
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
    policy: Literal["replace", "keep-local", "rewrite"] = "replace"
    rules: tuple[RewriteRule, ...] = ()

    @field_validator("path")
    @classmethod
    def _rel(cls, v: str) -> str:
        return check_relpath(v)


class HookSpec(_Spec):
    """A deploy hook: a script from the jump dir run with the services stopped."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    when: HookWhen
    script: str
    undo_script: str | None = None
    timeout: float = 300.0


class JobSpec(_Spec):
    """A post-upgrade background job: a script from the jump dir run after the commit,
    retried with exponential backoff (MSR's metadata store migration)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    script: str
    retries: int = Field(default=3, ge=0, le=100)
    backoff: float = Field(default=5.0, ge=0, le=3600)
    timeout: float = Field(default=3600.0, gt=0)


class JumpSpec(_Spec):
    """jumps/<from>-<to>.yaml"""

    from_version: str = Field(alias="from")
    to_version: str = Field(alias="to")
    date: dt.date | None = None
    """Release date; fixes timestamps in the bundle unless SOURCE_DATE_EPOCH is set."""
    files: FilesSpec = FilesSpec()
    configs: tuple[ConfigSpec, ...] = ()
    variables: dict[str, Any] = Field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    hooks: tuple[HookSpec, ...] = ()
    jobs: tuple[JobSpec, ...] = ()
    services: ServicesSpec | None = None
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
        Version.parse(v)
        return v


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
        """The jumps defined here, the required stops and the policy (what chains may use)."""
        return Graph(
            jumps=tuple(sorted(self.jump_files(), key=lambda j: (Version.parse(j[0]), Version.parse(j[1])))),
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


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise SpecError(f"{path}: no such file") from e
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e


def _validate(model: type[M], path: Path) -> M:
    data = _load_yaml(path)
    try:
        return model.model_validate(data if data is not None else {}, strict=False)
    except ValidationError as e:
        problems = [
            f"{path}: {'.'.join(str(x) for x in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()
        ]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SpecError(problems[0] + more, problems=problems) from e


def load_product(specs_dir: Path, product: str | None) -> Product:
    """Load ``specs/<product>/product.yaml``; with no product named, the only one there.

    Raises:
        SpecError: missing or invalid, or several products and none named.
    """
    if product is None:
        found = sorted(p.parent.name for p in specs_dir.glob("*/product.yaml"))
        if len(found) != 1:
            raise SpecError(f"{specs_dir} holds {len(found)} products ({', '.join(found)}); pass --product")
        product = found[0]
    path = specs_dir / product / "product.yaml"
    spec = _validate(ProductSpec, path)
    if spec.product != product:
        raise SpecError(f"{path}: product: {spec.product!r} does not match its directory {product!r}")
    return Product(spec, path.parent)
