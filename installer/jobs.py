"""Post-upgrade background jobs (MSR's metadata store migration): scripts a jump declares,
run after the commit, each retried with exponential backoff. Their state lives in
status.json under ``extra.jobs`` so ``bundle-install status`` shows it; ``bundle-install
jobs`` runs the ones not yet succeeded again.

A job's failure never undoes the upgrade: it has committed. The job reports, and the
operator fixes the cause and re-triggers it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from installer import commands
from installer.errors import UsageError
from installer.format import Job, Manifest

JobState = dict[str, Any]
"""``{"state": pending|running|succeeded|failed, "attempts": n, "error": str, ...}``"""


def pending(manifest: Manifest) -> dict[str, JobState]:
    """The initial state of every job of ``manifest``."""
    return {j.name: {"state": "pending", "attempts": 0} for j in manifest.jobs}


def select(manifest: Manifest, names: Sequence[str], states: dict[str, JobState]) -> list[Job]:
    """The jobs to run: those named, or every job that has not succeeded.

    Raises:
        UsageError: a name that is not a job of the bundle.
    """
    known = {j.name: j for j in manifest.jobs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(
            f"no job {', '.join(unknown)} in {manifest.bundle_id}; jobs: {', '.join(known) or 'none'}"
        )
    if names:
        return [known[n] for n in names]
    return [j for j in manifest.jobs if states.get(j.name, {}).get("state") != "succeeded"]


def run_job(
    job: Job,
    script: Path,
    manifest: Manifest,
    root: Path,
    update: Callable[[JobState], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> JobState:
    """Run ``job`` until it succeeds or has used its ``1 + retries`` attempts; ``update`` is
    called with the job's state at every change (status.json)."""
    st: JobState = {"state": "running", "attempts": 0, "started": round(time.time(), 3)}
    for attempt in range(1, job.retries + 2):
        st.update(attempts=attempt, state="running")
        update(dict(st))
        env = {
            **os.environ,
            "JUMPKIT_ROOT": str(root),
            "JUMPKIT_FROM": manifest.from_version,
            "JUMPKIT_TO": manifest.to_version,
            "JUMPKIT_JOB": job.name,
            "JUMPKIT_JOB_ATTEMPT": str(attempt),
        }
        try:
            p = commands.run([str(script)], cwd=root, env=env, timeout=job.timeout)
            out = p.output.strip()
            last = (out.splitlines() or ["no output"])[-1]
            error = None if p.returncode == 0 else f"exited {p.returncode}: {last}"
        except (OSError, subprocess.TimeoutExpired) as e:
            out, error = "", f"could not run: {e}"
        st["output"] = out[-500:]
        if error is None:
            st.update(state="succeeded", finished=round(time.time(), 3))
            st.pop("error", None)
            update(dict(st))
            return st
        st["error"] = error[:300]
        if attempt <= job.retries:
            delay = job.backoff * 2 ** (attempt - 1)
            st.update(state="retrying", next_in=delay)
            update(dict(st))
            sleep(delay)
            st.pop("next_in", None)
    st.update(state="failed", finished=round(time.time(), 3))
    update(dict(st))
    return st
