"""Orchestration: verify -> preflight -> stage -> plan -> journaled steps -> commit, and
resume/rollback from whatever the journal says. Only this module sequences steps."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from installer import cluster, components, jobs, preflight, rpmbundle, selfupdate
from installer.archive import (
    DEFAULT_MAX_BUNDLE_BYTES,
    Bundle,
    iter_verified,
    open_bundle,
    verify_bundle,
)
from installer.chain import Unit, chain_id, check_chain, transaction_units, unit_layout
from installer.errors import (
    ApplyError,
    JumpkitError,
    PreconditionError,
    RollbackError,
    StateError,
    UsageError,
)
from installer.failpoints import failpoint
from installer.format import INSTALLER_MEMBER, Manifest, load_trusted_keys, verify_signature
from installer.health import wait_healthy
from installer.migrate import database_url, offline_sql
from installer.parallel import run_each
from installer.plan import Plan, View, compute_plan
from installer.preflight import read_installed_version
from installer.services import ServiceManager, service_manager
from installer.stage import is_staged, load_staged, stage_bundle
from installer.state import StateDir, StatusDoc, default_state_dir, find_state_dirs
from installer.steps import Context, StopServices

Log = Callable[[str], None]
ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class Options:
    """What the operator chose on the command line."""

    root: Path
    state_dir: Path | None = None
    trust: list[Path] = field(default_factory=list)
    allow_unsigned: bool = False
    accept_drift: bool = False
    force: bool = False
    max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES
    detach_components: bool = False
    """Install component RPMs from a detached process that waits for rpm's lock (%posttrans)."""
    detach_jobs: bool = True
    """Run post-upgrade jobs from a detached ``bundle-install jobs`` (False: before apply returns)."""


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
        self._services = services or (lambda m, r: service_manager(m.services, r))
        self._status: StatusDoc | None = None
        self._state: StateDir | None = None

    # --- plumbing -----------------------------------------------------------------
    def _trusted(self) -> dict[str, Any]:
        paths = self.opts.trust or [self.root / "etc/jumpkit/trusted-keys"]
        return load_trusted_keys(paths)

    def state_for(self, manifest: Manifest | None) -> StateDir:
        """The state dir: --state-dir, the manifest's product default, or the only one."""
        if self.opts.state_dir is not None:
            return StateDir(self.opts.state_dir)
        if manifest is not None:
            return StateDir(default_state_dir(self.root, manifest.product))
        found = find_state_dirs(self.root)
        if not found:
            raise StateError(f"no jumpkit state under {self.root}: nothing was staged or applied here")
        if len(found) > 1:
            raise UsageError(f"{len(found)} jumpkit state dirs under {self.root}; pass --state-dir")
        return StateDir(found[0])

    def log(self, line: str) -> None:
        """Log to the caller and, during a run, into status.json (written at the next step
        boundary: two fsyncs per log line would lengthen the outage)."""
        self._log(line)
        if self._status is not None and self._state is not None:
            self._status.log.append(f"{time.strftime('%H:%M:%S')} {line}")

    def _set_status(self, **kw: Any) -> None:
        assert self._status is not None and self._state is not None
        for k, v in kw.items():
            setattr(self._status, k, v)
        self._state.write_status(self._status)

    def _open(self, bundle_path: Path) -> tuple[Bundle, Manifest, bytes, bytes]:
        bundle = open_bundle(bundle_path)
        manifest, data, sig = verify_bundle(
            bundle,
            self._trusted(),
            allow_unsigned=self.opts.allow_unsigned,
            max_bytes=self.opts.max_bundle_bytes,
        )
        return bundle, manifest, data, sig

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
        bundle, manifest, _, _ = self._open(bundle_path)
        members = manifest.members()
        tick = self._progress("verify", manifest.total_size()) if self._progress else None

        def check(name: str) -> None:
            sha, size = members[name]
            for chunk in iter_verified(bundle, name, sha, size):
                if tick is not None:
                    tick(len(chunk))

        try:
            # largest first: the last member to end is a small one, both threads stay busy
            run_each(check, sorted(members, key=lambda n: -members[n][1]), threads=2)
        finally:
            bundle.close()
        if fits:
            matched = preflight.fits_target(manifest, self.root)
            if matched:
                self.log(matched)
        return manifest

    # --- preflight ----------------------------------------------------------------
    def preflight(
        self, manifest: Manifest, state: StateDir, *, staged: bool, more_bytes: int = 0
    ) -> list[str]:
        """See :func:`installer.preflight.check`.

        Raises:
            PreconditionError: one or more checks failed (all listed in ``details``).
        """
        return preflight.check(
            manifest,
            state,
            self.root,
            lambda: self._services(manifest, self.root),
            staged=staged,
            accept_drift=self.opts.accept_drift,
            force=self.opts.force,
            more_bytes=more_bytes,
        )

    # --- stage --------------------------------------------------------------------
    def stage(self, bundle_path: Path) -> Path:
        """Verify, check preconditions and unpack; the manager is not touched.

        Raises:
            BundleRejectedError, PreconditionError, LockedError, StateError.
        """
        bundle, manifest, data, sig = self._open(bundle_path)
        state = self.state_for(manifest)
        try:
            with state.locked():
                self._refuse_unfinished(state)
                staged = is_staged(state, data, manifest.bundle_id)
                self.preflight(manifest, state, staged=staged)
                path = self._stage(bundle, manifest, data, sig, state)
        finally:
            bundle.close()
        doc = state.read_status()
        if doc.status not in ("working",):
            doc = StatusDoc(
                status="staged",
                summary=f"{manifest.bundle_id} staged",
                bundle_id=manifest.bundle_id,
                from_version=manifest.from_version,
                to_version=manifest.to_version,
            )
            state.write_status(doc)
        return path

    def _stage(self, bundle: Bundle, manifest: Manifest, data: bytes, sig: bytes, state: StateDir) -> Path:
        tick = self._progress("stage", manifest.total_size()) if self._progress else None
        t0 = time.monotonic()
        path = stage_bundle(bundle, manifest, data, sig, state, progress=tick)
        self._log(f"staged {len(manifest.files)} files in {time.monotonic() - t0:.2f}s")
        return path

    # --- journal helpers ----------------------------------------------------------
    @staticmethod
    def _txn(state: StateDir) -> list[dict[str, Any]]:
        records = state.journal()
        starts = [i for i, r in enumerate(records) if r.get("event") == "start"]
        return records[starts[-1] :] if starts else []

    @staticmethod
    def _txn_state(txn: list[dict[str, Any]]) -> str:
        events = [r["event"] for r in txn]
        if not events:
            return "none"
        for final in ("rolled-back", "commit", "rollback-start"):
            if final in events:
                last = max(
                    i for i, e in enumerate(events) if e in ("rolled-back", "commit", "rollback-start")
                )
                return {
                    "rolled-back": "rolled-back",
                    "commit": "committed",
                    "rollback-start": "rolling-back",
                }[events[last]]
        return "applying"

    def _refuse_unfinished(self, state: StateDir) -> None:
        st = self._txn_state(self._txn(state))
        if st == "committed" and state.read_status().status == "working":
            raise StateError(
                "the last apply committed but crashed before recording it; run 'bundle-install resume' "
                "(or 'bundle-install rollback') first"
            )
        if st in ("applying", "rolling-back"):
            raise StateError(
                f"an earlier apply did not finish ({st}); run 'bundle-install resume' or "
                "'bundle-install rollback' first"
            )

    def _contexts(
        self, state: StateDir, manifests: list[Manifest], plans: list[Plan], txn: list[dict[str, Any]]
    ) -> list[Context]:
        """One context per jump; they share the notes (one journal, one transaction)."""
        notes: dict[str, dict[str, Any]] = {}
        for r in txn:
            if r.get("event") == "note":
                notes[r["step"]] = r["data"]
        return [
            Context(
                root=self.root,
                state=state,
                manifest=m,
                plan=plan,
                staging=state.staging_dir(m.bundle_id),
                backup=state.backup_dir(m.bundle_id),
                services=self._services(m, self.root),
                log=self.log,
                notes=notes,
            )
            for m, plan in zip(manifests, plans, strict=True)
        ]

    # --- apply --------------------------------------------------------------------
    def apply(self, bundle_paths: Sequence[Path] = ()) -> StatusDoc:
        """Apply a bundle (or the one staged), or a chain of bundles, as one journaled
        transaction with one outage: everything is verified and staged first, the services
        stop once, each jump swaps and migrates in order, the services start once and the
        health checks run once; a failure anywhere rolls the whole chain back.

        Raises:
            BundleRejectedError: exit 3. PreconditionError: exit 4, nothing changed.
            ApplyError: exit 5, rolled back. RollbackError: exit 6. LockedError: exit 7.
        """
        opened: list[tuple[Bundle, Manifest, bytes, bytes]] = []
        try:
            for path in bundle_paths:
                opened.append(self._open(path))
            if opened:
                manifests = [o[1] for o in opened]
                check_chain(manifests)
                state = self.state_for(manifests[0])
            else:
                state = self.state_for(None)
                manifest, data, sig = self._staged_bundle(state)
                manifests = [manifest]
            with state.locked() as lock_note:
                if lock_note:
                    self._log(lock_note)
                self._refuse_unfinished(state)
                if not opened:
                    self.preflight(manifests[0], state, staged=True)
                    return self._transact(state, manifests)
                staged = [is_staged(state, data, m.bundle_id) for _, m, data, _ in opened]
                later = sum(
                    o[1].total_size() for o, done in zip(opened[1:], staged[1:], strict=True) if not done
                )
                self.preflight(manifests[0], state, staged=staged[0], more_bytes=later)
                if len(opened) > 1:
                    self.log(
                        f"chain of {len(opened)} jumps: "
                        + ", ".join(f"{m.from_version} -> {m.to_version}" for m in manifests)
                    )
                for (bundle, m, data, sig), done in zip(opened, staged, strict=True):
                    if not done:
                        self._stage(bundle, m, data, sig, state)
                return self._transact(state, manifests)
        finally:
            for o in opened:
                o[0].close()

    def _staged_bundle(self, state: StateDir) -> tuple[Manifest, bytes, bytes]:
        complete = [d for d in sorted(state.staging.glob("*")) if (d / ".complete").exists()]
        if len(complete) != 1:
            raise UsageError(f"{len(complete)} staged bundles in {state.staging}; name the bundle")
        manifest, data = load_staged(state, complete[0].name)
        sig = (complete[0] / "manifest.sig").read_bytes()
        if not self.opts.allow_unsigned:
            verify_signature(data, sig, self._trusted())
        return manifest, data, sig

    def _plans(self, state: StateDir, manifests: list[Manifest]) -> list[Plan]:
        """Every jump's plan, before anything stops: each against the root as the jumps
        before it leave it (drift between the bundles of a chain is refused here)."""
        view = View(self.root)
        plans = []
        for m in manifests:
            staging = state.staging_dir(m.bundle_id)
            plan = compute_plan(m, self.root, staging, accept_drift=self.opts.accept_drift, view=view)
            for note in plan.notes:
                self._log(note)
            if plan.drift:
                self._log(f"accepting drift in {len(plan.drift)} file(s); originals go to the backup")
            plans.append(plan)
            view.advance(m, plan, staging)
        return plans

    def _transact(self, state: StateDir, manifests: list[Manifest]) -> StatusDoc:
        plans = self._plans(state, manifests)
        for m, plan in zip(manifests, plans, strict=True):
            plan.save(state.staging_dir(m.bundle_id))
        for old in state.backup.iterdir():
            state.remove_tree(old)
        for m in manifests:
            state.backup_dir(m.bundle_id).mkdir(parents=True)
        state.journal_reset()
        ctxs = self._contexts(state, manifests, plans, [])
        units = transaction_units(ctxs)
        head, tail = manifests[0], manifests[-1]
        self._state = state
        self._status = StatusDoc(
            status="working",
            summary=f"applying {head.from_version} -> {tail.to_version}"
            + (f" (chain of {len(manifests)} jumps)" if len(manifests) > 1 else ""),
            bundle_id=chain_id(manifests),
            from_version=head.from_version,
            to_version=tail.to_version,
            started=time.time(),
        )
        start: dict[str, Any] = {"event": "start", "bundle": head.bundle_id, "steps": [u.name for u in units]}
        if len(manifests) > 1:
            start["chain"] = [m.bundle_id for m in manifests]
        state.journal_append(start)
        self._set_status()
        return self._run(ctxs, units, 0)

    def _run(self, ctxs: list[Context], units: list[Unit], first: int) -> StatusDoc:
        state = ctxs[0].state
        for unit in units[first:]:
            failpoint(f"begin:{unit.name}")
            state.journal_append({"event": "begin", "step": unit.name})
            self._set_status(step=unit.name)
            try:
                failpoint(f"run:{unit.name}")
                unit.step.run(unit.ctx)
            except (JumpkitError, OSError, KeyboardInterrupt) as e:
                reason = f"{unit.name} failed: {getattr(e, 'message', None) or e}"
                self.log(reason)
                self._rollback(ctxs, units, reason)
                raise ApplyError(
                    f"{reason}; rolled back to {ctxs[0].manifest.from_version}", step=unit.name
                ) from e
            failpoint(f"done:{unit.name}")
            state.journal_append({"event": "done", "step": unit.name})
        failpoint("commit")
        state.journal_append({"event": "commit"})
        failpoint("committed")
        return self._finish(ctxs)

    def _finish(self, ctxs: list[Context]) -> StatusDoc:
        """Record a committed apply in status and history (also after a crash right after
        the commit record)."""
        head, tail = ctxs[0], ctxs[-1]
        state = tail.state
        outage = self._outage(state)
        summary = f"upgraded {head.manifest.from_version} -> {tail.manifest.to_version}"
        if len(ctxs) > 1:
            summary += f" ({len(ctxs)} jumps, one outage)"
        if outage is not None:
            summary += f"; outage {outage:.2f}s"
        self.log(summary)
        info = tail.manifest.installer
        if info is not None:  # the bundle's installer becomes the manager's (selfupdate.py)
            state.journal_append({"event": "note", "step": "installer", "data": {"sha256": info.sha256}})
            tail.notes["installer"] = {"sha256": info.sha256}
            staged = state.staging_dir(tail.manifest.bundle_id) / "bundle" / INSTALLER_MEMBER
            if selfupdate.install(self.root, staged, info):
                self.log(f"bundle-install {info.version} is now the manager's installer")
        self._set_status(
            status="finished", step=None, summary=summary, finished=time.time(), outage_seconds=outage
        )
        state.append_history(
            {"result": "finished", "bundle": chain_id([c.manifest for c in ctxs]), "outage_seconds": outage}
        )
        if tail.manifest.components and "components" not in (self._status.extra if self._status else {}):
            self._set_components(tail.manifest, "pending")
            if self.opts.detach_components:
                self._spawn_components(state, tail.staging, tail.manifest)
            else:
                self._install_components(tail.manifest, tail.staging)
        assert self._status is not None
        if tail.manifest.jobs and "jobs" not in self._status.extra:
            self._status.extra["jobs"] = jobs.pending(tail.manifest)
            self._set_status()
            if not self.opts.detach_jobs:
                self._run_jobs(tail.manifest, tail.staging, [])
            elif (error := self._spawn(state, tail.staging, "jobs")) is not None:
                self.log(f"post-upgrade jobs: {error}; run 'bundle-install jobs'")
            else:
                self.log(f"post-upgrade jobs: detached 'bundle-install jobs' ({state.path}/jobs.log)")
        return self._status

    # --- post-upgrade jobs (jobs.py) ----------------------------------------------------
    def _run_jobs(self, manifest: Manifest, staging: Path, names: Sequence[str]) -> None:
        assert self._status is not None
        states: dict[str, Any] = self._status.extra.setdefault("jobs", jobs.pending(manifest))
        failed = []
        for job in jobs.select(manifest, names, states):

            def update(st: dict[str, Any], name: str = job.name) -> None:
                states[name] = st
                self._set_status()

            self.log(f"job {job.name}: starting")
            st = jobs.run_job(job, staging / "bundle" / "hooks" / job.name, manifest, self.root, update)
            self.log(f"job {job.name}: {st['state']} after {st['attempts']} attempt(s)")
            if st["state"] != "succeeded":
                failed.append(f"{job.name} ({st.get('error', '?')})")
        if failed:
            raise jobs.JobError(
                f"upgraded to {manifest.to_version}, but job(s) failed: {'; '.join(failed)}; "
                "fix the cause, then 'bundle-install jobs'"
            )

    def jobs(self, names: Sequence[str] = ()) -> StatusDoc:
        """Run the post-upgrade jobs of the last committed apply that have not succeeded
        (or those named), each with its retries; waits for a running apply to finish.

        Raises:
            StateError: no committed apply with jobs. JobError: a job failed every attempt.
        """
        state = self.state_for(None)
        with state.locked(wait=components.DEFAULT_WAIT):
            txn = self._txn(state)
            if not txn or self._txn_state(txn) != "committed":
                raise StateError("no committed apply to run post-upgrade jobs for")
            tail = (txn[0].get("chain") or [txn[0]["bundle"]])[-1]
            manifest, _ = load_staged(state, tail)
            if not manifest.jobs:
                raise StateError(f"{manifest.bundle_id} declares no post-upgrade jobs")
            self._state = state
            self._status = state.read_status()
            self._run_jobs(manifest, state.staging_dir(manifest.bundle_id), names)
            return self._status

    # --- fleet rollout (cluster.py) -----------------------------------------------------
    def cluster(self, action: cluster.Action, bundle_path: Path, host: str | None = None) -> dict[str, Any]:
        """One step of a fleet rollout on this host (see :mod:`installer.cluster`); the
        bundle's signature is checked first.

        Raises:
            BundleRejectedError, ClusterError, UsageError.
        """
        if rpmbundle.is_rpm(bundle_path):
            raise UsageError(f"{bundle_path} is an RPM; a rollout ships the bundle ZIP")
        bundle, manifest, _, _ = self._open(bundle_path)
        try:
            scratch = self.state_for(manifest).path / "tmp"
            out = cluster.run(action, bundle, manifest, self.root, scratch, host=host, log=self.log)
        finally:
            bundle.close()
        if action == "role":  # the rollout reads both at once: one installer start less per host
            out["status"] = self.status().to_json()
        return out

    # --- component RPMs (components.py) -------------------------------------------------
    def _set_components(self, manifest: Manifest, phase: str, **kw: str) -> None:
        assert self._status is not None
        self._status.extra["components"] = {
            "state": phase,
            "rpms": [c.rpartition("/")[2] for c in manifest.components],
            **kw,
        }
        self._set_status()
        self.log(f"component RPMs: {phase}" + (f": {next(iter(kw.values()))}" if kw else ""))

    def _install_components(self, manifest: Manifest, staging: Path) -> None:
        rpms = [staging / "bundle" / c for c in manifest.components]
        try:
            line = components.install(self.root, rpms, lambda phase: self._set_components(manifest, phase))
        except components.ComponentError as e:
            self._set_components(manifest, "failed", error=e.message)
            raise components.ComponentError(
                f"upgraded to {manifest.to_version}, but {e.message}; "
                "fix it, then 'bundle-install components'"
            ) from e
        self._set_components(manifest, "done", detail=line)

    def _spawn_components(self, state: StateDir, staging: Path, manifest: Manifest) -> None:
        """Start ``bundle-install components`` in its own session: it outlives this process
        (and rpm's scriptlet) and waits for rpm's lock and then for our state lock."""
        error = self._spawn(state, staging, "components")
        if error is not None:  # the upgrade itself has committed: report, do not fail it
            self._set_components(manifest, "failed", error=error)
            return
        self.log(
            "component RPMs: a detached 'bundle-install components' installs them; "
            f"log {state.path}/components.log"
        )

    def _spawn(self, state: StateDir, staging: Path, command: str) -> str | None:
        """Start ``bundle-install <command>`` detached (its own session, log
        ``<state>/<command>.log``); returns why it could not start, or None."""
        if getattr(sys, "frozen", False):
            argv = [str(staging / "bundle" / INSTALLER_MEMBER)]
        else:
            argv = [sys.executable, "-m", "installer.cli"]
        argv += ["--root", str(self.root), "--state-dir", str(state.path), command]
        try:
            with open(state.path / f"{command}.log", "ab") as log:
                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,  # closed at once: EOF (a bare manager root may lack /dev/null)
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    env=selfupdate.fresh_env(),
                )
                assert child.stdin is not None
                child.stdin.close()
        except OSError as e:
            return f"could not start the detached step: {e}"
        return None

    def components(self) -> StatusDoc:
        """Install the component RPMs of the last committed apply (again, if need be).

        Raises:
            StateError: no committed apply with components. ComponentError: rpm failed.
        """
        state = self.state_for(None)
        with state.locked(wait=components.DEFAULT_WAIT):
            txn = self._txn(state)
            if not txn or self._txn_state(txn) != "committed":
                raise StateError("no committed apply to install component RPMs for")
            manifest, _ = load_staged(state, txn[0]["bundle"])
            if not manifest.components:
                raise StateError(f"{manifest.bundle_id} carries no component RPMs")
            self._state = state
            self._status = state.read_status()
            self._install_components(manifest, state.staging_dir(manifest.bundle_id))
            return self._status

    def _outage(self, state: StateDir) -> float | None:
        txn = self._txn(state)
        t0 = next(
            (r["ts"] for r in txn if r.get("event") == "begin" and r["step"] == StopServices.name), None
        )
        t1 = next(
            (r["ts"] for r in reversed(txn) if r.get("event") == "done" and r["step"] == "health"), None
        )
        return round(t1 - t0, 3) if t0 is not None and t1 is not None else None

    def _rollback(self, ctxs: list[Context], units: list[Unit], reason: str) -> None:
        head, tail = ctxs[0], ctxs[-1]
        state = head.state
        txn = self._txn(state)
        if not any(r["event"] == "rollback-start" for r in txn):
            state.journal_append({"event": "rollback-start", "reason": reason})
            txn = self._txn(state)
        self._set_status(status="working", summary=f"rolling back: {reason}")
        begun = [r["step"] for r in txn if r["event"] == "begin"]
        undone = {r["step"] for r in txn if r["event"] == "undo-done"}
        by_name = {u.name: u for u in units}
        restarted = False
        for name in reversed(list(dict.fromkeys(begun))):
            if name in undone:
                continue
            unit = by_name[name]
            failpoint(f"undo:{name}")
            self.log(f"undo {name}")
            state.journal_append({"event": "undo-begin", "step": name})
            self._set_status(step=f"undo {name}")
            try:
                unit.step.undo(unit.ctx)
            except (JumpkitError, OSError) as e:
                msg = (
                    f"rollback failed in {name}: {getattr(e, 'message', None) or e}; "
                    f"the manager is between {head.manifest.from_version} and "
                    f"{tail.manifest.to_version}: fix the cause, then 'bundle-install rollback'"
                )
                state.journal_append({"event": "rollback-failed", "step": name, "error": str(e)})
                self._set_status(status="failed", summary=msg)
                state.append_history(
                    {"result": "failed", "bundle": chain_id([c.manifest for c in ctxs]), "error": msg}
                )
                raise RollbackError(msg) from e
            failpoint(f"after-undo:{name}")
            state.journal_append({"event": "undo-done", "step": name})
            restarted = restarted or name == StopServices.name
        if (
            restarted
            and head.manifest.services.health
            and head.notes.get(StopServices.name, {}).get("running")
        ):
            try:
                wait_healthy(
                    head.manifest.services.health, head.variables(head.manifest.from_version), self.root
                )
            except JumpkitError as e:
                msg = f"rolled back files, but {head.manifest.from_version} is not healthy: {e.message}"
                self._set_status(status="failed", summary=msg)
                raise RollbackError(msg) from e
        info = tail.manifest.installer
        if info is not None and "installer" in tail.notes and selfupdate.restore(self.root, info):
            self.log("put the manager's previous installer back")
        state.journal_append({"event": "rolled-back"})
        self._set_status(
            status="rolled-back",
            step=None,
            finished=time.time(),
            outage_seconds=None,
            summary=f"rolled back to {head.manifest.from_version}: {reason}",
        )
        state.append_history(
            {"result": "rolled-back", "bundle": chain_id([c.manifest for c in ctxs]), "reason": reason}
        )

    # --- resume / rollback ----------------------------------------------------------
    def _load_txn(self, state: StateDir) -> tuple[list[Context], list[Unit], list[dict[str, Any]]]:
        txn = self._txn(state)
        if not txn:
            raise StateError(
                "nothing to resume or roll back: no apply in the journal "
                "(unstage and the next apply drop the backup of the last one)"
            )
        ids = txn[0].get("chain") or [txn[0]["bundle"]]
        manifests = [load_staged(state, i)[0] for i in ids]
        plans = [Plan.load(state.staging_dir(i)) for i in ids]
        self._state = state
        self._status = state.read_status()
        ctxs = self._contexts(state, manifests, plans, txn)
        return ctxs, transaction_units(ctxs), txn

    def resume(self) -> StatusDoc:
        """Continue an interrupted apply (or an interrupted rollback) to its end.

        Raises:
            StateError: nothing is unfinished. ApplyError/RollbackError as for apply.
        """
        state = self.state_for(None)
        with state.locked():
            ctxs, units, txn = self._load_txn(state)
            st = self._txn_state(txn)
            if st == "rolling-back":
                reason = next(r["reason"] for r in txn if r["event"] == "rollback-start")
                self._rollback(ctxs, units, reason)
                raise ApplyError(f"resumed the interrupted rollback to {ctxs[0].manifest.from_version}")
            if st == "committed" and self._status is not None and self._status.status != "finished":
                return self._finish(ctxs)  # the crash came after the commit record
            if st != "applying":
                raise StateError(f"nothing to resume: the last apply is {st}")
            done = {r["step"] for r in txn if r["event"] == "done"}
            first = next((i for i, u in enumerate(units) if u.name not in done), len(units))
            self._set_status(
                status="working",
                summary=f"resuming at {units[first].name if first < len(units) else 'commit'}",
            )
            self.log(f"resuming after a crash at step {first + 1}/{len(units)}")
            return self._run(ctxs, units, first)

    def rollback(self) -> StatusDoc:
        """Return to the from-version, from a crash, a failure, or a finished apply
        (while its backup is kept); a chain as one unit, to its first from-version.

        Raises:
            StateError: nothing to roll back. RollbackError: exit 6.
        """
        state = self.state_for(None)
        with state.locked():
            ctxs, units, txn = self._load_txn(state)
            st = self._txn_state(txn)
            if st == "rolled-back":
                raise StateError("nothing to roll back: the last apply was already rolled back")
            if not all(c.backup.is_dir() for c in ctxs):
                raise StateError("the backup of the last apply is gone (unstaged); cannot roll back")
            self._rollback(
                ctxs,
                units,
                "requested by the operator" if st == "committed" else "after an interrupted apply",
            )
            assert self._status is not None
            return self._status

    # --- fetch (TUF) ---------------------------------------------------------------
    def fetch(self, repo: str, to: str, fmt: str = "zip") -> list[Path]:
        """Download the bundles from the installed version to ``to`` through TUF into the
        state dir's ``downloads/``, then verify each as any bundle (signature first).

        Raises:
            BundleRejectedError: a TUF check or a bundle check failed (exit 3; nothing
                kept). PreconditionError: no product marker, no pinned root, no chain.
            StoreError: the repository cannot be read.
        """
        from installer.fetch import Client

        marker = self.root / preflight.PRODUCT_MARKER
        if not marker.is_file():
            raise PreconditionError(
                f"no {preflight.PRODUCT_MARKER} under {self.root}: which product is this?"
            )
        product = marker.read_text().strip()
        state = (
            self.state_for(None) if self.opts.state_dir else StateDir(default_state_dir(self.root, product))
        )
        state.ensure()
        client = Client(self.root, repo)
        up = client.refresh()
        offered = [a for a in client.available(up) if a.product == product]
        if not offered:
            raise PreconditionError(f"{repo} offers no bundle of {product}")
        version_file = offered[0].version_file
        installed = preflight.read_version_file(self.root, str(version_file))
        if installed is None:
            raise PreconditionError(f"cannot read the installed version from {version_file}")
        chain = client.chain(up, product, installed, to, fmt)
        downloads = state.path / "downloads"
        downloads.mkdir(exist_ok=True, mode=0o700)
        total = sum(a.length for a in chain)
        tick = self._progress("download", total) if self._progress else None
        client.fetcher.progress = tick
        self.log(f"{repo}: {installed} -> {to} in {len(chain)} bundle(s), {total} bytes")
        paths = []
        try:
            for n, a in enumerate(chain):
                path = client.download(up, a.name, downloads)
                self.verify(path, fits=n == 0)  # the later ones fit the earlier ones (apply checks)
                paths.append(path)
        except BaseException:
            for a in chain:
                (downloads / a.name).unlink(missing_ok=True)
            raise
        return paths

    # --- unstage / status / plan ------------------------------------------------------
    def unstage(self) -> str:
        """Drop staging and backups (after which a finished apply can no longer be rolled back).

        Raises:
            StateError: an apply is unfinished.
        """
        state = self.state_for(None)
        with state.locked():
            self._refuse_unfinished(state)
            n = 0
            for d in [*state.staging.iterdir(), *state.backup.iterdir()]:
                state.remove_tree(d)
                n += 1
            state.journal_reset()
            doc = state.read_status()
            if doc.status == "staged":
                doc = StatusDoc(status="idle", summary="unstaged")
            else:
                doc.log.append(f"{time.strftime('%H:%M:%S')} staging and backups removed")
            state.write_status(doc)
            return f"removed {n} staging/backup dir(s)"

    def status(self) -> StatusDoc:
        """The current status document (idle when nothing ever ran)."""
        try:
            state = self.state_for(None)
        except (UsageError, StateError):
            return StatusDoc(summary=f"no jumpkit state under {self.root}")
        doc = state.read_status()
        pid, held = state.holder()
        if doc.status == "working" and not held:
            # nobody is working: the run that wrote this died (kill -9, power loss, OOM)
            doc.extra["interrupted"] = {
                "pid": pid,
                "next": ["bundle-install resume", "bundle-install rollback"],
            }
            doc.summary = (
                f"INTERRUPTED: the run (pid {pid}) died at step {doc.step or '?'}; "
                "run 'bundle-install resume' to finish or 'bundle-install rollback' to undo"
            )
        elif held:
            doc.extra["running"] = {"pid": pid}
        return doc

    def plan(self, bundle_paths: Sequence[Path]) -> dict[str, Any]:
        """Dry run of a bundle or a chain: every step with what it will touch, pre-flight,
        and an outage estimate from the manifests; nothing under the root changes.

        Raises:
            BundleRejectedError: as verify. PreconditionError: the bundles are not a chain.
        """
        opened = []
        try:
            for path in bundle_paths:
                opened.append(self._open(path))
            manifests = [o[1] for o in opened]
            check_chain(manifests)
            head, tail = manifests[0], manifests[-1]
            state = self.state_for(head)
            report: dict[str, Any] = {
                "bundle": chain_id(manifests),
                "chain": [m.bundle_id for m in manifests],
                "from": head.from_version,
                "to": tail.to_version,
                "installed": read_installed_version(self.root, head),
            }
            with tempfile.TemporaryDirectory(prefix="jumpkit-plan-") as tmp:
                view = View(self.root)
                plans: list[Plan] = []
                for n, (bundle, m, _, _) in enumerate(opened):
                    staging = Path(tmp) / str(n)
                    for f in m.files:
                        if f.kind == "config":
                            dest = staging / "defaults" / f.path
                            dest.parent.mkdir(parents=True, exist_ok=True)
                            assert f.sha256 is not None
                            with open(dest, "wb") as out:
                                for chunk in iter_verified(bundle, f.member, f.sha256, f.size):
                                    out.write(chunk)
                    if n == 0:
                        more = sum(x.total_size() for x in manifests[1:])
                        try:
                            passed = self._preflight_dry(m, state, more)
                            report["preflight"] = {"ok": True, "passed": passed}
                        except PreconditionError as e:
                            report["preflight"] = {"ok": False, "problems": e.details or [e.message]}
                    plans.append(compute_plan(m, self.root, staging, accept_drift=True, view=view))
                    view.advance(m, plans[-1], staging)
        finally:
            for o in opened:
                o[0].close()
        ctxs_like = list(zip(manifests, plans, strict=True))
        report["drift"] = [d for _, plan in ctxs_like for d in plan.drift]
        report["notes"] = [n for _, plan in ctxs_like for n in plan.notes]
        names = [(name, jump) for name, _, jump in unit_layout(len(manifests))]
        steps = []
        for m in manifests:
            steps.append(
                {"step": "verify", "detail": f"{m.bundle_id}: signature + {len(m.members())} members"}
            )
            steps.append(
                {"step": "stage", "detail": f"{m.total_size()} bytes into {state.staging_dir(m.bundle_id)}"}
            )
        for name, jump in names:
            m, plan = ctxs_like[jump]
            steps.append({"step": name, "detail": self._describe(name.partition("#")[0], m, plan)})
        steps.append(
            {"step": "commit", "detail": "journal commit; backup kept until unstage or the next apply"}
        )
        report["steps"] = steps
        placed: dict[str, bool] = {}  # what earlier jumps of the chain leave (True) or remove
        report["files"] = []
        for m, plan in ctxs_like:
            for op in plan.ops:
                existed = placed.get(
                    op.path, (self.root / op.path).exists() or (self.root / op.path).is_symlink()
                )
                action = op.action if op.action == "remove" else ("replace" if existed else "add")
                report["files"].append(
                    {"jump": f"{m.from_version} -> {m.to_version}", "path": op.path, "action": action,
                     "group": op.group, "note": op.note}
                )  # fmt: skip
            for op in plan.ops:
                placed[op.path] = op.action == "place"
        report["services"] = [s.name for s in tail.services.services]
        report["databases"] = [
            {
                "jump": f"{m.from_version} -> {m.to_version}",
                "name": db.name,
                "from": db.from_revision,
                "to": db.to_revision,
                "revisions": list(db.revisions),
                "rehearsal_seconds": db.rehearsal_seconds,
            }
            for m in manifests
            for db in m.databases
        ]
        # one stop (the old version's services) and one start (the new one's), whatever
        # the length of the chain; every migration at its rehearsed time; renames ~20 us
        report["outage_estimate_seconds"] = round(
            sum(min(s.stop_timeout, 2.0) for s in head.services.services)
            + sum(min(s.start_timeout, 2.0) for s in tail.services.services)
            + sum(db.rehearsal_seconds for m in manifests for db in m.databases)
            + 0.00002 * sum(len(plan.ops) for _, plan in ctxs_like),
            2,
        )
        return report

    def migrations_sql(self, bundle_path: Path, dialect: str | None) -> str:
        """The offline SQL of the bundle's migrations (alembic offline mode), for review.

        ``dialect`` (e.g. ``postgresql``) overrides the URL found on this target.

        Raises:
            BundleRejectedError: as verify. MigrationError: alembic cannot render it.
        """
        bundle, manifest, _, _ = self._open(bundle_path)
        out = []
        try:
            with tempfile.TemporaryDirectory(prefix="jumpkit-sql-") as tmp:
                for m in manifest.extras:
                    if m.name.startswith("migrations/"):
                        dest = Path(tmp) / m.name
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        with open(dest, "wb") as f:
                            for chunk in iter_verified(bundle, m.name, m.sha256, m.size):
                                f.write(chunk)
                for db in manifest.databases:
                    if dialect:
                        url = f"{dialect}://"
                    else:
                        try:
                            url = database_url(db, self.root)
                        except JumpkitError:
                            url = "sqlite://"
                    out.append(f"-- database {db.name}: {db.from_revision} -> {db.to_revision}\n")
                    out.append(offline_sql(Path(tmp) / db.script_dir, url, db.from_revision, db.to_revision))
        finally:
            bundle.close()
        return "".join(out)

    def _preflight_dry(self, manifest: Manifest, state: StateDir, more_bytes: int = 0) -> list[str]:
        if not state.path.exists():
            # preflight creates the state dir; a dry run must not
            with tempfile.TemporaryDirectory(dir=self._existing_parent(state.path)) as tmp:
                return self.preflight(manifest, StateDir(Path(tmp)), staged=False, more_bytes=more_bytes)
        return self.preflight(manifest, state, staged=False, more_bytes=more_bytes)

    @staticmethod
    def _existing_parent(p: Path) -> Path:
        while not p.exists():
            p = p.parent
        return p

    @staticmethod
    def _describe(name: str, manifest: Manifest, plan: Plan) -> str:
        svcs = [s.name for s in manifest.services.services]
        if name == "stop-services":
            return f"stop {', '.join(reversed(svcs)) or 'nothing'} ({manifest.services.backend})"
        if name == "start-services":
            return f"start {', '.join(svcs) or 'nothing'}"
        if name.startswith("swap-"):
            ops = plan.group(name.removeprefix("swap-"))
            placed = sum(o.action == "place" for o in ops)
            return f"{placed} placed, {len(ops) - placed} removed"
        if name.startswith("hooks-"):
            hooks = [h.name for h in manifest.hooks if h.when == name.removeprefix("hooks-")]
            return ", ".join(hooks) or "none"
        if name == "backup-db":
            return ", ".join(db.name for db in manifest.databases) or "none"
        if name == "migrate":
            return (
                "; ".join(
                    f"{db.name}: {db.from_revision} -> {db.to_revision} ({', '.join(db.revisions)}; "
                    f"rehearsed {db.rehearsal_seconds:.2f}s)"
                    for db in manifest.databases
                )
                or "none"
            )
        if name == "health":
            return ", ".join(c.name for c in manifest.services.health) or "none"
        return ""
