"""The manifest's account of running the manager: lookups of values on the target, health
checks, services and their order, pre-flight checks, hooks, post-upgrade jobs and a
cluster's rollout rules. Part of the bundle format (:mod:`installer.format` re-exports
every model here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from installer.modelbase import _Model
from installer.paths import check_relpath


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


RESTART_CAP = 2.0
"""Seconds a stop or start counts at most in an outage bound made before any apply was
measured (the timeouts are what a service may take, not what it usually takes)."""
RENAME_SECONDS = 0.00002
"""What one rename of the swap adds to an outage estimate (~20 us)."""


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

    def restart_bound(self, after: Services) -> float:
        """Seconds the stop of these services and the start of ``after``'s take at most,
        each at its timeout capped at :data:`RESTART_CAP`."""
        return sum(min(s.stop_timeout, RESTART_CAP) for s in self.services) + sum(
            min(s.start_timeout, RESTART_CAP) for s in after.services
        )

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
