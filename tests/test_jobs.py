"""Post-upgrade background jobs (issue 10, MSR's metadata store migration): run after the
commit, retried with exponential backoff, visible in `bundle-install status`, re-triggered
by `bundle-install jobs`; a failed job never undoes the committed upgrade."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from installer.format import Job, Manifest
from installer.jobs import run_job
from tests.helpers import build, install
from tests.test_configs import built, product

# attempts are counted in a file; the job fails until $JUMPKIT_ROOT/var/fail-until says otherwise
SCRIPT = """#!/bin/sh
n=$(cat "$JUMPKIT_ROOT/var/{name}.attempts" 2>/dev/null || echo 0); n=$((n+1))
echo $n > "$JUMPKIT_ROOT/var/{name}.attempts"
echo "$(date +%s.%N) $JUMPKIT_JOB attempt $JUMPKIT_JOB_ATTEMPT $JUMPKIT_FROM-$JUMPKIT_TO" \\
  >> "$JUMPKIT_ROOT/var/jobs.log"
until=$(cat "$JUMPKIT_ROOT/var/{name}.fail-until" 2>/dev/null || echo 0)
if [ "$n" -lt "$until" ]; then echo "metadata store busy (attempt $n)" >&2; exit 3; fi
echo migrated
"""


@pytest.fixture
def jobbed(tmp_path: Path, keys: dict[str, Path]) -> tuple[Path, Path]:
    """The cfg product with two jobs (retries 2, backoff 0.2 s), built, and a root at 1.0.0."""
    specs = product(tmp_path)
    jump = specs / "cfg/jumps/1.0.0-1.1.0.yaml"
    for name in ("metadata", "reindex"):
        (jump.parent / f"{name}.sh").write_text(SCRIPT.format(name=name))
        (jump.parent / f"{name}.sh").chmod(0o755)
    jump.write_text(
        jump.read_text()
        + textwrap.dedent("""\
        jobs:
          - {name: metadata, script: metadata.sh, retries: 2, backoff: 0.2}
          - {name: reindex, script: reindex.sh, retries: 0}
        """)
    )
    root, bundle, _ = built(specs, tmp_path, keys)
    return bundle, root


def status(root: Path) -> dict[str, Any]:
    p = install("--root", root, "status", "--json")
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout))


def test_jobs_retry_with_backoff_and_show_in_status(jobbed: tuple[Path, Path]) -> None:
    bundle, root = jobbed
    (root / "var/metadata.fail-until").write_text("3")  # attempts 1 and 2 fail, 3 succeeds
    p = install("--root", root, "apply", "--wait-jobs", bundle)
    assert p.returncode == 0, p.stderr
    jobs = status(root)["extra"]["jobs"]
    assert jobs["metadata"]["state"] == "succeeded" and jobs["metadata"]["attempts"] == 3
    assert jobs["reindex"]["state"] == "succeeded" and jobs["reindex"]["attempts"] == 1
    log = [line.split() for line in (root / "var/jobs.log").read_text().splitlines()]
    assert [(e[1], e[3], e[4]) for e in log] == [
        ("metadata", "1", "1.0.0-1.1.0"),
        ("metadata", "2", "1.0.0-1.1.0"),
        ("metadata", "3", "1.0.0-1.1.0"),
        ("reindex", "1", "1.0.0-1.1.0"),
    ]
    gaps = [float(log[i + 1][0]) - float(log[i][0]) for i in range(2)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # backoff 0.2 s, doubled
    p = install("--root", root, "status")
    assert "job metadata: succeeded (3 attempt(s))" in p.stdout


def test_failed_job_keeps_the_upgrade_and_is_retriggered(jobbed: tuple[Path, Path]) -> None:
    bundle, root = jobbed
    (root / "var/reindex.fail-until").write_text("99")
    p = install("--root", root, "apply", "--wait-jobs", bundle)
    assert p.returncode == 8  # committed, a job failed: neither success nor a rollback
    assert "upgraded to 1.1.0, but job(s) failed: reindex (exited 3: metadata store busy" in p.stderr
    assert "'bundle-install jobs'" in p.stderr
    assert (root / "app/VERSION").read_text() == "1.1.0\n"  # committed: a job never undoes it
    doc = status(root)
    assert doc["status"] == "finished"
    assert (
        doc["extra"]["jobs"]["reindex"]["state"] == "failed"
        and doc["extra"]["jobs"]["reindex"]["attempts"] == 1
    )
    assert doc["extra"]["jobs"]["metadata"]["state"] == "succeeded"
    p = install("--root", root, "status")
    assert "job reindex: failed (1 attempt(s)): exited 3: metadata store busy (attempt 1)" in p.stdout
    # the operator fixes the cause and re-triggers: only the failed job runs again
    (root / "var/reindex.fail-until").unlink()
    p = install("--root", root, "jobs")
    assert p.returncode == 0, p.stderr
    jobs = status(root)["extra"]["jobs"]
    assert jobs["reindex"]["state"] == "succeeded"
    assert (root / "var/metadata.attempts").read_text().strip() == "1"
    # a named job runs again even though it succeeded; an unknown name is refused
    assert install("--root", root, "jobs", "metadata").returncode == 0
    assert (root / "var/metadata.attempts").read_text().strip() == "2"
    p = install("--root", root, "jobs", "nope")
    assert p.returncode == 2 and "no job nope" in p.stderr and "metadata, reindex" in p.stderr


def test_jobs_run_detached_after_apply(jobbed: tuple[Path, Path]) -> None:
    bundle, root = jobbed
    (root / "var/metadata.fail-until").write_text("2")
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert "detached 'bundle-install jobs'" in p.stderr + p.stdout
    for _ in range(300):
        jobs = status(root)["extra"]["jobs"]
        if all(j["state"] in ("succeeded", "failed") for j in jobs.values()):
            break
        time.sleep(0.05)
    assert {n: (j["state"], j["attempts"]) for n, j in jobs.items()} == {
        "metadata": ("succeeded", 2),
        "reindex": ("succeeded", 1),
    }


def test_no_jobs_to_run(tmp_path: Path, keys: dict[str, Path]) -> None:
    p = install("--root", tmp_path, "jobs")
    assert p.returncode == 4 and "no jumpkit state" in p.stderr


def test_spec_refuses_a_job_named_like_a_hook(tmp_path: Path, keys: dict[str, Path]) -> None:
    specs = product(tmp_path)
    jump = specs / "cfg/jumps/1.0.0-1.1.0.yaml"
    (jump.parent / "x.sh").write_text("#!/bin/sh\n")
    jump.write_text(
        jump.read_text()
        + "hooks:\n  - {name: x, when: post, script: x.sh}\njobs:\n  - {name: x, script: x.sh}\n"
    )
    p = build("--specs", specs, "--from", "1.0.0", "--to", "1.1.0", "--key", keys["key"], "--out", tmp_path)
    assert p.returncode == 2 and "jobs: x: the name is used by another hook or job" in p.stderr


def test_run_job_backoff_doubles(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o755)
    slept: list[float] = []
    updates: list[str] = []
    manifest = Manifest.model_construct(from_version="1.0.0", to_version="1.1.0")
    st = run_job(
        Job(name="j", retries=3, backoff=1.5),
        script,
        manifest,
        tmp_path,
        lambda s: updates.append(s["state"]),
        sleep=slept.append,
    )
    assert st["state"] == "failed" and st["attempts"] == 4 and slept == [1.5, 3.0, 6.0]
    assert updates[-1] == "failed" and "retrying" in updates
