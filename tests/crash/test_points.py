"""SIGKILL the installer at every failpoint (step boundaries, inside staging and the swap,
between schema revisions, between each service's stop and start), then on one copy
``resume`` to exactly 4.1.1 and on another ``rollback`` to exactly 4.0.1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from installer.steps import apply_steps
from tests.counts import count
from tests.crash.common import assert_exactly, recover_back, recover_forward, status
from tests.helpers import Sandbox, install

STEPS = [s.name for s in apply_steps()]
CRASH_POINTS = [f"{where}:{step}" for step in STEPS for where in ("begin", "run", "done")] + [
    "stage:member@1",
    "stage:member@5",
    "swap:files@1",
    "swap:files@4",
    "swap:configs@2",
    "migrate:revision@1",
    "migrate:revision@2",
    "service:stopped:demo-manager",
    "service:started:demo-manager",
    "commit",
    "committed",
]
ROLLBACK_POINTS = ["undo:swap-files", "after-undo:swap-configs", "undo:stop-services"]


def crash(sb: Sandbox, bundle: Path, point: str) -> None:
    p = install("--root", sb.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": point})
    assert p.returncode == -9, f"failpoint {point} did not fire: rc={p.returncode} {p.stderr}"


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_then_resume(
    point: str, sandbox: Callable[..., Sandbox], bundle: Path, expected: dict[str, object]
) -> None:
    sb = sandbox()
    crash(sb, bundle, point)
    if status(sb) == "working":
        # a new apply refuses while the journal holds an unfinished one
        p = install("--root", sb.root, "apply", bundle)
        assert p.returncode == 4 and "resume" in p.stderr, p.stderr
    recover_forward(sb, bundle, expected)
    count("crash points exercised (kill at a failpoint, then resume)")


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_then_rollback(
    point: str, sandbox: Callable[..., Sandbox], bundle: Path, expected: dict[str, object]
) -> None:
    sb = sandbox()
    crash(sb, bundle, point)
    recover_back(sb, expected)
    count("crash points exercised (kill at a failpoint, then rollback)")


@pytest.mark.parametrize("recover", ["resume", "rollback"])
def test_crash_between_the_journal_start_and_the_first_status(
    recover: str, sandbox: Callable[..., Sandbox], bundle: Path, expected: dict[str, object]
) -> None:
    """An apply journals its start, then writes status.json. Killed between the two (found
    by test_random_kills), resume said "no jumpkit state" while apply said "run resume":
    the state dir was found by its status.json alone. The crash at the first step's begin
    plus the status file taken away is that instant's state on disk."""
    sb = sandbox()
    crash(sb, bundle, f"begin:{STEPS[0]}")
    (sb.root / "var/lib/jumpkit/demo-manager/status.json").unlink()
    if recover == "resume":
        assert recover_forward(sb, bundle, expected) == "resumed"
    else:
        assert recover_back(sb, expected) == "rolled back"


@pytest.mark.parametrize("point", ROLLBACK_POINTS)
def test_crash_during_rollback_then_rollback_again(
    point: str, sandbox: Callable[..., Sandbox], bundle: Path, expected: dict[str, object]
) -> None:
    sb = sandbox()
    crash(sb, bundle, "done:start-services")
    p = install("--root", sb.root, "rollback", env={"JUMPKIT_FAILPOINT": point})
    assert p.returncode == -9
    p = install("--root", sb.root, "rollback")
    assert p.returncode == 0, p.stderr
    assert_exactly(sb, expected, "old", "4.0.1")
    count("crash points exercised (kill during a rollback, then rollback)")


def test_crash_point_count() -> None:
    total = len(CRASH_POINTS) + len(ROLLBACK_POINTS)
    print(f"\ncrash points: {len(CRASH_POINTS)} x (resume, rollback) + {len(ROLLBACK_POINTS)} in rollback")
    assert total >= 40
