"""The journaled transaction over one jump or a chain: run the steps in order, roll back
what began on any failure or stop signal, and record the commit. Only this module writes
the journal's step records; what the journal says is read through
:class:`installer.journal.JournalView`.

Outcomes (the CLI's exit codes):

- every step done, commit recorded, status ``finished`` (0);
- a step failed, or SIGINT/SIGTERM/SIGHUP arrived before the commit record: every begun
  step undone in reverse, status ``rolled-back``, :class:`ApplyError` (5) whose message
  names the step and the reason or the signal;
- an undo failed: status ``failed``, :class:`RollbackError` (6), the journal left for
  ``bundle-install rollback``.

A signal after the commit record is logged and the commit finished.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from installer import interrupts, sbom, selfupdate
from installer.decide import NO_APPLY, Action, decide
from installer.errors import ApplyError, JumpkitError, RollbackError, StateError
from installer.failpoints import failpoint
from installer.format import INSTALLER_MEMBER, MANIFEST_NAME, Manifest
from installer.health import wait_healthy
from installer.journal import (
    Begin,
    Commit,
    Done,
    Event,
    JournalView,
    Note,
    RollbackFailed,
    RollbackStart,
    RolledBack,
    Start,
    TxnState,
    UndoBegin,
    UndoDone,
)
from installer.metadata import Labels, label_in_place
from installer.stage import load_staged
from installer.state import StateDir, StatusDoc
from installer.steps import Context, Health, StopServices, idle
from installer.swap import backup_skeleton, sync_threads
from installer.swapplan import Plan
from installer.txunits import Unit, chain_id, transaction_units
from installer.units import unit_changes

Log = Callable[[str], None]
Contexts = Callable[[StateDir, list[Manifest], list[Plan], dict[str, dict[str, Any]]], list[Context]]
"""Makes one step context per jump (the engine's: it owns the service managers)."""


@dataclass
class Recorder:
    """The status document of the run under way: log lines go into it and reach disk at
    the next step boundary (two fsyncs per log line would lengthen the outage)."""

    state: StateDir
    doc: StatusDoc
    echo: Log = field(default=lambda _: None)
    """Where the caller sees log lines (the engine's printer)."""
    held: list[str] | None = None
    """Lines not echoed yet: between the stop and the start a blocked terminal or a full
    pipe must not lengthen the outage (:meth:`hold`)."""

    def hold(self) -> None:
        """Keep log lines from the caller until :meth:`release`."""
        if self.held is None:
            self.held = []

    def release(self) -> None:
        """Echo the held lines, in order, and stop holding."""
        lines, self.held = self.held or [], None
        for text in lines:
            self.echo(text)

    def say(self, text: str) -> None:
        """Log a line: into the status document, and to the caller now or on release."""
        self.line(text)
        if self.held is not None:
            self.held.append(text)
        else:
            self.echo(text)

    def line(self, text: str) -> None:
        """Append a time-stamped log line (written with the next :meth:`set`)."""
        self.doc.log.append(f"{time.strftime('%H:%M:%S')} {text}")

    def set(self, *, durable: bool = True, **kw: Any) -> None:
        """Update fields and write status.json (durably unless told: see ``write_status``)."""
        for k, v in kw.items():
            setattr(self.doc, k, v)
        self.state.write_status(self.doc, durable=durable)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while the steps run (their rollback included): after
    staging a 25k-file jump the heap is large, and one full collection took 82-87 ms
    (measured), longer than the whole outage of a restart, whenever the allocation count
    happened to trigger it inside the window. The steps allocate little; reference
    counting still frees what they drop, and the collector runs again after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def describe(e: BaseException) -> str:
    """One line for a failure: jumpkit's message, or a foreign error's type and text."""
    if isinstance(e, JumpkitError):
        return e.message
    if isinstance(e, OSError):
        return str(e)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class Transaction:
    """One transaction: its contexts (one per jump), units (journaled steps), the status
    it records, and the log."""

    def __init__(self, ctxs: list[Context], rec: Recorder, log: Log) -> None:
        self.ctxs = ctxs
        self.units: list[Unit] = transaction_units(ctxs)
        changed = frozenset().union(*(unit_changes(op.path for op in c.plan.ops) for c in ctxs))
        for c in ctxs:  # the stop is the first jump's step, the start the last's
            c.units_changed = changed
        self.rec = rec
        self.log = log
        self.state = ctxs[0].state
        self.head, self.tail = ctxs[0].manifest, ctxs[-1].manifest
        self.bundle = chain_id([c.manifest for c in ctxs])

    @classmethod
    def begin(
        cls, state: StateDir, manifests: list[Manifest], plans: list[Plan], contexts: Contexts, log: Log
    ) -> Transaction:
        """A new transaction over planned, staged jumps: the last one's backup dropped, an
        empty backup dir per jump, a fresh journal, a ``working`` status to record."""
        for old in state.backup.iterdir():
            state.remove_tree(old)
        for m, plan in zip(manifests, plans, strict=True):
            state.backup_dir(m.bundle_id).mkdir(parents=True)
            backup_skeleton(state.backup_dir(m.bundle_id) / "files", plan.ops)
        state.journal_reset()
        state.keep_last_run([state.staging_dir(m.bundle_id) / MANIFEST_NAME for m in manifests])
        head, tail = manifests[0], manifests[-1]
        chain = f" (chain of {len(manifests)} jumps)" if len(manifests) > 1 else ""
        doc = StatusDoc(
            status="working",
            summary=f"applying {head.from_version} -> {tail.to_version}{chain}",
            bundle_id=chain_id(manifests),
            from_version=head.from_version,
            to_version=tail.to_version,
            started=time.time(),
        )
        return cls(contexts(state, manifests, plans, {}), Recorder(state, doc), log)

    @classmethod
    def load(cls, state: StateDir, want: Sequence[TxnState], contexts: Contexts, log: Log) -> Transaction:
        """The journaled transaction, if its state is one of ``want``.

        Raises:
            StateError: no transaction, or one in another state.
        """
        view = state.view()
        if view.state == "none":
            raise StateError(NO_APPLY)
        if view.state not in want:
            action: Action = "rollback" if view.state == "rolled-back" else "resume"
            raise StateError(
                decide(action, view.state, "finished").message or f"the last apply is {view.state}"
            )
        manifests = [load_staged(state, i)[0] for i in view.bundles]
        plans = [Plan.load(state.staging_dir(i)) for i in view.bundles]
        return cls(
            contexts(state, manifests, plans, dict(view.notes)), Recorder(state, state.read_status()), log
        )

    # --- start -------------------------------------------------------------------------
    def start(self) -> StatusDoc:
        """Record the start, then run every step and commit.

        Raises:
            ApplyError, RollbackError: see the module's docstring.
        """
        start = Start(
            bundle=self.head.bundle_id,
            steps=tuple(u.name for u in self.units),
            chain=tuple(c.manifest.bundle_id for c in self.ctxs) if len(self.ctxs) > 1 else (),
        )
        with interrupts.deferred():
            self.state.journal_append(start)
            self.rec.set()
            return self.run(0)

    def view(self) -> JournalView:
        """The journal as it stands."""
        return self.state.view()

    # --- run ---------------------------------------------------------------------------
    def run(self, first: int) -> StatusDoc:
        """Run the units from index ``first``, then commit, with Python's cyclic garbage
        collector paused (:func:`collector_paused`).

        Raises:
            ApplyError, RollbackError: see the module's docstring.
        """
        sync_threads()  # started before the window, where starting 8 threads costs ~0.6 ms
        try:
            with collector_paused():
                return self._run(first)
        finally:
            self.rec.release()

    def _run(self, first: int) -> StatusDoc:
        """Run the units from index ``first``, then commit. Signals are taken at the
        boundaries and inside a step's run (:func:`interrupts.interruptible`).

        Raises:
            ApplyError, RollbackError: see the module's docstring.
        """
        # A step's Done record is written with the next record (the next Begin, or the
        # Commit), in one write and one fsync: a crash before it reads as a crash at the
        # step's end (the crash matrix's done: points), which resume and rollback handle;
        # the step-boundary status.json write is not fsynced (the journal is what recovery
        # reads). Per step of the outage window that is one fsync instead of four. A step
        # with nothing to do (:func:`steps.idle`: no hook of its phase) writes no record of
        # its own: its begin and done ride with the next step's begin, two fsyncs fewer in
        # the window (0.15 ms each); a crash inside it reads as one at the previous step's
        # end, the same state on disk.
        done: list[Event] = []  # records held for the next write: a done, an idle step's begin
        with interrupts.deferred():
            for unit in self.units[first:]:
                self._stop_if_signalled(unit.name, done)
                with self._failing(unit, done):
                    failpoint(f"begin:{unit.name}")
                if idle(unit.step, unit.ctx):
                    done.append(Begin(unit.name, ts=round(time.time(), 6)))  # with the next begin
                else:  # a journal that cannot be written (a full disk) propagates: no step failed
                    self.state.journal_append(*done, Begin(unit.name))
                    done.clear()
                if unit.step.services_down:
                    # between the stop and the start, where a client waits through every
                    # 0.2 ms: no status.json write (status reads the step from the journal
                    # meanwhile) and log lines are echoed once the services start
                    self.rec.hold()
                else:
                    self.rec.release()
                    self.rec.set(step=unit.name, durable=False)
                with self._failing(unit, done):
                    with interrupts.interruptible():
                        failpoint(f"run:{unit.name}")
                        unit.step.run(unit.ctx)
                    if unit.step.ends_window:  # the window is over for the clients
                        for c in self.ctxs:
                            c.settle_databases()
                    failpoint(f"done:{unit.name}")  # =fail: the step ran; undone with the rest
                done.append(Done(unit.name, ts=round(time.time(), 6)))
            try:
                failpoint("commit")
            except BaseException:
                self._flush(done)
                raise
            self._stop_if_signalled("commit", done)  # the last moment a signal rolls back
            self.state.journal_append(*done, Commit())
            interrupts.hold()  # committed: no signal makes this run report failure any more
            failpoint("committed")
            late = interrupts.take()
            if late is not None:
                self.log(f"{late} received after the commit; finishing it")
            return self.finish()

    @contextlib.contextmanager
    def _failing(self, unit: Unit, done: list[Event]) -> Iterator[None]:
        """The one place a step's failure leaves the run: the held records are written,
        then a stop signal or an error rolls the transaction back (ApplyError, naming the
        step), and anything else (SystemExit, a KeyboardInterrupt) propagates."""
        try:
            yield
        except interrupts.Interrupted as e:
            self._flush(done)
            self._fail(unit.name, f"interrupted by {e.signame} during {unit.name}", e)
        except Exception as e:  # a library's own error too: whatever fails, roll back
            self._flush(done)
            self._fail(unit.name, f"{unit.name} failed: {describe(e)}", e)
        except BaseException:
            self._flush(done)
            raise

    def _flush(self, done: list[Event]) -> None:
        """Write a held Done record before a rollback reads the journal."""
        if done:
            self.state.journal_append(*done)
            done.clear()

    def _stop_if_signalled(self, where: str, done: list[Event] | None = None) -> None:
        signame = interrupts.take()
        if signame is not None:
            self._flush(done or [])
            self._fail(where, f"interrupted by {signame} before {where}", None)

    def _fail(self, step: str, reason: str, cause: BaseException | None) -> NoReturn:
        self.rec.release()
        self.log(reason)
        interrupts.take()  # one report: the reason names the first signal
        self.rollback(reason)
        raise ApplyError(f"{reason}; rolled back to {self.head.from_version}", step=step) from cause

    # --- finish ------------------------------------------------------------------------
    def finish(self) -> StatusDoc:
        """Record a committed apply in status and history (also after a crash right after
        the commit record); the bundle's installer becomes the manager's."""
        interrupts.hold()
        with interrupts.deferred():
            view = self.view()
            outage = view.outage(StopServices.name, Health.name)
            phases = view.phases(StopServices.name, Health.name)
            summary = f"upgraded {self.head.from_version} -> {self.tail.to_version}"
            if len(self.ctxs) > 1:
                summary += f" ({len(self.ctxs)} jumps, one outage)"
            if outage is not None:
                summary += f"; outage {outage:.2f}s"
            self.log(summary)
            info = self.tail.installer
            tail = self.ctxs[-1]
            if info is not None:  # the bundle's installer becomes the manager's (selfupdate.py)
                self.state.journal_append(Note("installer", {"sha256": info.sha256}))
                tail.notes["installer"] = {"sha256": info.sha256}
                staged = tail.staging / "bundle" / INSTALLER_MEMBER
                if selfupdate.install(tail.root, staged, info):
                    self.log(f"bundle-install {info.version} is now the manager's installer")
                    with contextlib.suppress(JumpkitError):  # labels are the kernel's default then
                        where = selfupdate.installed_path(tail.root).parent.relative_to(tail.root)
                        label_in_place(
                            tail.root, where.as_posix(), Labels.load(tail.root, selinux=tail.selinux)
                        )
            self._keep_sbom()
            self.rec.set(
                status="finished",
                step=None,
                summary=summary,
                finished=time.time(),
                outage_seconds=outage,
                outage_phases=phases,
            )
            self.state.append_history(  # plan estimates the next outage from these phases
                {
                    "result": "finished",
                    "bundle": self.bundle,
                    "outage_seconds": outage,
                    "outage_phases": phases,
                }
            )
            self._end_holds()
            return self.rec.doc

    def _keep_sbom(self) -> None:
        """The to-release's SBOM becomes the installed one (kept in the state dir for
        ``report``), or none when it came without one; noted first, so a rollback of this
        apply puts the previous one back."""
        m, tail = self.tail, self.ctxs[-1]
        sha = next((x.sha256 for x in m.extras if x.name == m.sbom), None)
        if sha is None and sbom.installed(self.state.path) is None:
            return
        self.state.journal_append(Note("sbom", {"sha256": sha}))
        tail.notes["sbom"] = {"sha256": sha}
        staged = tail.staging / "bundle" / m.sbom if m.sbom is not None else None
        try:
            sbom.install(self.state.path, staged, sha)
        except OSError as e:  # the upgrade is committed; the report then lacks the SBOM
            self.log(f"could not keep the SBOM {m.sbom}: {e}")

    def _restore_kept(self, notes: dict[str, dict[str, Any]]) -> None:
        """What a committed apply kept beside the tree goes back: the installer, the SBOM."""
        info = self.tail.installer
        if info is not None and "installer" in notes and selfupdate.restore(self.ctxs[0].root, info):
            self.log("put the manager's previous installer back")
        kept = notes.get("sbom")
        if kept is not None and isinstance(kept.get("sha256"), (str, type(None))):
            with contextlib.suppress(OSError):
                sbom.restore(self.state.path, kept["sha256"])

    def _end_holds(self) -> None:
        """The services stay as the transaction left them: end the holds of those it did
        not start (a removed one, an added one rolled back, one stopped before)."""
        for c in self.ctxs:
            try:
                c.services.finish()
            except JumpkitError as e:
                self.log(f"could not end a hold on the services: {e.message}")

    # --- rollback ----------------------------------------------------------------------
    def rollback(self, reason: str) -> None:
        """Undo every begun step in reverse, start and health-check the old version, then
        drop the staging (a rolled-back bundle is applied again only when named again).
        Signals are deferred until it ends.

        Raises:
            RollbackError: an undo failed, or the old version is not healthy.
        """
        with interrupts.deferred():
            self._rollback(reason)
        late = interrupts.take()
        if late is not None:
            self.log(f"{late} received during the rollback; it finished first")

    def _rollback(self, reason: str) -> None:
        view = self.view()
        if view.state != "rolling-back":
            self.state.journal_append(RollbackStart(reason))
            view = self.view()
        # the notes as journaled: a signal may have landed between a note's record and
        # the step's own copy of it
        notes = self.ctxs[0].notes
        notes.clear()
        notes.update(view.notes)
        self.rec.set(status="working", summary=f"rolling back: {reason}")
        by_name = {u.name: u for u in self.units}
        restarted = False
        for name in view.to_undo():
            unit = by_name[name]
            failpoint(f"undo:{name}")
            self.log(f"undo {name}")
            self.state.journal_append(UndoBegin(name))
            self.rec.set(step=f"undo {name}")
            try:
                unit.step.undo(unit.ctx)
            except Exception as e:  # the journal stays for 'bundle-install rollback'
                msg = (
                    f"rollback failed in {name}: {describe(e)}; "
                    f"the manager is between {self.head.from_version} and {self.tail.to_version}: "
                    "fix the cause, then 'bundle-install rollback'"
                )
                self.state.journal_append(RollbackFailed(name, describe(e)))
                self.rec.set(status="failed", summary=msg)
                self.state.append_history({"result": "failed", "bundle": self.bundle, "error": msg})
                raise RollbackError(msg) from e
            failpoint(f"after-undo:{name}")
            self.state.journal_append(UndoDone(name))
            restarted = restarted or name == StopServices.name
        head = self.ctxs[0]
        if restarted and self.head.services.health and notes.get(StopServices.name, {}).get("running"):
            try:
                wait_healthy(self.head.services.health, head.variables(self.head.from_version), head.root)
            except JumpkitError as e:
                msg = f"rolled back files, but {self.head.from_version} is not healthy: {e.message}"
                self.rec.set(status="failed", summary=msg)
                raise RollbackError(msg) from e
        self._restore_kept(notes)
        self.state.journal_append(RolledBack())
        interrupts.hold()  # rolled back: the outcome is decided, no signal changes what it reports
        self.rec.set(
            status="rolled-back",
            step=None,
            finished=time.time(),
            outage_seconds=None,
            summary=f"rolled back to {self.head.from_version}: {reason}",
        )
        self.state.append_history({"result": "rolled-back", "bundle": self.bundle, "reason": reason})
        self._end_holds()
        for c in self.ctxs:  # after the record: a crash before this leaves only a stale staging
            self.state.remove_tree(c.staging)

    # --- resume ------------------------------------------------------------------------
    def resume(self) -> StatusDoc:
        """Continue an interrupted apply to its end, or an interrupted rollback to its end.

        Raises:
            StateError: nothing is unfinished. ApplyError, RollbackError as for apply.
        """
        view = self.view()
        if view.state == "rolling-back":
            reason = view.rollback_reason or "after an interrupted apply"
            self.rollback(reason)
            raise ApplyError(f"resumed the interrupted rollback to {self.head.from_version}: {reason}")
        if view.state == "committed":
            if self.rec.doc.status == "finished":
                raise StateError("nothing to resume: the last apply finished")
            return self.finish()  # the crash came after the commit record
        if view.state != "applying":
            raise StateError(f"nothing to resume: the last apply is {view.state}")
        first = view.first_not_done()
        self.rec.set(
            status="working",
            summary=f"resuming at {self.units[first].name if first < len(self.units) else 'commit'}",
        )
        self.log(f"resuming after a crash at step {first + 1}/{len(self.units)}")
        return self.run(first)
