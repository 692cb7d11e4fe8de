"""SIGKILL from outside at random instants during ``apply`` (no failpoint: wherever the
process happens to be), then ``resume`` to exactly 4.1.1 on one copy and ``rollback`` to
exactly 4.0.1 on another. The seed is printed; JUMPKIT_CRASH_SEED replays a run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.counts import count
from tests.crash.common import recover_back, recover_forward
from tests.helpers import REPO, Sandbox

KILLS = 10  # ~8 s each; the 38 failpoints of test_points cover every boundary deterministically
# (14 until session 10: the suite neared its 30-minute budget when test-jumps came)
SEED = int(os.environ.get("JUMPKIT_CRASH_SEED", str(int(time.time()))))


def kill_at(sb: Sandbox, bundle: Path, delay: float, *, after_journal: bool) -> int | None:
    """Start apply, SIGKILL it ``delay`` seconds after its start (or after its journal's first
    record, which aims into the window where the manager changes); returns its exit code if
    it ended first."""
    journal = sb.root / "var/lib/jumpkit/demo-manager/journal.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "installer.cli", "--root", str(sb.root), "apply", str(bundle)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        if after_journal:
            while proc.poll() is None and not (journal.exists() and journal.stat().st_size):
                time.sleep(0.001)
        proc.wait(timeout=delay)
        return proc.returncode
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


@pytest.mark.parametrize("n", range(KILLS))
def test_random_kill(
    n: int, sandbox: Callable[..., Sandbox], bundle: Path, expected: dict[str, object]
) -> None:
    # the CLI needs ~0.5 s to import before it touches anything: aim past that, and a bit
    # beyond the measured apply so that some kills land after the commit
    # the even kills aim anywhere in the run; the odd ones into the part after the journal's
    # first record (the last ~0.3 s), where a crash leaves the most to repair
    window = float(expected["apply_seconds"])  # type: ignore[arg-type]
    after_journal = n % 2 == 1
    rng = random.Random(SEED * 1000 + n)
    delay = rng.uniform(0.0, 0.3) if after_journal else rng.uniform(0.3, window * 1.05)
    where = f"seed {SEED}, kill {n} at {delay:.3f}s " + (
        "after the journal began" if after_journal else f"of a {window:.2f}s apply"
    )
    # one sandbox at a time: they share the service port (so that tree hashes compare)
    a = sandbox()
    ended_a = kill_at(a, bundle, delay, after_journal=after_journal)
    forward = recover_forward(a, bundle, expected)
    a.destroy()
    b = sandbox()
    ended_b = kill_at(b, bundle, delay, after_journal=after_journal)
    journal = b.root / "var/lib/jumpkit/demo-manager/journal.jsonl"
    events = [json.loads(x)["event"] for x in journal.read_text().splitlines()] if journal.exists() else []
    try:
        back = recover_back(b, expected)
    except AssertionError as e:
        raise AssertionError(f"{where}: rollback copy: {e}; journal {events[-3:]}") from e
    print(f"\n{where}: {forward} / {back} (apply exit {ended_a}, {ended_b} when not killed)")
    count("random SIGKILLs during apply (resume + rollback copies)")
