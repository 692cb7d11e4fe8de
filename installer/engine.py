"""The installer's library API, a facade: verify -> pre-flight -> stage -> plan, then the
journaled transaction (:mod:`installer.transaction`), the work after its commit
(:mod:`installer.aftercommit`) and the dry run (:mod:`installer.dryrun`).

A refused run creates nothing: pre-flight reads only, and when the state dir does not
exist yet it runs before the state dir (and its lock) is made; a refusal after that
removes what this run made."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from installer import cluster, dryrun, failpoints, interrupts, preflight, rpmbundle
from installer.aftercommit import AfterCommit
from installer.archive import Bundle, Opened, opened_bundles, verify_members
from installer.components import DEFAULT_WAIT
from installer.decide import decide
from installer.errors import (
    BundleRejectedError,
    ClusterError,
    JumpkitError,
    LockedError,
    PreconditionError,
    StateError,
    UsageError,
)
from installer.failpoints import failpoint
from installer.format import INSTALLER_MEMBER, Manifest
from installer.journal import TxnState
from installer.metadata import Labels
from installer.migrate import bundle_sql
from installer.options import Options
from installer.rehearsal import Rehearsed, rehearse_jumps
from installer.selfupdate import INSTALLED
from installer.services import ServiceManager, service_manager
from installer.signing import load_trusted_keys, verify_signature
from installer.stage import OldFiles, is_staged, only_staged, stage_bundle
from installer.state import StateDir, StatusDoc, beneath_root, first_missing
from installer.steps import Context
from installer.swapplan import Plan, plan_jumps
from installer.transaction import Recorder, Transaction
from installer.txunits import check_chain, failpoint_names

__all__ = ["Engine", "Options"]

Log = Callable[[str], None]
ProgressFactory = Callable[[str, int], Callable[[int], None]]


class Engine:
    """The installer's library API; the CLI only presents what this returns or raises."""

    def __init__(
        self,
        opts: Options,
        *,
        log: Log = lambda _: None,
        progress: ProgressFactory | None = None,
        services: Callable[[Manifest, Path], ServiceManager] | None = None,
    ) -> None:
        self.opts = opts
        self.root = opts.root
        self._log = log
        self._progress = progress
        self._services = services or (
            lambda m, r: service_manager(m.services, r, self.state_for(m).path / "holds")
        )
        self._rec: Recorder | None = None
        self._rehearsed = Rehearsed()  # of the apply under way (empty on resume and rollback)

    # --- plumbing -----------------------------------------------------------------
    def state_for(self, manifest: Manifest | None) -> StateDir:
        """The state dir: --state-dir, the manifest's product default, or the only one.

        Raises:
            StateError: none exists. UsageError: several exist.
        """
        return StateDir.pick(self.root, self.opts.state_dir, manifest.product if manifest else None)

    def log(self, line: str) -> None:
        """Log to the caller and, during a run, into status.json (the run's recorder may
        hold a line back from the caller while the services are down)."""
        if self._rec is not None:
            self._rec.say(line)
        else:
            self._log(line)

    def _trusted(self) -> dict[str, Any]:
        return load_trusted_keys(self.opts.trust or [beneath_root(self.root, "etc/jumpkit/trusted-keys")])

    def _opened(self, paths: Sequence[Path]) -> contextlib.AbstractContextManager[list[Opened]]:
        return opened_bundles(paths, self._trusted(), self.opts.allow_unsigned, self.opts.max_bundle_bytes)

    # --- verify -------------------------------------------------------------------
    def verify(self, bundle_path: Path, *, fits: bool = True) -> Manifest:
        """Check signature, manifest, member list and every member's hash, then, when the
        root holds a manager, that the bundle is for it. Writes nothing (a bundle RPM: its
        GPG signature first, then the ZIP inside, unpacked to a temp dir).

        Raises:
            BundleRejectedError: any check fails. PreconditionError: not for this manager.
        """
        if rpmbundle.is_rpm(bundle_path):
            self.log(f"RPM: {rpmbundle.check_signature(bundle_path, self.root)}")
            with tempfile.TemporaryDirectory(prefix="jumpkit-rpm-") as tmp:
                return self.verify(rpmbundle.extract_bundle(bundle_path, Path(tmp)), fits=fits)
        with self._opened([bundle_path]) as [(bundle, manifest, _, _)]:
            tick = self._progress("verify", manifest.total_size()) if self._progress else None
            verify_members(bundle, manifest, tick)
        if fits and (matched := preflight.fits_target(manifest, self.root)):
            self.log(matched)
        return manifest

    # --- pre-flight and the lock ------------------------------------------------------
    def preflight(
        self, manifest: Manifest, state: StateDir, *, staged: bool, more_bytes: int = 0
    ) -> list[str]:
        """See :func:`installer.preflight.check` (reads only; creates nothing).

        Raises:
            PreconditionError: one or more checks failed (all listed in ``details``).
        """
        return preflight.check(
            manifest, state, self.root, lambda: self._services(manifest, self.root), staged=staged,
            accept_drift=self.opts.accept_drift, force=self.opts.force, more_bytes=more_bytes,
            selinux=self.opts.selinux,
        )  # fmt: skip

    @contextlib.contextmanager
    def _prepared(
        self, state: StateDir, manifest: Manifest, *, staged: Callable[[], bool], more_bytes: int = 0
    ) -> Iterator[None]:
        """Pre-flight, then the lock; pre-flight first when the state dir is new, so that
        a refusal creates nothing, and again under the lock when another run may have
        written meanwhile. A refusal inside removes the state dir this run made."""
        state.refuse_busy()
        made = first_missing(state.path)
        if made is not None:
            self.preflight(manifest, state, staged=False, more_bytes=more_bytes)
        try:
            with state.locked() as lock_note:
                if lock_note:
                    self._log(lock_note)
                self._collect_trees()  # one an earlier rollback was running from
                state.refuse_unfinished()
                if made is None or state.status_path.exists() or state.journal_path.exists():
                    self.preflight(manifest, state, staged=staged(), more_bytes=more_bytes)
                journal = _size(state.journal_path)
                try:
                    yield
                except interrupts.Interrupted as e:
                    if made is None and _size(state.journal_path) == journal:  # it recorded nothing
                        _note_attempt(state, manifest, e)
                    raise
        except BaseException as e:
            # before the journal's first record nothing was applied: what this run made goes
            # (a LockedError: another run made it meanwhile, and it is theirs)
            if made is not None and not isinstance(e, LockedError) and not state.journal_path.exists():
                state.discard(made)
            raise

    # --- stage --------------------------------------------------------------------
    def stage(self, bundle_path: Path) -> Path:
        """Verify, check preconditions and unpack; the manager is not touched.

        Raises:
            BundleRejectedError, PreconditionError, LockedError, StateError.
        """
        with self._opened([bundle_path]) as [(bundle, manifest, data, sig)]:
            state = self.state_for(manifest)
            with self._prepared(state, manifest, staged=lambda: is_staged(state, data, manifest.bundle_id)):
                path = self._stage(bundle, manifest, data, sig, state)
                if state.read_status().status != "working":
                    state.write_status(StatusDoc(
                        status="staged", summary=f"{manifest.bundle_id} staged", bundle_id=manifest.bundle_id,
                        from_version=manifest.from_version, to_version=manifest.to_version,
                    ))  # fmt: skip
        return path

    def _stage(
        self, bundle: Bundle, manifest: Manifest, data: bytes, sig: bytes, state: StateDir,
        earlier: OldFiles | None = None,
    ) -> Path:  # fmt: skip
        if is_staged(state, data, manifest.bundle_id):
            return state.staging_dir(manifest.bundle_id)
        tick = self._progress("stage", manifest.total_size()) if self._progress else None
        t0 = time.monotonic()
        path = stage_bundle(
            bundle, manifest, data, sig, state, progress=tick, root=self.root, earlier=earlier
        )
        self._log(f"staged {len(manifest.files)} files in {time.monotonic() - t0:.2f}s")
        return path

    # --- apply --------------------------------------------------------------------
    def apply(self, bundle_paths: Sequence[Path] = ()) -> StatusDoc:
        """Apply a bundle (or the one staged), or a chain of bundles, as one journaled
        transaction with one outage: everything is verified and staged first, the services
        stop once, each jump swaps and migrates in order, the services start once and the
        health checks run once; a failure or a stop signal anywhere before the commit rolls
        the whole chain back. A bundle whose to-version is installed already: nothing to do.

        Raises:
            BundleRejectedError: exit 3. PreconditionError: exit 4, nothing changed.
            ApplyError: exit 5, rolled back. RollbackError: exit 6. LockedError: exit 7.
        """
        if not bundle_paths:
            return self._apply_staged()
        try:
            return self._apply(bundle_paths)
        except (PreconditionError, BundleRejectedError) as e:
            if self.opts.record_refusal is not None and not isinstance(e, LockedError):
                self._record_refusal(bundle_paths, e)
            raise

    def _record_refusal(self, bundle_paths: Sequence[Path], e: JumpkitError) -> None:
        """status.json says that an apply was refused and what to do next (see
        ``--record-refusal``); the state dir is made for it when there is none yet. A
        bundle that does not even verify names no product: recorded only where the root
        holds one state dir."""
        product = None
        with (
            contextlib.suppress(JumpkitError, OSError),
            self._opened(bundle_paths[:1]) as [(_, manifest, _, _)],
        ):
            product = manifest
        try:
            state = self.state_for(product)
            state.ensure()
            with state.locked():
                doc = state.read_status()
                if not state.status_path.exists():
                    doc.summary = "no apply has changed this manager"
                doc.extra["last_attempt"] = {
                    "bundle": ", ".join(p.name for p in bundle_paths),
                    "ended": f"refused (exit {e.exit_code}), nothing changed: {e.message}",
                    "next": self.opts.record_refusal,
                    "at": round(time.time(), 3),
                }
                state.write_status(doc)
        except (JumpkitError, OSError):
            pass  # the refusal itself is what the caller reports

    def _apply(self, bundle_paths: Sequence[Path]) -> StatusDoc:
        with self._opened(bundle_paths) as opened:
            manifests = [o[1] for o in opened]
            check_chain(manifests)
            failpoints.refuse_unknown(failpoint_names(len(manifests)))
            head, tail = manifests[0], manifests[-1]
            state = self.state_for(head)
            state.refuse_busy()
            if (done := preflight.already_at(tail, self.root)) is not None:
                return StatusDoc(status="finished", summary=done, from_version=head.from_version,
                                 to_version=tail.to_version, extra={"nothing_to_do": True})  # fmt: skip
            later = sum(m.total_size() for m in manifests[1:])
            first_staged = lambda: is_staged(state, opened[0][2], head.bundle_id)  # noqa: E731
            with self._prepared(state, head, staged=first_staged, more_bytes=later):
                if len(opened) > 1:
                    jumps = ", ".join(f"{m.from_version} -> {m.to_version}" for m in manifests)
                    self.log(f"chain of {len(opened)} jumps: {jumps}")
                earlier: dict[str, Path | None] = {}  # a delta of a later jump patches what these leave
                for bundle, m, data, sig in opened:
                    staging = self._stage(bundle, m, data, sig, state, earlier)
                    earlier.update({f.path: staging / "files" / f.path for f in m.files if f.kind == "file"})
                    earlier.update({r.path: None for r in m.removed})
                    if m.installer is not None:  # kept once this jump commits: a later patch's base
                        earlier[INSTALLED] = staging / "bundle" / INSTALLER_MEMBER
                doc = self._transact(state, manifests)
        if doc.status == "finished":  # fetched bundles the manager no longer needs (rollback has staging)
            from installer.fetch import forget_downloads

            forget_downloads(state, list(bundle_paths))
        return doc

    def _apply_staged(self) -> StatusDoc:
        state = self.state_for(None)
        with state.locked():
            state.refuse_unfinished()
            doc = state.read_status()
            if doc.status != "staged":
                raise UsageError(
                    f"nothing staged to apply (the last run is {doc.status}: {doc.summary}); "
                    "name the bundle: bundle-install apply BUNDLE"
                )
            manifest, data, sig = only_staged(state)
            if not self.opts.allow_unsigned:
                verify_signature(data, sig, self._trusted())
            self.preflight(manifest, state, staged=True)
            return self._transact(state, [manifest])

    def _transact(self, state: StateDir, manifests: list[Manifest]) -> StatusDoc:
        staged = [(m, state.staging_dir(m.bundle_id)) for m in manifests]
        labels = Labels.load(self.root, selinux=self.opts.selinux)
        plans = plan_jumps(
            staged, self.root, accept_drift=self.opts.accept_drift, log=self._log, labels=labels
        )
        # a migration that fails on a copy of this manager's data is refused here, before
        # anything stops (exit 4); what ran through is replayed in the window
        self._rehearsed = rehearse_jumps(
            [(m, path / "bundle") for m, path in staged], self.root, self._log, work=state.path
        )
        txn = Transaction.begin(state, manifests, plans, self._contexts, self.log)
        self._rec = txn.rec
        txn.rec.echo = self._log
        doc = txn.start()
        failpoint("finished")
        self._after_commit(txn).start(
            detach_components=self.opts.detach_components, detach_jobs=self.opts.detach_jobs
        )
        late = interrupts.take()  # one that came while the installer was placed, or later
        if late is not None:
            self.log(f"{late} received after the commit; finishing it")
        return doc

    def _contexts(
        self, state: StateDir, manifests: list[Manifest], plans: list[Plan], notes: dict[str, dict[str, Any]]
    ) -> list[Context]:
        """One context per jump; they share the notes (one journal, one transaction)."""
        done = self._rehearsed
        return [
            Context(self.root, state, m, plan, state.staging_dir(m.bundle_id), state.backup_dir(m.bundle_id),
                    self._services(m, self.root), self.log, notes, selinux=self.opts.selinux,
                    warm={k[1]: w for k, w in done.warm.items() if k[0] == m.bundle_id},
                    rehearsals={k[1]: r for k, r in done.recordings.items() if k[0] == m.bundle_id})
            for m, plan in zip(manifests, plans, strict=True)
        ]  # fmt: skip

    def _after_commit(self, txn: Transaction) -> AfterCommit:
        tail = txn.ctxs[-1]
        return AfterCommit(self.root, txn.rec, tail.manifest, tail.staging, self.log)

    # --- resume / rollback / jobs / components -------------------------------------
    def _load(self, state: StateDir, *, want: Sequence[TxnState]) -> Transaction:
        txn = Transaction.load(state, want, self._contexts, self.log)
        self._rec = txn.rec
        txn.rec.echo = self._log
        return txn

    def resume(self) -> StatusDoc:
        """Continue an interrupted apply (or an interrupted rollback) to its end.

        Raises:
            StateError: nothing is unfinished. ApplyError/RollbackError as for apply.
        """
        state = self.state_for(None)
        with state.locked():
            if (idle := _nothing_to(state, "resume")) is not None:
                return idle
            txn = self._load(state, want=("applying", "rolling-back", "committed"))
            doc = txn.resume()
            self._after_commit(txn).start(
                detach_components=self.opts.detach_components, detach_jobs=self.opts.detach_jobs
            )
            return doc

    def rollback(self) -> StatusDoc:
        """Return to the from-version, from a crash, a failure, or a finished apply
        (while its backup is kept); a chain as one unit, to its first from-version.

        Raises:
            StateError: nothing to roll back. RollbackError: exit 6.
        """
        state = self.state_for(None)
        with state.locked():
            if (idle := _nothing_to(state, "rollback")) is not None:
                return idle
            committed = state.view().state == "committed"
            txn = self._load(state, want=("applying", "rolling-back", "committed"))
            kept = all(c.backup.is_dir() for c in txn.ctxs)
            verdict = decide("rollback", state.view().state, state.read_status().status, backup_kept=kept)
            if not verdict.runs:
                raise StateError(verdict.message)
            txn.rollback("requested by the operator" if committed else "after an interrupted apply")
            self._collect_trees()  # the tree this run started from, if any, stays until the next
            failpoint("finished")
            return txn.rec.doc

    def jobs(self, names: Sequence[str] = ()) -> StatusDoc:
        """Run the post-upgrade jobs of the last committed apply that have not succeeded
        (or those named), each with its retries; waits for a running apply to finish.

        Raises:
            StateError: no committed apply with jobs. JobError: a job failed every attempt.
        """
        return self._after_the_commit("declares no post-upgrade jobs", "jobs", lambda a: a.run_jobs(names))

    def components(self) -> StatusDoc:
        """Install the component RPMs of the last committed apply (again, if need be).

        Raises:
            StateError: no committed apply with components. ComponentError: rpm failed.
        """
        return self._after_the_commit(
            "carries no component RPMs", "components", AfterCommit.install_components
        )

    def _after_the_commit(self, lacks: str, part: str, act: Callable[[AfterCommit], None]) -> StatusDoc:
        state = self.state_for(None)
        with state.locked(wait=DEFAULT_WAIT):
            after = self._after_commit(self._load(state, want=("committed",)))
            if not getattr(after.manifest, part):
                raise StateError(f"{after.manifest.bundle_id} {lacks}")
            act(after)
            return after.rec.doc

    # --- fleet rollout, fetch ----------------------------------------------------------
    def cluster(
        self, actions: list[cluster.Action], bundle_path: Path, host: str | None = None
    ) -> dict[str, Any]:
        """Steps of a fleet rollout on this host, in order (see :mod:`installer.cluster`);
        the bundle's signature is checked once, first. One action returns its result; several
        return ``{"actions": [...]}`` (each with ``took``, its seconds), and the first failure
        ends them, its message prefixed with the action (the exit code is the failure's).

        Raises:
            BundleRejectedError, ClusterError, UsageError.
        """
        if rpmbundle.is_rpm(bundle_path):
            raise UsageError(f"{bundle_path} is an RPM; a rollout ships the bundle ZIP")
        results: list[dict[str, Any]] = []
        with self._opened([bundle_path]) as [(bundle, manifest, _, _)]:
            scratch = self.state_for(manifest).path / "tmp"
            for action in actions:
                t0 = time.monotonic()
                try:
                    out = cluster.run(action, bundle, manifest, self.root, scratch, host=host, log=self.log)
                except JumpkitError as e:
                    if len(actions) == 1:
                        raise
                    raise ClusterError(f"{action}: {e.message}", exit_code=e.exit_code) from e
                if action == "role":  # the rollout reads both at once: one installer start less
                    out["status"] = self.status().to_json()
                results.append({**out, "took": round(time.monotonic() - t0, 3)})
        if len(results) == 1:
            return {k: v for k, v in results[0].items() if k != "took"}
        return {"actions": results}

    def fetch(self, repo: str, to: str, fmt: str = "zip") -> list[Path]:
        """Download the bundles from the installed version to ``to`` through TUF and verify
        each as any bundle (signature first); see :func:`installer.fetch.fetch_chain`."""
        from installer.fetch import fetch_chain

        return fetch_chain(
            self.root, repo, to, fmt, state_dir=self.opts.state_dir,
            verify=lambda path, fits: self.verify(path, fits=fits), log=self.log, progress=self._progress,
        )  # fmt: skip

    # --- unstage / status / plan ------------------------------------------------------
    def unstage(self) -> str:
        """Drop staging and backups (after which a finished apply can no longer be rolled back).

        Raises:
            StateError: an apply is unfinished.
        """
        state = self.state_for(None)
        from installer.fetch import forget_downloads

        with state.locked():
            said = state.unstage()
            fetched = forget_downloads(state)
            trees = self._collect_trees()
            return (
                said
                + (f"; {fetched} downloaded bundle(s) removed" if fetched else "")
                + (f"; {trees} unused installer tree(s) removed" if trees else "")
            )

    def _collect_trees(self) -> int:
        """Remove the unpacked installer trees no installer link names and no run uses
        (:func:`installer.resident.collect`): the one a rollback left behind when it ran from
        it goes with the next run, or with unstage. How many went."""
        from installer import resident, selfupdate

        try:
            return len(resident.collect(selfupdate.installed_path(self.root).parent))
        except OSError:
            return 0  # a tidy-up: never the reason a command fails

    def report(self, dest: Path | None) -> Path:
        """A support report of this manager (:mod:`installer.report`); reads only.

        Raises:
            StateError: no jumpkit state under the root. UsageError: --out's directory.
        """
        from installer import report

        state = self.state_for(None)
        return report.make(self.root, state, dest, lambda m: self._services(m, self.root))

    def status(self) -> StatusDoc:
        """The current status document (idle when nothing ever ran)."""
        try:
            return self.state_for(None).current()
        except (UsageError, StateError):
            return StatusDoc(summary=f"no jumpkit state under {self.root}")

    def plan(self, bundle_paths: Sequence[Path]) -> dict[str, Any]:
        """Dry run of a bundle or a chain (see :mod:`installer.dryrun`); changes nothing.

        Raises:
            BundleRejectedError: as verify. PreconditionError: the bundles are not a chain.
        """
        with self._opened(bundle_paths) as opened:
            manifests = [o[1] for o in opened]
            check_chain(manifests)
            if (done := preflight.already_at(manifests[-1], self.root)) is not None:
                return {"nothing_to_do": True, "summary": done}  # as apply would say
            state = self.state_for(manifests[0])
            return dryrun.report(
                [(b, m) for b, m, _, _ in opened], self.root, state,
                lambda m, more: self.preflight(m, state, staged=False, more_bytes=more),
            )  # fmt: skip

    def migrations_sql(self, bundle_path: Path, dialect: str | None) -> str:
        """The offline SQL of the bundle's migrations (alembic offline mode), for review;
        ``dialect`` (e.g. ``postgresql``) overrides the URL found on this target.

        Raises:
            BundleRejectedError: as verify. MigrationError: alembic cannot render it.
        """
        with self._opened([bundle_path]) as [(bundle, manifest, _, _)]:
            return bundle_sql(bundle, manifest, self.root, dialect)


def _nothing_to(state: StateDir, command: Literal["resume", "rollback"]) -> StatusDoc | None:
    """The answer of ``resume`` or ``rollback`` when what it would reach holds already
    (exit 0, :func:`installer.decide.decide`), else None."""
    doc = state.read_status()
    verdict = decide(command, state.view().state, doc.status)
    if not verdict.done:
        return None
    doc.summary, doc.extra = verdict.message, {**doc.extra, "nothing_to_do": True}
    return doc


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _note_attempt(state: StateDir, manifest: Manifest, e: interrupts.Interrupted) -> None:
    """status.json still describes the run before (the manager is as it left it); say
    that a later one began and was stopped before it changed anything, so that ``status``
    does not present the old summary as the last word. The next run's document drops it."""
    doc = state.read_status()
    doc.extra["last_attempt"] = {
        "bundle": manifest.bundle_id,
        "ended": f"interrupted by {e.signame} before it changed anything (verifying, pre-flight or staging)",
        "at": round(time.time(), 3),
    }
    state.write_status(doc)
