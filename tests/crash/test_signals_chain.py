"""SIGINT at every failpoint of a chain apply, SIGTERM at every other one (3.4.2 -> 4.2.0, one outage):
each run ends exactly at 3.4.2 with exit 5, status and journal rolled back (see
test_signals.py; a module of its own so that its sandbox never shares the port)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from installer.txunits import unit_layout
from tests.counts import count
from tests.crash.test_chain_points import CHAIN_POINTS
from tests.crash.test_signals import SIGNALS, settle, subset
from tests.helpers import Sandbox, install, make_sandbox

CHAIN = sorted({*CHAIN_POINTS, *(f"run:{name}" for name, _, _ in unit_layout(3))})


@pytest.fixture(scope="module")
def chained(keys: dict[str, Path], port: int, chain_expected: dict[str, object]) -> Iterator[Sandbox]:
    sb = make_sandbox("3.4.2", keys["pub"], port)
    yield sb
    sb.destroy()


@pytest.mark.parametrize("action", ["int", "term"])
def test_signal_at_every_failpoint_of_a_chain(
    action: str, chained: Sandbox, chain_bundles: list[Path], chain_expected: dict[str, object]
) -> None:
    for point in subset(CHAIN, action):
        spec = f"{point}={action}"
        p = install("--root", chained.root, "apply", *chain_bundles, env={"JUMPKIT_FAILPOINT": spec})
        assert settle(chained, p, chain_expected, "3.4.2", "4.2.0", spec, SIGNALS[action]) == "old", spec
        count(f"signal matrix: {SIGNALS[action]} at a failpoint of a chain apply (exactly old)")
