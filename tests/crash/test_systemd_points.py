"""The crash and signal matrices on the systemd backend (a real systemd, the sandbox as
its /): every failpoint killed then resumed or rolled back, SIGINT and SIGTERM at every
failpoint; each ends exactly old or exactly new, with systemd's loaded view of the units
(file, state, enablement, drop-ins) agreeing and the service answering."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.counts import count
from tests.crash.common import recover_after_kill
from tests.crash.test_points import CRASH_POINTS
from tests.systemd import (
    SystemdSandbox,
    assert_exactly_sd,
    sd_tree,
)

pytestmark = pytest.mark.systemd


@pytest.mark.parametrize("recover", ["resume", "rollback"])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_then_recover_on_systemd(
    point: str,
    recover: str,
    sd_sandbox: Callable[..., SystemdSandbox],
    sd_bundle: Path,
    sd_expected: dict[str, object],
) -> None:
    """SIGKILL at the failpoint, then ``resume`` to exactly 4.1.1 or ``rollback`` to exactly
    4.0.1: files, database, the service answering, systemd's loaded units and links."""
    sb = sd_sandbox()
    p = sb.install("apply", sd_bundle, env={"JUMPKIT_FAILPOINT": point})
    assert p.returncode == -9, f"failpoint {point} did not fire: rc={p.returncode} {p.stderr}"  # type: ignore[attr-defined]
    new_tree = sd_expected["new"][0]  # type: ignore[index]
    recover_after_kill(sb.install, recover, sd_bundle, lambda: sd_tree(sb.root) == new_tree)  # type: ignore[arg-type]
    which, version = ("new", "4.1.1") if recover == "resume" else ("old", "4.0.1")
    assert_exactly_sd(sb, sd_expected, which, version, f"kill at {point}, {recover}")
    count(f"systemd crash matrix: kill at a failpoint, then {recover} (exactly {which}, systemd agreeing)")


@pytest.mark.parametrize("action", ["int", "term"])
def test_signal_at_every_failpoint_on_systemd(
    action: str, sd_sandbox: Callable[..., SystemdSandbox], sd_bundle: Path, sd_expected: dict[str, object]
) -> None:
    """SIGINT at every failpoint (SIGTERM at every other one) on one sandbox: before the
    commit record the run rolls back to exactly 4.0.1 (exit 5), after it it finishes."""
    sb = sd_sandbox()
    for point in CRASH_POINTS[:: 1 if action == "int" else 2]:
        spec = f"{point}={action}"
        p = sb.install("apply", sd_bundle, env={"JUMPKIT_FAILPOINT": spec})
        rc = p.returncode  # type: ignore[attr-defined]
        if rc == 0:
            assert point == "committed" or point.startswith("stage:"), f"{spec}: finished"
            assert_exactly_sd(sb, sd_expected, "new", "4.1.1", spec)
            q = sb.install("rollback")
            assert q.returncode == 0, q.stderr  # type: ignore[attr-defined]
        else:
            assert rc == 5, f"{spec}: rc {rc}: {p.stderr[-600:]}"  # type: ignore[attr-defined]
        assert_exactly_sd(sb, sd_expected, "old", "4.0.1", spec)
        count(f"systemd signal matrix: SIG{action.upper()} at a failpoint (exactly old or new)")
