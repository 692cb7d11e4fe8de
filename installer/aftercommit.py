"""Work that follows a committed apply and never undoes it: the jump's component RPMs
(:mod:`installer.components`) and post-upgrade jobs (:mod:`installer.jobs`), run in this
process or from a detached ``bundle-install components|jobs``. Their state lives in
``status.json`` under ``extra``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from installer import components, interrupts, jobs, selfupdate
from installer.errors import ComponentError, JobError
from installer.format import INSTALLER_MEMBER, Manifest
from installer.transaction import Recorder

Log = Callable[[str], None]


class AfterCommit:
    """Components and jobs of one committed jump (the last of a chain)."""

    def __init__(self, root: Path, rec: Recorder, manifest: Manifest, staging: Path, log: Log) -> None:
        self.root = root
        self.rec = rec
        self.manifest = manifest
        self.staging = staging
        self.log = log

    def start(self, *, detach_components: bool, detach_jobs: bool) -> None:
        """What an apply does right after its commit (each part once per apply)."""
        extra = self.rec.doc.extra
        if self.manifest.components and "components" not in extra:
            self._set_components("pending")
            if detach_components:
                self._spawn_components()
            else:
                self.install_components()
        if self.manifest.jobs and "jobs" not in extra:
            extra["jobs"] = jobs.pending(self.manifest)
            self.rec.set()
            if not detach_jobs:
                self.run_jobs([])
            elif (error := self._spawn("jobs")) is not None:
                self.log(f"post-upgrade jobs: {error}; run 'bundle-install jobs'")
            else:
                self.log(
                    f"post-upgrade jobs: detached 'bundle-install jobs' ({self.rec.state.path}/jobs.log)"
                )

    # --- post-upgrade jobs -------------------------------------------------------------
    def run_jobs(self, names: Sequence[str]) -> None:
        """Run the jobs not yet succeeded (or those named), each with its retries.

        Raises:
            JobError: a job failed every attempt (the upgrade stays committed).
        """
        states: dict[str, Any] = self.rec.doc.extra.setdefault("jobs", jobs.pending(self.manifest))
        failed = []
        for job in jobs.select(self.manifest, names, states):
            if (sig := interrupts.pending()) is not None:  # after a commit signals only record
                self.log(f"post-upgrade jobs: {sig} received; {job.name} and later left pending: "
                         "run 'bundle-install jobs'")  # fmt: skip
                break

            def update(st: dict[str, Any], name: str = job.name) -> None:
                states[name] = st
                self.rec.set()

            self.log(f"job {job.name}: starting")
            st = jobs.run_job(
                job, self.staging / "bundle" / "hooks" / job.name, self.manifest, self.root, update
            )
            self.log(f"job {job.name}: {st['state']} after {st['attempts']} attempt(s)")
            if st["state"] != "succeeded":
                failed.append(f"{job.name} ({st.get('error', '?')})")
        if failed:
            raise JobError(
                f"upgraded to {self.manifest.to_version}, but job(s) failed: {'; '.join(failed)}; "
                "fix the cause, then 'bundle-install jobs'"
            )

    # --- component RPMs ----------------------------------------------------------------
    def _set_components(self, phase: str, **kw: str) -> None:
        self.rec.doc.extra["components"] = {
            "state": phase,
            "rpms": [c.rpartition("/")[2] for c in self.manifest.components],
            **kw,
        }
        self.rec.set()
        self.log(f"component RPMs: {phase}" + (f": {next(iter(kw.values()))}" if kw else ""))

    def install_components(self) -> None:
        """Install the component RPMs now (waits for rpm's lock).

        Raises:
            ComponentError: rpm failed (the upgrade stays committed).
        """
        rpms = [self.staging / "bundle" / c for c in self.manifest.components]
        try:
            line = components.install(self.root, rpms, lambda phase: self._set_components(phase))
        except ComponentError as e:
            self._set_components("failed", error=e.message)
            raise ComponentError(
                f"upgraded to {self.manifest.to_version}, but {e.message}; "
                "fix it, then 'bundle-install components'"
            ) from e
        self._set_components("done", detail=line)

    def _spawn_components(self) -> None:
        """Start ``bundle-install components`` in its own session: it outlives this process
        (and rpm's scriptlet) and waits for rpm's lock and then for our state lock."""
        error = self._spawn("components")
        if error is not None:  # the upgrade itself has committed: report, do not fail it
            self._set_components("failed", error=error)
            return
        self.log(
            "component RPMs: a detached 'bundle-install components' installs them; "
            f"log {self.rec.state.path}/components.log"
        )

    def _installer(self) -> Path:
        """The bundle's installer: the manager's own copy when the commit made it so (it
        starts from its kept tree, unpacking nothing), else the staged one."""
        info = selfupdate.installed_info(self.root)
        mine = self.manifest.installer
        if info is not None and mine is not None and info.get("sha256") == mine.sha256:
            return selfupdate.installed_path(self.root)
        return self.staging / "bundle" / INSTALLER_MEMBER

    def _spawn(self, command: str) -> str | None:
        """Start ``bundle-install <command>`` detached (its own session, log
        ``<state>/<command>.log``); returns why it could not start, or None."""
        state = self.rec.state
        if getattr(sys, "frozen", False):
            argv = [str(self._installer())]
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
