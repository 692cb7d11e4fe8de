"""Fleet rollout (issue 10) over real SSH: three manager hosts, each a network namespace with
its own sshd, root and supervisord (tests/fleet.py), upgraded by `bundle-build rollout`
through ansible-runner with the frozen installer taken out of the release bundle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.rollout import Host, plan_order
from tests.fleet import Fleet, FleetHost
from tests.helpers import build, free_port

STATE = "var/lib/jumpkit/demo-manager"


@pytest.fixture
def fleet_factory(keys: dict[str, Path]) -> Iterator[Any]:
    made: list[Fleet] = []

    def factory(**kw: Any) -> Fleet:
        f = Fleet.create(3, keys["pub"], free_port(), **kw)
        made.append(f)
        return f

    yield factory
    for f in made:
        f.close()


def rollout(fleet: Fleet, bundle: Path, pub: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    assert fleet.inventory is not None
    p = build("rollout", "--inventory", fleet.inventory, "--bundle", bundle, "--trust", pub, "--json", *extra)
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        raise AssertionError(
            f"no JSON (exit {p.returncode}): {p.stdout[-2000:]} {p.stderr[-3000:]}"
        ) from None
    return p.returncode, doc


def hosts(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in doc["hosts"]}


def journal(h: FleetHost) -> list[dict[str, Any]]:
    path = h.root / STATE / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stop_ts(h: FleetHost) -> float:
    """When this host's services stopped (its apply journal)."""
    return next(r["ts"] for r in journal(h) if r.get("event") == "begin" and r["step"] == "stop-services")


def staged_ts(h: FleetHost) -> float:
    return (h.root / STATE / "staging/demo-manager-4.0.1-to-4.1.1/.complete").stat().st_mtime


def cluster_log(h: FleetHost) -> list[list[str]]:
    path = h.root / "var/log/demo-manager-cluster.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_leader_last_rollout_with_cluster_hooks(
    fleet_factory: Any, release_bundle: Path, keys: dict[str, Path]
) -> None:
    fleet = fleet_factory(leader=0)  # m1 leads: leader-last must reorder the inventory
    rc, doc = rollout(fleet, release_bundle, keys["pub"])
    assert rc == 0, doc
    assert doc["ok"] and doc["leader"] == "m1" and doc["order"] == ["m2", "m3", "m1"]
    # where the time went (issue 23): each ansible-playbook run, each task on each host
    assert [p["phase"] for p in doc["phases"]] == ["prepare", "pre,roll,post"], doc["phases"]
    assert all(p["seconds"] > 0 for p in doc["phases"])
    for r in doc["hosts"]:
        assert r["task_seconds"]["apply"] > 0 and "stage" in r["task_seconds"], r["task_seconds"]
    for h in fleet.hosts:
        assert h.installed() == "4.1.1" and h.served_version() == "4.1.1"
        r = hosts(doc)[h.name]
        assert (r["before"], r["after"], r["result"], r["status"]) == (
            "4.0.1",
            "4.1.1",
            "upgraded",
            "finished",
        )
        assert r["outage_seconds"] is not None and r["outage_seconds"] < 5
    m1, m2, m3 = fleet.hosts
    # recorded apply timestamps: leader last, one host at a time, every host staged first
    assert stop_ts(m2) < stop_ts(m3) < stop_ts(m1)
    assert max(staged_ts(h) for h in fleet.hosts) < min(stop_ts(h) for h in fleet.hosts)
    finished = {
        h.name: json.loads((h.root / STATE / "status.json").read_text())["finished"] for h in fleet.hosts
    }
    assert finished["m2"] < stop_ts(m3) and finished["m3"] < stop_ts(m1)
    # cluster-pre once on the leader before any node, node on each, cluster-post once after all
    entries = sorted((float(e[0]), e[1], e[2], e[5]) for h in fleet.hosts for e in cluster_log(h))
    assert [(what, host) for _, what, host, _ in entries] == [
        ("cluster-pre", "m1"),
        ("node", "m2"),
        ("node", "m3"),
        ("node", "m1"),
        ("cluster-post", "m1"),
    ]
    assert {e[5] for e in cluster_log(m1)} == {"pinned=m1"}  # the leader was pinned throughout
    assert not (m1.root / "var/lib/demo-manager/leader-candidates").exists()  # and unpinned after
    assert [c[3:5] for h in fleet.hosts for c in cluster_log(h)] == [["4.0.1", "4.1.1"]] * 5


def test_check_then_leader_first_then_nothing_left(
    fleet_factory: Any, release_bundle: Path, keys: dict[str, Path]
) -> None:
    fleet = fleet_factory(leader=1)  # m2 leads
    rc, doc = rollout(fleet, release_bundle, keys["pub"], "--check")
    assert rc == 0 and doc["check"] and doc["order"] == ["m1", "m3", "m2"], doc
    for h in fleet.hosts:  # a dry run stages, stops and applies nothing
        assert h.installed() == "4.0.1" and h.served_version() == "4.0.1"
        assert not (h.root / STATE / "staging").exists() and not journal(h)
        assert hosts(doc)[h.name]["result"] == "would upgrade"
    rc, doc = rollout(fleet, release_bundle, keys["pub"], "--order", "leader-first")
    assert rc == 0 and doc["order"] == ["m2", "m1", "m3"], doc
    m1, m2, m3 = fleet.hosts
    assert stop_ts(m2) < stop_ts(m1) < stop_ts(m3)
    assert {r["copied"] for r in doc["hosts"]} == {"cached"}  # copied by --check, checksum matched
    rc, doc = rollout(fleet, release_bundle, keys["pub"])
    assert rc == 0 and doc["order"] == [] and "already runs 4.1.1" in doc["summary"], doc
    assert {r["result"] for r in doc["hosts"]} == {"already"}
    assert [e[1] for h in fleet.hosts for e in cluster_log(h)].count("cluster-pre") == 1


def test_failure_on_second_host_stops_the_rollout(
    fleet_factory: Any, release_bundle: Path, keys: dict[str, Path]
) -> None:
    # m3 is second in leader-last order (m2, m3, m1); its apply fails its health step
    fail = 'jumpkit_env=\'{"JUMPKIT_FAILPOINT": "run:health=fail"}\''
    fleet = fleet_factory(leader=0, host_vars={"m3": fail})
    rc, doc = rollout(fleet, release_bundle, keys["pub"])
    assert rc == 5 and not doc["ok"], doc
    m1, m2, m3 = fleet.hosts
    r = hosts(doc)
    assert "stopped at m3: 1 of 3 host(s) upgraded to 4.1.1" in doc["summary"]
    assert (r["m2"]["result"], r["m2"]["after"]) == ("upgraded", "4.1.1")
    assert (r["m3"]["result"], r["m3"]["after"], r["m3"]["status"]) == (
        "failed, rolled back",
        "4.0.1",
        "rolled-back",
    )
    assert "health" in r["m3"]["error"]
    assert (r["m1"]["result"], r["m1"]["after"], r["m1"]["status"]) == ("staged", "4.0.1", "staged")
    assert m2.served_version() == "4.1.1"
    assert m3.installed() == "4.0.1" and m3.served_version() == "4.0.1"  # back and healthy
    assert m1.installed() == "4.0.1" and m1.served_version() == "4.0.1" and not journal(m1)
    assert (m1.root / STATE / "staging/demo-manager-4.0.1-to-4.1.1/.complete").exists()
    steps = [e[1] for h in fleet.hosts for e in cluster_log(h)]
    assert sorted(steps) == ["cluster-pre", "node"]  # node on m2 only; no cluster-post
    assert not (m1.root / "var/lib/demo-manager/leader-candidates").exists()  # unpinned anyway
    # the fleet table, gathered through Ansible
    assert fleet.inventory is not None
    p = build("rollout", "status", "--inventory", fleet.inventory, "--json")
    assert p.returncode == 0, p.stderr
    table = {h["name"]: (h["after"], h["status"], h["result"]) for h in json.loads(p.stdout)["hosts"]}
    assert table == {
        "m1": ("4.0.1", "staged", "reachable"),
        "m2": ("4.1.1", "finished", "reachable"),
        "m3": ("4.0.1", "rolled-back", "reachable"),
    }


def test_failed_cluster_hooks_unpin_the_leader(
    fleet_factory: Any, release_bundle: Path, keys: dict[str, Path]
) -> None:
    """pin-leader and cluster-pre run in one installer start, then roll and post in the same
    ansible-playbook run: a failed cluster-pre must still end that run before any host
    stops, and a failed cluster-post must still unpin the leader (issue 23 joined them)."""
    fail = 'jumpkit_env=\'{"JUMPKIT_FAILPOINT": "cluster:%s=fail"}\''
    fleet = fleet_factory(leader=0, host_vars={"m1": fail % "cluster-pre"})
    rc, doc = rollout(fleet, release_bundle, keys["pub"])
    assert rc == 5 and "pinning or cluster-pre failed on m1: nothing was stopped" in doc["summary"], doc
    assert [p["phase"] for p in doc["phases"]] == ["prepare", "pre,roll,post", "unpin,status"]
    err = hosts(doc)["m1"]["error"]
    assert err.startswith("cluster-pre: ") and "failpoint fired" in err, err
    for h in fleet.hosts:
        assert h.installed() == "4.0.1" and h.served_version() == "4.0.1" and not journal(h)
        assert hosts(doc)[h.name]["status"] == "staged"
    m1 = fleet.hosts[0]
    assert not (m1.root / "var/lib/demo-manager/leader-candidates").exists()  # pinned, then unpinned
    assert cluster_log(m1) == []
    fleet.close()  # the next fleet takes the same addresses

    fleet = fleet_factory(leader=0, host_vars={"m1": fail % "cluster-post"})
    rc, doc = rollout(fleet, release_bundle, keys["pub"])
    assert rc == 5 and "every host is on 4.1.1, but cluster-post failed on m1" in doc["summary"], doc
    assert [p["phase"] for p in doc["phases"]] == ["prepare", "pre,roll,post"]
    r = hosts(doc)
    assert r["m1"]["error"].startswith("cluster-post: ") and "failpoint fired" in r["m1"]["error"], r["m1"]
    for h in fleet.hosts:
        assert h.installed() == "4.1.1" and h.served_version() == "4.1.1"
        assert (r[h.name]["result"], r[h.name]["after"], r[h.name]["status"]) == (
            "upgraded",
            "4.1.1",
            "finished",
        )
    m1 = fleet.hosts[0]
    assert not (m1.root / "var/lib/demo-manager/leader-candidates").exists()  # unpinned all the same
    assert [e[1] for h in fleet.hosts for e in cluster_log(h)].count("cluster-post") == 0


def test_unreachable_host_stops_before_any_outage(
    fleet_factory: Any, release_bundle: Path, keys: dict[str, Path]
) -> None:
    # no such network; give up after 3 s
    fleet = fleet_factory(leader=0, host_vars={"m2": "ansible_host=10.213.250.2 ansible_timeout=3"})
    rc, doc = rollout(fleet, release_bundle, keys["pub"])
    assert rc == 5 and "nothing was stopped on any host" in doc["summary"], doc
    assert hosts(doc)["m2"]["result"] == "unreachable"
    for h in fleet.hosts:
        assert h.installed() == "4.0.1" and h.served_version() == "4.0.1" and not journal(h)


def test_refusals_change_nothing(
    tmp_path: Path, fleet_factory: Any, release_bundle: Path, bundle: Path, keys: dict[str, Path]
) -> None:
    inv = tmp_path / "inv.ini"
    inv.write_text("[managers]\nm1 ansible_host=10.213.250.9\n")
    p = build("rollout", "--inventory", inv, "--bundle", release_bundle)
    assert p.returncode == 2 and "--trust" in p.stderr
    p = build(
        "rollout", "--inventory", inv, "--bundle", release_bundle, "--trust", keys["pub"], "--order", "x"
    )
    assert p.returncode == 2 and "leader-last or leader-first" in p.stderr
    p = build("rollout", "--inventory", inv, "--bundle", release_bundle, "--trust", keys["evil_pub"])
    assert p.returncode == 3, p.stderr  # signature checked on the controller first
    p = build("rollout", "--inventory", inv, "--bundle", bundle, "--trust", keys["pub"])
    assert p.returncode == 1 and "development bundle" in p.stderr
    p = build(
        "rollout", "--inventory", inv, "--bundle", release_bundle, "--trust", keys["pub"], "--limit", "nope"
    )
    assert p.returncode == 2 and "no host" in p.stderr
    p = build("rollout", "status", "--inventory", tmp_path / "missing.ini")
    assert p.returncode == 2 and "does not exist" in p.stderr


def test_plan_order() -> None:
    hs = [
        Host("a", leader=False),
        Host("b", leader=True),
        Host("c", leader=False),
        Host("d", result="already"),
    ]
    assert plan_order(hs, "leader-last") == ["a", "c", "b"]
    assert plan_order(hs, "leader-first") == ["b", "a", "c"]
