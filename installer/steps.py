"""The journaled steps of an apply. Each has idempotent ``run`` and ``undo``; the
transaction (installer.transaction) records begin/done around them and undoes begun
steps in reverse on failure."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from installer import commands
from installer.errors import HealthCheckError, JumpkitError, StepError
from installer.failpoints import failpoint
from installer.format import Database, Manifest, Service
from installer.health import lookup_variables, wait_healthy
from installer.journal import Note
from installer.migrate import (
    Warm,
    backup,
    connect_ahead,
    current_revision,
    database_url,
    downgrade,
    preload,
    prepare,
    restore,
    settle,
    upgrade,
)
from installer.replay import Recording, replay
from installer.services import ServiceManager
from installer.state import StateDir
from installer.swap import Swapper
from installer.swapplan import EmptiedDir, Plan
from installer.units import socket_of


@dataclass
class Context:
    """What every step may use. Side effects go through ``services`` and the filesystem
    under ``root``; journal notes persist data a step's undo needs."""

    root: Path
    state: StateDir
    manifest: Manifest
    plan: Plan
    staging: Path
    backup: Path
    services: ServiceManager
    log: Callable[[str], None]
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    warm: dict[str, Warm | None] = field(default_factory=dict)
    """Per database, its migrations loaded before the outage (memory only: a resumed run
    loads them in the window)."""
    rehearsals: dict[str, Recording] = field(default_factory=dict)
    """Per SQLite database, its upgrade rehearsed on a copy before the outage, for the
    window to replay (:mod:`installer.replay`; memory only, used once)."""
    selinux: bool = True
    """Label what the installer places from the root's policy (False: ``--no-selinux``)."""
    units_changed: frozenset[str] = frozenset()
    """systemd units (and ``*.wants`` dirs) whose file or drop-in the transaction places or
    removes, over every jump of a chain (:func:`unit_changes`; set by the transaction)."""

    def note(self, step: str, data: dict[str, Any]) -> None:
        """Persist ``data`` for ``step`` in the journal before acting on it."""
        self.state.journal_append(Note(step, data))
        self.notes[step] = data

    def settle_databases(self) -> None:
        """Close the connections the migrations used (kept open through the window so
        their close did not lengthen it); idempotent."""
        for warm in self.warm.values():
            settle(warm)

    def variables(self, version: str) -> dict[str, str]:
        """Values for ``{name}`` in health checks: the lookups and ``version``."""
        return lookup_variables(self.manifest.lookups, self.root, version)


class Step(Protocol):
    """A unit of the apply transaction."""

    name: str
    outage: bool
    """Inside the outage window (from the stop to the health checks passing)."""
    services_down: bool
    """The services are stopped while it runs: clients wait on every write, so the
    transaction holds status.json writes and log lines until the start."""
    ends_window: bool
    """The services are up again once it ran (their connections to the migrated databases
    may then be closed)."""

    def run(self, ctx: Context) -> None:
        """Do the step; safe to call again after a crash inside it."""
        ...

    def undo(self, ctx: Context) -> None:
        """Reverse the step, whether it finished or not; safe to call again."""
        ...


def restarts_socket(s: Service, ctx: Context) -> bool:
    """Whether the jump restarts the service's socket too (refusing connections meanwhile):
    the socket unit changes, or comes or goes with the service."""
    return s.socket is not None and (s.added or s.removed or s.socket in ctx.units_changed)


class StopServices:
    """Hold, then stop the services that run now (reverse start order); a service the jump
    removes is also disabled, and a socket the jump changes stopped. Undo reloads the units
    (the swap back changed them), enables and starts everything again as it was."""

    name = "stop-services"
    outage = True
    services_down = False
    ends_window = False

    def run(self, ctx: Context) -> None:
        """See :class:`Step`."""
        svcs = ctx.manifest.services.services
        if self.name not in ctx.notes:
            ctx.note(
                self.name,
                {
                    "running": [s.name for s in svcs if ctx.services.is_running(s)],
                    "enabled": [s.name for s in svcs if s.removed and ctx.services.is_enabled(s)],
                    "sockets": [
                        sock.name
                        for s in svcs
                        if (sock := socket_of(s))
                        and restarts_socket(s, ctx)
                        and ctx.services.is_running(sock)
                    ],
                },
            )
        running = set(ctx.notes[self.name]["running"])
        for s in svcs:  # before the first stop, while every service still answers
            ctx.services.hold(s)
        for s in reversed(svcs):
            sock = socket_of(s)
            if s.name in running:
                ctx.log(f"stopping {s.name}")
                ctx.services.stop(s)
                # a start queued now would pull its socket in: with the old unit, at once,
                # and over the stop of a socket the jump changes (systemd cancels that stop)
                if not s.removed and not (sock and restarts_socket(s, ctx)):
                    ctx.services.prestart(s)
                failpoint(f"service:stopped:{s.name}")
            if sock and restarts_socket(s, ctx):
                ctx.log(f"stopping {sock.name}: it changes, connections are refused until it starts")
                ctx.services.stop(sock)
            if s.removed:
                for unit in (s, sock):
                    if unit is not None:
                        ctx.services.enable(unit, False)

    def undo(self, ctx: Context) -> None:
        """See :class:`Step`."""
        note = ctx.notes.get(self.name, {})
        running, enabled = set(note.get("running", [])), set(note.get("enabled", []))
        sockets = set(note.get("sockets", []))
        if ctx.units_changed:
            ctx.services.reload()
        for s in ctx.manifest.services.services:
            sock = socket_of(s)
            if s.name in enabled:
                for unit in (sock, s):
                    if unit is not None:
                        ctx.services.enable(unit, True)
            if sock and sock.name in sockets:
                ctx.services.start(sock)
            if s.name in running:
                ctx.log(f"starting {s.name} again")
                ctx.services.start(s)


class StartServices:
    """Start the services that were running before the stop and those the jump adds
    (start order), after a reload when units changed; added ones are enabled first."""

    name = "start-services"
    outage = True
    services_down = True
    ends_window = True

    def _names(self, ctx: Context) -> set[str]:
        svcs = ctx.manifest.services.services
        note = ctx.notes.get(StopServices.name)
        if note is None:
            return {s.name for s in svcs if not s.removed}
        return (set(note["running"]) | {s.name for s in svcs if s.added}) - {
            s.name for s in svcs if s.removed
        }

    def _sockets(self, ctx: Context) -> set[str]:
        """Sockets to start: those stopped because they change, and those of added services."""
        svcs = ctx.manifest.services.services
        was = set(ctx.notes.get(StopServices.name, {}).get("sockets", []))
        return {s.socket for s in svcs if s.socket and not s.removed and (s.added or s.socket in was)}

    def run(self, ctx: Context) -> None:
        """See :class:`Step`."""
        names, sockets = self._names(ctx), self._sockets(ctx)
        if ctx.units_changed:
            ctx.log("units changed: daemon-reload")
            ctx.services.reload()
        for s in ctx.manifest.services.services:
            sock = socket_of(s)
            if s.added:
                for unit in (sock, s):
                    if unit is not None:
                        ctx.services.enable(unit, True)
            if sock and sock.name in sockets:
                ctx.services.start(sock)
            if s.name in names:
                ctx.log(f"starting {s.name}")
                ctx.services.start(s)
                failpoint(f"service:started:{s.name}")

    def undo(self, ctx: Context) -> None:
        """See :class:`Step`."""
        names, sockets = self._names(ctx), self._sockets(ctx)
        svcs = ctx.manifest.services.services
        for s in svcs:
            if s.name in names:
                ctx.services.hold(s)
        for s in reversed(svcs):
            if s.name in names:
                ctx.services.stop(s)
            sock = socket_of(s)
            if sock and sock.name in sockets:
                ctx.services.stop(sock)
            if s.added:
                for unit in (s, sock):
                    if unit is not None:
                        ctx.services.enable(unit, False)


class Health:
    """Wait for every health check of the new version (RAUC's mark-good gate), then for the
    backend's own view: a service that exited or restarted since its start (systemd's
    ``Restart=always`` hides a crash from a check that polls) is not healthy."""

    name = "health"
    outage = True
    services_down = False
    ends_window = False

    def run(self, ctx: Context) -> None:
        """See :class:`Step`."""
        spec = ctx.manifest.services
        if not spec.health:
            return
        if not ctx.notes.get(StopServices.name, {}).get("running", True):
            ctx.log("no service was running before the apply; health checks skipped")
            return
        started = [s for s in spec.services if s.name in StartServices()._names(ctx)]
        try:
            took = wait_healthy(spec.health, ctx.variables(ctx.manifest.to_version), ctx.root)
        except HealthCheckError as e:
            seen = [w for s in started if (w := ctx.services.unhealthy(s))]
            if not seen:
                raise
            raise HealthCheckError(
                f"{e.message}; {'; '.join(seen)}", check=e.check, last_output=e.last_output
            ) from e
        if spec.settle:  # the checks pass: the outage is over, whatever the watch finds
            ctx.state.journal_append(Note(self.name, {"passed": round(time.time(), 6)}), durable=False)
            time.sleep(spec.settle)
        seen = [w for s in started if (w := ctx.services.unhealthy(s))]
        if seen:
            raise HealthCheckError(
                f"the checks passed, but {'; '.join(seen)}", check="backend", last_output=seen[0]
            )
        ctx.log(f"healthy after {took:.2f}s" + (f", stable for {spec.settle:g}s" if spec.settle else ""))

    def undo(self, ctx: Context) -> None:
        """See :class:`Step`."""


class SwapGroup:
    """Swap one plan group (files or configs) by rename."""

    outage = True
    services_down = True
    ends_window = False

    def __init__(self, group: str) -> None:
        self.group = group
        self.name = f"swap-{group}"

    def _swapper(self, ctx: Context) -> Swapper:
        return Swapper(ctx.root, ctx.staging / "files", ctx.backup / "files", label=self.group)

    def run(self, ctx: Context) -> None:
        """See :class:`Step`."""
        ops = ctx.plan.group(self.group)
        ctx.log(f"swapping {len(ops)} {self.group}")
        self._swapper(ctx).run(
            ops, ctx.plan.new_dirs, emptied=self._emptied(ctx), dir_attrs=ctx.plan.dir_attrs
        )

    def undo(self, ctx: Context) -> None:
        """See :class:`Step`."""
        self._swapper(ctx).undo(ctx.plan.group(self.group), ctx.plan.new_dirs, self._emptied(ctx))

    def _emptied(self, ctx: Context) -> list[EmptiedDir]:
        return ctx.plan.emptied_dirs if self.group == "files" else []  # removals are files


class Hooks:
    """Run the spec's hooks of one phase with the services stopped."""

    outage = True
    services_down = True
    ends_window = False

    def __init__(self, when: str) -> None:
        self.when = when
        self.name = f"hooks-{when}"

    def _exec(self, ctx: Context, name: str, timeout: float) -> None:
        script = ctx.staging / "bundle" / "hooks" / name
        env = {
            **os.environ,
            "JUMPKIT_ROOT": str(ctx.root),
            "JUMPKIT_FROM": ctx.manifest.from_version,
            "JUMPKIT_TO": ctx.manifest.to_version,
            "JUMPKIT_STAGING": str(ctx.staging),
        }
        ctx.log(f"hook {name}")
        try:
            p = commands.run([str(script)], cwd=ctx.root, env=env, timeout=timeout)
        except commands.NotRun as e:
            raise StepError(f"hook {name}: {e}", step=self.name) from e
        except (OSError, subprocess.TimeoutExpired) as e:
            raise StepError(f"hook {name} could not run: {e}", step=self.name) from e
        for line in p.output.splitlines()[-20:]:
            ctx.log(f"  {name}: {line}")
        if p.returncode != 0:
            raise StepError(f"hook {name} exited {p.returncode}", step=self.name)

    def run(self, ctx: Context) -> None:
        """See :class:`Step`."""
        for hook in ctx.manifest.hooks:
            if hook.when == self.when:
                self._exec(ctx, hook.name, hook.timeout)

    def undo(self, ctx: Context) -> None:
        """See :class:`Step`."""
        for hook in reversed(ctx.manifest.hooks):
            if hook.when == self.when and hook.undo:
                self._exec(ctx, hook.undo, hook.timeout)


def unchanged(db: Database) -> bool:
    """Whether the jump runs no revision on ``db`` (its schema is the same in both
    versions): nothing to load, rehearse or migrate. Its revision was checked by
    pre-flight; reading it again in the window cost ~2 ms (a connection and a query)."""
    return db.from_revision == db.to_revision


class BackupDatabases:
    """Back up every database before the outage (SQLite online backup, pg_dump)."""

    name = "backup-db"
    outage = False
    services_down = False
    ends_window = False

    def run(self, ctx: Context) -> None:
        """See :class:`Step`."""
        done: dict[str, dict[str, str]] = {}
        if ctx.manifest.databases:
            preload()
        for db in ctx.manifest.databases:
            url = database_url(db, ctx.root)
            info = backup(url, ctx.backup / "db" / db.name)
            ctx.log(
                f"database {db.name}: backup {info['kind']}"
                + (f" ({info['reason']})" if "reason" in info else "")
            )
            done[db.name] = info
        if done:
            ctx.note(self.name, done)
        for db in ctx.manifest.databases:  # the migrations, loaded now rather than in the window
            if unchanged(db):
                ctx.log(f"database {db.name}: stays at {db.to_revision}, no revision to run")
                continue
            warm = ctx.warm.get(db.name)  # loaded by the rehearsal (not after a crash)
            if warm is None:
                script = ctx.staging / "bundle" / db.script_dir
                warm = ctx.warm[db.name] = prepare(script, database_url(db, ctx.root))
            if db.from_revision is not None:  # it exists: its connection is opened now
                connect_ahead(warm)

    def undo(self, ctx: Context) -> None:
        """See :class:`Step`. (The backup goes with the backup dir.)"""


class Migrate:
    """Upgrade every database to the jump's revision, one transaction per migration; undo
    downgrades to the from-revision, or restores the backup if the downgrade fails."""

    name = "migrate"
    outage = True
    services_down = True
    ends_window = False

    def _script(self, ctx: Context, db: Database) -> Path:
        return ctx.staging / "bundle" / db.script_dir

    def run(self, ctx: Context) -> None:
        """See :class:`Step`."""
        for db in ctx.manifest.databases:
            if unchanged(db):
                continue  # pre-flight saw it at this revision; nothing moves it while stopped
            warm = ctx.warm.get(db.name)
            try:
                self._one(ctx, db, warm)
            except BaseException:
                settle(warm)  # the rollback's downgrade meets no connection of ours
                raise
            # on success its connection is closed once the services have started
            # (Context.settle_databases): 0.37 ms less in the window

    def _one(self, ctx: Context, db: Database, warm: Warm | None) -> None:
        def reached(rev: Any, is_upgrade: bool, db_name: str = db.name) -> None:
            # for the log only: undo and resume read the revision from the database itself,
            # so no fsync inside the outage window (a power loss may drop the note, not the state)
            ctx.state.journal_append(Note(self.name, {"db": db_name, "revision": rev}), durable=False)
            ctx.log(f"database {db_name}: at {rev}")
            failpoint("migrate:revision")

        recording = ctx.rehearsals.pop(db.name, None)
        if warm is not None and recording is not None:
            ctx.log(
                f"database {db.name}: {db.from_revision} -> {db.to_revision}"
                f" ({len(recording.revisions)} revision(s)), replaying its rehearsal"
            )
            diff = replay(warm.engine, recording, reached)
            if diff is None:
                return
            ctx.log(f"database {db.name}: not as rehearsed ({diff}); migrating it live")
        url = database_url(db, ctx.root)  # after a replay: its lookup costs 0.26 ms
        current = current_revision(url, missing_ok=True, warm=warm)
        if current == db.to_revision:
            return
        if current != db.from_revision and current not in db.revisions:
            why = f"database {db.name} is at {current}, expected {db.from_revision}"
            raise StepError(why, step=self.name)

        ctx.log(f"database {db.name}: {current} -> {db.to_revision} ({len(db.revisions)} revision(s))")
        upgrade(self._script(ctx, db), url, db.to_revision, reached, warm)

    def undo(self, ctx: Context) -> None:
        """See :class:`Step`."""
        backups = ctx.notes.get(BackupDatabases.name, {})
        ctx.settle_databases()
        for db in reversed(ctx.manifest.databases):
            url = database_url(db, ctx.root)
            if current_revision(url, missing_ok=db.from_revision is None) == db.from_revision:
                continue
            try:
                downgrade(self._script(ctx, db), url, db.from_revision)
                ctx.log(f"database {db.name}: downgraded to {db.from_revision}")
            except JumpkitError as e:
                ctx.log(f"database {db.name}: downgrade failed ({e.message}); restoring the backup")
                restore(url, backups.get(db.name, {"kind": "none", "reason": "no backup was taken"}))


def idle(step: Step, ctx: Context) -> bool:
    """Whether ``step`` has nothing to do for ``ctx``'s jump, known before it runs: a hooks
    step of a phase the jump has no hook for, a migrate step of a jump whose databases all
    stay at their revision. Its run and failpoints still come (they are empty); only its
    journal records ride with the next step's (see the transaction)."""
    if isinstance(step, Migrate):
        return all(unchanged(db) for db in ctx.manifest.databases)
    return isinstance(step, Hooks) and not any(h.when == step.when for h in ctx.manifest.hooks)


def per_jump_steps() -> list[Step]:
    """What each jump does while the services are down (a chain repeats them per jump)."""
    return [Hooks("pre"), SwapGroup("files"), Migrate(), SwapGroup("configs"), Hooks("post")]


def outage_frame() -> tuple[list[Step], list[Step]]:
    """The steps around the per-jump ones, once per transaction however long the chain:
    before (the database backups, the stop) and after (the start, the health checks)."""
    return [BackupDatabases(), StopServices()], [StartServices(), Health()]


def apply_steps() -> list[Step]:
    """The transaction of one jump, in order. Everything before it (verify, stage, plan,
    the rehearsal) is outside the outage window."""
    before, after = outage_frame()
    return [*before, *per_jump_steps(), *after]
