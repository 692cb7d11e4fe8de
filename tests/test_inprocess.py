"""Apply logic in one process: the transaction, journal, rollback and ``plan`` against the
in-process service manager of tests/simulator.py (no supervisord, no subprocess), so each
case takes about a second. What only real parts show (signals, crashes, supervisord,
systemd, the frozen binary) stays in the end-to-end tests."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from installer.engine import Engine
from installer.errors import JumpkitError
from installer.options import Options
from tests.helpers import Sandbox, db_state, sqlite_url, tree_diff, tree_listing
from tests.simulator import SimulatedServices


@pytest.fixture
def simulated(
    sandbox: Callable[..., Sandbox],
) -> Iterator[Callable[[str], tuple[Sandbox, SimulatedServices]]]:
    made: list[SimulatedServices] = []

    def make(version: str = "4.0.1") -> tuple[Sandbox, SimulatedServices]:
        sb = sandbox(version, supervise=False)
        made.append(sim := SimulatedServices(sb.root, sb.port).up())
        return sb, sim

    yield make
    for sim in made:
        sim.close()


def engine(sb: Sandbox, sim: SimulatedServices) -> Engine:
    return Engine(Options(root=sb.root), services=sim.factory)


def served(sb: Sandbox) -> str:
    with urllib.request.urlopen(f"{sb.url}/version", timeout=2) as r:
        return str(r.read().decode().strip())


def test_apply_stops_once_and_starts_the_new_files(
    simulated: Callable[..., tuple[Sandbox, SimulatedServices]], bundle: Path
) -> None:
    sb, sim = simulated()
    doc = engine(sb, sim).apply([bundle])
    assert doc.status == "finished"
    assert sim.events == ["stop demo-manager", "start demo-manager@4.1.1"]
    assert served(sb) == "4.1.1"
    assert db_state(sqlite_url(sb.root))["alembic_version"] == (["version_num"], [("0004",)])


@pytest.mark.parametrize(
    ("fault", "says", "events"),
    [
        # the new version does not start: roll back, and the old files start again
        ("fail_start", "exited at once",
         ["stop demo-manager", "start demo-manager failed", "stop demo-manager", "start demo-manager@4.0.1"]),
        # the old version does not stop in time: abort before any file is touched
        ("hang_stop", "did not stop", ["stop demo-manager", "start demo-manager: already running"]),
    ],
)  # fmt: skip
def test_a_service_fault_leaves_exactly_the_old_manager(
    simulated: Callable[..., tuple[Sandbox, SimulatedServices]], bundle: Path, fault: str, says: str,
    events: list[str],
) -> None:  # fmt: skip
    sb, sim = simulated()
    before = tree_listing(sb.root)
    getattr(sim, fault).add("demo-manager")
    with pytest.raises(JumpkitError) as e:
        engine(sb, sim).apply([bundle])
    assert e.value.exit_code == 5 and says in e.value.message, e.value.message
    assert sim.events == events
    assert served(sb) == "4.0.1"
    assert tree_listing(sb.root) == before, tree_diff(before, tree_listing(sb.root))


def test_rollback_after_a_finished_apply(
    simulated: Callable[..., tuple[Sandbox, SimulatedServices]], bundle: Path
) -> None:
    sb, sim = simulated()
    before, db = tree_listing(sb.root), db_state(sqlite_url(sb.root))
    engine(sb, sim).apply([bundle])
    doc = engine(sb, sim).rollback()
    assert doc.status == "rolled-back"
    assert sim.events[2:] == ["stop demo-manager", "start demo-manager@4.0.1"]
    assert tree_listing(sb.root) == before and db_state(sqlite_url(sb.root)) == db


def test_plan_asks_no_service_to_do_anything(
    simulated: Callable[..., tuple[Sandbox, SimulatedServices]], bundle: Path
) -> None:
    sb, sim = simulated()
    before = tree_listing(sb.root)
    engine(sb, sim).plan([bundle])
    assert sim.events == [] and tree_listing(sb.root) == before


def test_a_chain_has_one_stop_and_one_start(
    simulated: Callable[..., tuple[Sandbox, SimulatedServices]], chain_bundles: list[Path]
) -> None:
    sb, sim = simulated("3.4.2")
    doc = engine(sb, sim).apply(chain_bundles)
    assert doc.status == "finished"
    assert sim.events == ["stop demo-manager", "start demo-manager@4.2.0"]
    assert served(sb) == "4.2.0"
