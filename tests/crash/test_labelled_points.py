"""SIGKILL at every failpoint of an apply to a root with an SELinux policy, then resume or
rollback: every label, owner, mode and content exactly as after a clean apply, or as
before. Each point is recovered one way, resume and rollback alternately: both ways are
run at every point by test_points.py (where tree_listing compares owners and labels too)
and on the systemd root; what this matrix adds is labels that a policy gives."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.counts import count
from tests.crash.common import recover_after_kill
from tests.crash.test_points import CRASH_POINTS
from tests.helpers import Sandbox, db_state, install, sqlite_url, tree_diff, tree_listing
from tests.selinux import LibSelinux, labelled, write_policy

CASES = [(point, ("resume", "rollback")[i % 2]) for i, point in enumerate(CRASH_POINTS)]


@pytest.fixture(scope="module")
def labelled_expected(keys: dict[str, Path], port: int, bundle: Path) -> dict[str, object]:
    from tests.helpers import make_sandbox

    sb = make_sandbox("4.0.1", keys["pub"], port)
    try:
        LibSelinux(write_policy(sb.root)).restorecon(sb.root)
        old = tree_listing(sb.root), db_state(sqlite_url(sb.root))
        assert install("--root", sb.root, "apply", bundle).returncode == 0
        return {"old": old, "new": (tree_listing(sb.root), db_state(sqlite_url(sb.root)))}
    finally:
        sb.destroy()


@pytest.mark.parametrize(("point", "recover"), CASES)
def test_crash_matrix_on_a_labelled_root(
    point: str,
    recover: str,
    sandbox: Callable[..., Sandbox],
    bundle: Path,
    labelled_expected: dict[str, object],
) -> None:
    """SIGKILL at every failpoint of an apply to a labelled root, then resume or rollback:
    every label (and owner, mode, content) exactly as after a clean apply, or as before."""
    sb, _ = labelled(sandbox)
    p = install("--root", sb.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": point})
    assert p.returncode == -9, p.stderr
    new_files = labelled_expected["new"][0]  # type: ignore[index]
    recover_after_kill(
        lambda *a: install("--root", sb.root, *a), recover, bundle, lambda: tree_listing(sb.root) == new_files
    )
    files, db = labelled_expected["new" if recover == "resume" else "old"]  # type: ignore[misc]
    now = tree_listing(sb.root)
    assert now == files, f"kill at {point}, {recover}:\n{tree_diff(files, now)}"
    assert db_state(sqlite_url(sb.root)) == db
    count(f"labelled-root crash matrix: kill at a failpoint, then {recover} (labels exact)")
