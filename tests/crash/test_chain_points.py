"""Crash points inside a chain apply (3.4.2 -> 4.0.1 -> 4.1.1 -> 4.2.0 with one outage):
resume reaches exactly 4.2.0, rollback exactly 3.4.2, across the jumps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.counts import count
from tests.crash.common import assert_exactly
from tests.helpers import Sandbox, install

CHAIN_POINTS = [
    "done:stop-services",
    "run:swap-files#1",
    "done:migrate#1",
    "swap:files@6",  # inside the second jump's swap (the first swaps 4 files)
    "migrate:revision@3",  # between the two revisions of the second jump
    "begin:swap-configs#3",
    "done:hooks-post#3",
    "service:started:demo-manager",
    "begin:health",
    "commit",
]


def crash(sb: Sandbox, bundles: list[Path], point: str) -> None:
    p = install("--root", sb.root, "apply", *bundles, env={"JUMPKIT_FAILPOINT": point})
    assert p.returncode == -9, f"failpoint {point} did not fire: rc={p.returncode} {p.stderr}"


@pytest.mark.parametrize("point", CHAIN_POINTS)
def test_chain_crash_then_resume(
    point: str, sandbox: Callable[..., Sandbox], chain_bundles: list[Path], chain_expected: dict[str, object]
) -> None:
    sb = sandbox("3.4.2")
    crash(sb, chain_bundles, point)
    p = install("--root", sb.root, "resume")
    assert p.returncode == 0, p.stderr
    assert_exactly(sb, chain_expected, "new", "4.2.0")
    count("crash points exercised (kill in a chain apply, then resume)")


@pytest.mark.parametrize("point", CHAIN_POINTS)
def test_chain_crash_then_rollback(
    point: str, sandbox: Callable[..., Sandbox], chain_bundles: list[Path], chain_expected: dict[str, object]
) -> None:
    sb = sandbox("3.4.2")
    crash(sb, chain_bundles, point)
    p = install("--root", sb.root, "rollback")
    assert p.returncode == 0, p.stderr
    assert_exactly(sb, chain_expected, "old", "3.4.2")
    count("crash points exercised (kill in a chain apply, then rollback)")
