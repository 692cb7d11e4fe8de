"""SIGINT at every failpoint of an apply and of a rollback (SIGTERM and SIGHUP at a
subset: :func:`subset`), and all three from outside at random instants. A signal is a
request to stop, never a crash: each run ends exactly at the old version (exit 5, status rolled-back, a reason
naming the signal) or, when it came after the commit record, exactly at the new one
(exit 0, status finished); status and journal always agree, never "working".

Every interrupted run must leave exactly the old version, so one sandbox serves a whole
signal's matrix (a finished apply is rolled back before the next point): a fresh
sandbox per point would double the time for nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from installer.state import StateDir
from tests.counts import count
from tests.crash.common import assert_exactly
from tests.crash.test_points import CRASH_POINTS, STEPS
from tests.helpers import REPO, Sandbox, install, make_sandbox

SIGNALS = {"int": "SIGINT", "term": "SIGTERM", "hup": "SIGHUP"}
SINGLE = list(CRASH_POINTS)
RANDOM_SIGNALS = 30
SEED = int(os.environ.get("JUMPKIT_CRASH_SEED", str(int(time.time()))))
_AFTER_COMMIT = ("committed",)


def subset(points: list[str], action: str) -> list[str]:
    """SIGINT at every point; SIGTERM at every other one and SIGHUP at every sixth. The
    three take one code path (the handler records the signal; SIGHUP also detaches the
    terminal), so the full matrix runs once and the others check the path is shared: that
    keeps the suite inside CI's time (the full rows cost ~3 minutes)."""
    step = {"int": 1, "term": 2, "hup": 6}[action]
    return points[::step]


def state_of(sb: Sandbox) -> tuple[str, str, str]:
    """(status, summary, journal state) as on disk."""
    state = StateDir(sb.root / "var/lib/jumpkit/demo-manager")
    doc = state.read_status()
    return doc.status, doc.summary, state.view().state


def settle(
    sb: Sandbox, p: subprocess.CompletedProcess[str] | tuple[int, str], expected: dict[str, object],
    old: str, new: str, what: str, signame: str | None,
) -> str:  # fmt: skip
    """Check one signalled run ended exactly old or exactly new, consistently; leave the
    sandbox at the old version. Returns "old" or "new"."""
    rc, stderr = (p.returncode, p.stderr) if isinstance(p, subprocess.CompletedProcess) else p
    status, summary, journal = state_of(sb)
    assert status != "working" and journal not in ("applying", "rolling-back"), (
        f"{what}: half state: status {status}, journal {journal}, rc {rc}: {stderr[-500:]}"
    )
    if rc == 0:
        assert status == "finished" and journal == "committed", f"{what}: rc 0 but {status}/{journal}"
        assert_exactly(sb, expected, "new", new, what)
        q = install("--root", sb.root, "rollback")
        assert q.returncode == 0, q.stderr
        assert_exactly(sb, expected, "old", old, what + ", then rollback")
        return "new"
    assert rc == 5, f"{what}: rc {rc}: {stderr[-800:]}"
    if signame is not None and signame != "SIGHUP":  # a hung-up run's terminal is gone
        line = stderr.strip().splitlines()[-1]
        assert line.startswith("bundle-install: interrupted by ") and signame in line, f"{what}: {line}"
    if journal == "rolled-back" and status == "rolled-back":
        assert summary.startswith(f"rolled back to {old}: ") and summary.split(": ", 1)[1].strip(), summary
    assert_exactly(sb, expected, "old", old, f"{what} (rc {rc}, {status}/{journal}: {summary})")
    return "old"


@pytest.fixture(scope="module")
def single(keys: dict[str, Path], port: int) -> Iterator[Sandbox]:
    sb = make_sandbox("4.0.1", keys["pub"], port)
    yield sb
    sb.destroy()


@pytest.mark.parametrize("action", ["int", "term", "hup"])
def test_signal_at_every_failpoint(
    action: str, single: Sandbox, bundle: Path, expected: dict[str, object]
) -> None:
    points = subset(SINGLE, action)
    ends = []
    for point in points:
        spec = f"{point}={action}"
        p = install("--root", single.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": spec})
        end = settle(single, p, expected, "4.0.1", "4.1.1", spec, SIGNALS[action])
        ends.append(end)
        if point in _AFTER_COMMIT:
            assert end == "new", f"{spec}: a signal after the commit record finishes the apply"
        elif not point.startswith("stage:"):
            assert end == "old", f"{spec}: a signal before the commit record rolls back"
        count(f"signal matrix: {SIGNALS[action]} at a failpoint of an apply (exactly old or new)")
    assert "old" in ends


@pytest.mark.parametrize("action", ["int", "term", "hup"])
def test_a_signal_after_the_commit_finishes_and_exits_0(
    action: str, single: Sandbox, bundle: Path, expected: dict[str, object]
) -> None:
    """After the commit record (the record itself, and the CLI's last moments once the
    transaction returned, where a CI run caught exit 5 with 4.1.1 committed and serving):
    the run finishes and exits 0; likewise a rollback signalled once it is recorded."""
    for point in ("committed", "finished"):
        spec = f"{point}={action}"
        p = install("--root", single.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": spec})
        if action != "hup":  # a hung-up run's terminal is gone; its status keeps the line
            assert f"{SIGNALS[action]} received after the commit; finishing it" in p.stderr, (spec, p.stderr)
        assert settle(single, p, expected, "4.0.1", "4.1.1", spec, SIGNALS[action]) == "new", spec
    # and the operator's rollback, signalled once it has returned: done, exit 0
    assert install("--root", single.root, "apply", bundle).returncode == 0
    q = install("--root", single.root, "rollback", env={"JUMPKIT_FAILPOINT": f"finished={action}"})
    assert q.returncode == 0, q.stderr
    assert state_of(single)[::2] == ("rolled-back", "rolled-back")
    assert_exactly(single, expected, "old", "4.0.1", f"rollback, then {action}")


ROLLBACK_POINTS = [f"{where}:{step}" for step in STEPS for where in ("undo", "after-undo")]
SECOND_SIGNAL_POINTS = ["undo:health", "undo:swap-files", "after-undo:swap-configs", "undo:stop-services",
                        "after-undo:backup-db"]  # fmt: skip


@pytest.mark.parametrize("action", ["int", "term"])
def test_signal_during_a_rollback_is_deferred(
    action: str, single: Sandbox, bundle: Path, expected: dict[str, object]
) -> None:
    """At every failpoint of an operator's rollback of a finished apply, and as a second
    signal during the rollback an earlier signal started: the rollback finishes first."""
    for point in subset(ROLLBACK_POINTS, action):
        assert install("--root", single.root, "apply", bundle).returncode == 0
        q = install("--root", single.root, "rollback", env={"JUMPKIT_FAILPOINT": f"{point}={action}"})
        assert q.returncode == 0, f"{point}: {q.stderr}"
        assert state_of(single)[::2] == ("rolled-back", "rolled-back"), point
        assert_exactly(single, expected, "old", "4.0.1")
        count(f"signal matrix: {SIGNALS[action]} at a failpoint of a rollback (deferred; exactly old)")
    for point in SECOND_SIGNAL_POINTS:
        spec = f"run:swap-configs={action},{point}={action}"
        p = install("--root", single.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": spec})
        assert settle(single, p, expected, "4.0.1", "4.1.1", spec, SIGNALS[action]) == "old"
        count(f"signal matrix: {SIGNALS[action]} twice, the second during the rollback (exactly old)")


def test_signals_at_random_instants(single: Sandbox, bundle: Path, expected: dict[str, object]) -> None:
    """SIGINT, SIGTERM or SIGHUP from outside, wherever the run happens to be: aimed over
    the whole run and, every other time, into the part after the journal's first record."""
    rng = random.Random(SEED)
    window = float(expected["apply_seconds"])  # type: ignore[arg-type]
    journal = single.root / "var/lib/jumpkit/demo-manager/journal.jsonl"
    tally = {"old": 0, "new": 0}
    for n in range(RANDOM_SIGNALS):
        sig = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
        after_journal = n % 2 == 1
        delay = rng.uniform(0.0, 0.3) if after_journal else rng.uniform(0.3, window * 1.05)
        journal.unlink(missing_ok=True)  # the last run's record: aim at this run's first
        proc = subprocess.Popen(
            [sys.executable, "-m", "installer.cli", "--root", str(single.root), "apply", str(bundle)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        if after_journal:
            while proc.poll() is None and not (journal.exists() and journal.stat().st_size):
                time.sleep(0.001)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        what = f"seed {SEED}, {sig.name} {n} at {delay:.3f}s" + (
            " after the journal began" if after_journal else ""
        )
        rc = proc.returncode
        if rc == 0 and "nothing to do" in out:
            raise AssertionError(f"{what}: the sandbox was not at 4.0.1")
        tally[settle(single, (rc, err), expected, "4.0.1", "4.1.1", what, None)] += 1
        count("random stop signals during apply (exactly old or new)")
    print(f"\nseed {SEED}: {tally['old']} rolled back, {tally['new']} finished")
