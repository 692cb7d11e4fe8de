"""SIGKILL the installer at every step boundary (and inside the swap), then resume to
exactly 4.1.1, or roll back to exactly 4.0.1: files, symlinks, modes and the service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from installer.steps import apply_steps
from tests.helpers import Sandbox, db_state, install, sqlite_url, tree_hash

STEPS = [s.name for s in apply_steps()]
CRASH_POINTS = [f"{where}:{step}" for step in STEPS for where in ("begin", "run", "done")] + [
    "swap:files@1",
    "swap:files@4",
    "swap:configs@2",
    "migrate:revision@1",
    "migrate:revision@2",
    "commit",
    "committed",
]


@pytest.fixture(scope="module")
def expected(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], port: int, bundle: Path
) -> dict[str, str]:
    """Tree hashes of a clean 4.0.1 and of a clean apply to 4.1.1."""
    from tests.helpers import make_sandbox

    sb = make_sandbox("4.0.1", keys["pub"], port)
    try:
        old, old_db = tree_hash(sb.root), db_state(sqlite_url(sb.root))
        p = install("--root", sb.root, "apply", bundle)
        assert p.returncode == 0, p.stderr
        return {
            "old": old,
            "old_db": old_db,
            "new": tree_hash(sb.root),
            "new_db": db_state(sqlite_url(sb.root)),
        }
    finally:
        sb.destroy()


def crash(sb: Sandbox, bundle: Path, point: str) -> None:
    p = install("--root", sb.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": point})
    assert p.returncode == -9, f"failpoint {point} did not fire: rc={p.returncode} {p.stderr}"
    st = install("--root", sb.root, "status", "--json")
    assert '"status": "working"' in st.stdout


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_then_resume(
    point: str, sandbox: Callable[..., Sandbox], bundle: Path, expected: dict[str, object]
) -> None:
    sb = sandbox()
    crash(sb, bundle, point)
    # a new apply refuses while the journal holds an unfinished one
    p = install("--root", sb.root, "apply", bundle)
    # (after the commit record the journal is complete: pre-flight refuses the new version)
    assert p.returncode == 4 and ("resume" in p.stderr or point == "committed")
    p = install("--root", sb.root, "resume")
    assert p.returncode == 0, p.stderr
    assert tree_hash(sb.root) == expected["new"]
    assert db_state(sqlite_url(sb.root)) == expected["new_db"]
    assert sb.wait_version("4.1.1") == "4.1.1"


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_then_rollback(
    point: str, sandbox: Callable[..., Sandbox], bundle: Path, expected: dict[str, object]
) -> None:
    sb = sandbox()
    crash(sb, bundle, point)
    p = install("--root", sb.root, "rollback")
    assert p.returncode == 0, p.stderr
    assert tree_hash(sb.root) == expected["old"]
    assert db_state(sqlite_url(sb.root)) == expected["old_db"]
    assert sb.wait_version("4.0.1") == "4.0.1"


@pytest.mark.parametrize("point", ["undo:swap-files", "after-undo:swap-configs", "undo:stop-services"])
def test_crash_during_rollback_then_rollback_again(
    point: str, sandbox: Callable[..., Sandbox], bundle: Path, expected: dict[str, object]
) -> None:
    sb = sandbox()
    crash(sb, bundle, "done:start-services")
    p = install("--root", sb.root, "rollback", env={"JUMPKIT_FAILPOINT": point})
    assert p.returncode == -9
    p = install("--root", sb.root, "rollback")
    assert p.returncode == 0, p.stderr
    assert tree_hash(sb.root) == expected["old"]
    assert db_state(sqlite_url(sb.root)) == expected["old_db"]
    assert sb.wait_version("4.0.1") == "4.0.1"


def test_crash_point_count() -> None:
    print(f"\ncrash points exercised: {len(CRASH_POINTS)} x (resume, rollback) + 3 during rollback")
    assert len(CRASH_POINTS) >= 3 * len(STEPS)
