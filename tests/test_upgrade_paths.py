"""Upgrade paths: MSR's version policy, the planner (demo graph and generated graphs),
bundle-build plan and chain builds, and chain applies with one outage."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from installer.errors import NoPath
from installer.graph import Graph, Policy, PolicyException, plan_chain, violations
from installer.sbom import ComponentChange
from installer.version import Version
from tests.crash.common import assert_exactly
from tests.helpers import SPECS, Sandbox, build, install, tree_hash

MSR = Policy()


@pytest.mark.parametrize(
    ("frm", "to", "allowed"),
    [
        ("4.0.1", "4.0.5", True),  # patch skip allowed
        ("4.0.1", "4.0.2", True),
        ("4.0.1", "4.1.1", True),  # next minor, any patch
        ("4.0.1", "4.2.0", False),  # minor skip refused
        ("3.4.2", "4.0.0", True),  # major to x+1.0.0
        ("3.4.2", "4.1.0", False),  # x+1.y+1 refused
        ("3.4.2", "4.0.1", False),  # x+1.0.1 refused (major lands on .0.0)
        ("3.4.2", "5.0.0", False),  # major skip refused
        ("4.1.1", "4.0.1", False),  # downgrade
        ("4.1.1", "4.1.1", False),
    ],
)
def test_msr_policy_table(frm: str, to: str, allowed: bool) -> None:
    assert (not violations(MSR, frm, to)) is allowed, violations(MSR, frm, to)


def test_rules_are_switchable_and_exceptions_need_a_reason() -> None:
    assert not violations(Policy(skip_minor=True), "4.0.1", "4.2.0")
    assert violations(Policy(skip_patch=False), "4.0.1", "4.0.5")
    assert not violations(Policy(major_to_zero=False), "3.4.2", "4.1.0")
    ex = Policy(exceptions=(PolicyException.model_validate({"from": "3.4.2", "to": "4.0.1", "reason": "x"}),))
    assert not violations(ex, "3.4.2", "4.0.1")
    with pytest.raises(ValueError):
        PolicyException.model_validate({"from": "3.4.2", "to": "4.0.1", "reason": ""})


def demo_specs_with(tmp_path: Path, jump: str, policy_extra: str = "") -> Path:
    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs)
    src = (specs / "demo-manager/jumps/4.1.1-4.2.0.yaml").read_text()
    frm, to = jump.split("-")
    (specs / f"demo-manager/jumps/{jump}.yaml").write_text(
        src.replace("from: 4.1.1", f"from: {frm}").replace("to: 4.2.0", f"to: {to}")
    )
    if policy_extra:
        p = specs / "demo-manager/product.yaml"
        p.write_text(p.read_text().replace("  exceptions:\n", "  exceptions:\n" + policy_extra))
    return specs


def test_builder_refuses_a_jump_that_breaks_the_policy(tmp_path: Path) -> None:
    specs = demo_specs_with(tmp_path, "4.0.1-4.2.0")
    assert "from: 4.0.1" in (specs / "demo-manager/jumps/4.0.1-4.2.0.yaml").read_text()
    p = build("--specs", specs, "--from", "4.0.1", "--to", "4.2.0", "--unsigned", "--out", tmp_path / "o")
    assert p.returncode == 2 and "skips minor version 4.1" in p.stderr and "policy.exceptions" in p.stderr
    # the planner ignores it: 4.0.1 -> 4.2.0 still goes through 4.1.1
    p = build("plan", "--specs", specs, "--from", "4.0.1", "--to", "4.2.0", "--json")
    assert [c["to"] for c in json.loads(p.stdout)["chain"]] == ["4.1.1", "4.2.0"]
    excepted = demo_specs_with(
        tmp_path / "x",
        "4.0.1-4.2.0",
        '    - {from: 4.0.1, to: 4.2.0, reason: "hotfix path for customer X"}\n',
    )
    p = build("--specs", excepted, "--from", "4.0.1", "--to", "4.2.0", "--unsigned", "--out", tmp_path / "o")
    assert p.returncode == 0, p.stderr
    p = build("plan", "--specs", excepted, "--from", "4.0.1", "--to", "4.2.0", "--json")
    chain = json.loads(p.stdout)["chain"]
    assert [{k: c[k] for k in ("from", "to", "bundle", "exception")} for c in chain] == [
        {"from": "4.0.1", "to": "4.2.0", "bundle": "demo-manager-4.0.1-to-4.2.0.zip",
         "exception": "hotfix path for customer X"}
    ]  # fmt: skip
    assert "+ packaging 25.0" in [ComponentChange.model_validate(c).line for c in chain[0]["changes"]]


def test_plan_prints_the_three_jump_chain() -> None:
    p = build("plan", "--specs", SPECS, "--from", "3.4.2", "--to", "4.2.0")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "demo-manager 3.4.2 -> 4.2.0: 3 jumps (required stop 4.0.1)"
    jumps = [ln for ln in p.stdout.splitlines()[1:] if re.match(r"  \d\. ", ln)]
    assert [ln.split()[1:4] for ln in jumps] == [
        ["3.4.2", "->", "4.0.1"], ["4.0.1", "->", "4.1.1"], ["4.1.1", "->", "4.2.0"]
    ]  # fmt: skip
    assert "policy exception: 4.0.0 was withdrawn" in p.stdout


@pytest.mark.parametrize(
    ("frm", "to", "why"),
    [
        ("4.2.0", "3.4.2", "is a downgrade"),
        ("4.2.0", "5.0.0", "no jump leaves 4.2.0"),
        ("2.0.0", "4.2.0", "2.0.0 is not a version of any jump"),
        ("3.4.2", "4.3.0", "no chain of jumps leads from 4.0.1 to 4.3.0"),
    ],
)
def test_plan_says_why_there_is_no_chain(frm: str, to: str, why: str) -> None:
    p = build("plan", "--specs", SPECS, "--from", frm, "--to", to)
    assert p.returncode == 4 and why in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    doc = json.loads(build("plan", "--specs", SPECS, "--from", frm, "--to", to, "--json").stdout)
    assert doc["ok"] is False and why in doc["error"]
    if frm == "3.4.2":
        assert doc["reachable"] == ["4.0.1", "4.1.1", "4.2.0"]


def test_a_required_stop_without_a_jump_is_named() -> None:
    g = Graph(jumps=(("1.0.0", "1.1.0"), ("1.1.0", "1.2.0")), required_stops=("1.1.5",),
              policy=Policy(skip_minor=True))  # fmt: skip
    with pytest.raises(NoPath, match=r"1\.1\.5 is a required stop"):
        plan_chain(g, "1.0.0", "1.2.0")


# --- generated graphs ------------------------------------------------------------------

VERSIONS = [f"{a}.{b}.{c}" for a, b, c in itertools.product(range(1, 4), range(3), range(2))]


def brute_force(g: Graph, frm: str, to: str) -> int | None:
    """Length of the shortest allowed chain visiting every required stop in between."""
    edges = g.edges()
    need = {s for s in g.required_stops if Version.parse(frm) < Version.parse(s) < Version.parse(to)}
    best: int | None = None
    stack = [(frm, [frm])]
    while stack:
        v, path = stack.pop()
        if v == to and need <= set(path):
            best = len(path) - 1 if best is None else min(best, len(path) - 1)
            continue
        for w in edges.get(v, []):
            stack.append((w, [*path, w]))
    return best


@settings(max_examples=300, deadline=None)
@given(
    jumps=st.sets(st.tuples(st.sampled_from(VERSIONS), st.sampled_from(VERSIONS)), max_size=25),
    stops=st.sets(st.sampled_from(VERSIONS), max_size=2),
    frm=st.sampled_from(VERSIONS),
    to=st.sampled_from(VERSIONS),
    skip_minor=st.booleans(),
)
def test_planner_on_generated_graphs(
    jumps: set[tuple[str, str]], stops: set[str], frm: str, to: str, skip_minor: bool
) -> None:
    """Any chain returned is valid (consecutive, defined, allowed, through every stop) and
    minimal; when none is returned, brute force finds none either."""
    g = Graph(
        jumps=tuple(sorted(jumps)), required_stops=tuple(sorted(stops)), policy=Policy(skip_minor=skip_minor)
    )
    want = brute_force(g, frm, to) if Version.parse(frm) < Version.parse(to) else None
    try:
        chain = plan_chain(g, frm, to)
    except NoPath:
        assert want is None
        return
    assert chain[0][0] == frm and chain[-1][1] == to
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chain))
    assert all(j in jumps and not violations(g.policy, *j) for j in chain)
    visited = {v for j in chain for v in j}
    assert all(s in visited for s in stops if Version.parse(frm) < Version.parse(s) < Version.parse(to))
    assert len(chain) == want


# --- chain apply -----------------------------------------------------------------------


def test_chain_apply_has_one_outage(
    sandbox: Callable[..., Sandbox], chain_bundles: list[Path], chain_expected: dict[str, object]
) -> None:
    sb = sandbox("3.4.2")
    p = install("--root", sb.root, "apply", *chain_bundles, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["status"] == "finished" and "3 jumps, one outage" in doc["summary"]
    assert_exactly(sb, chain_expected, "new", "4.2.0")
    journal = [
        json.loads(x)
        for x in (sb.root / "var/lib/jumpkit/demo-manager/journal.jsonl").read_text().splitlines()
    ]
    begun = [r["step"] for r in journal if r["event"] == "begin"]
    assert (
        begun.count("stop-services") == 1
        and begun.count("start-services") == 1
        and begun.count("health") == 1
    )
    assert [s for s in begun if s.startswith("migrate")] == ["migrate#1", "migrate#2", "migrate#3"]
    separate = chain_expected["separate_outages"]
    print(f"\nchain 3.4.2 -> 4.2.0: one outage {doc['outage_seconds']:.3f}s; three separate applies: "
          f"{' + '.join(f'{o:.3f}' for o in separate)} = {sum(separate):.3f}s")  # type: ignore[union-attr, arg-type]  # fmt: skip
    # rollback of the finished chain: back to 3.4.2 as one unit
    p = install("--root", sb.root, "rollback")
    assert p.returncode == 0, p.stderr
    assert_exactly(sb, chain_expected, "old", "3.4.2")


def test_failure_in_the_last_jump_rolls_the_whole_chain_back(
    sandbox: Callable[..., Sandbox], chain_bundles: list[Path], chain_expected: dict[str, object]
) -> None:
    sb = sandbox("3.4.2")
    p = install("--root", sb.root, "apply", *chain_bundles, env={"JUMPKIT_FAILPOINT": "run:migrate#3=fail"})
    assert p.returncode == 5, p.stderr
    assert "migrate#3 failed" in p.stderr and "rolled back to 3.4.2" in p.stderr
    assert_exactly(sb, chain_expected, "old", "3.4.2")


def test_bundles_that_do_not_form_a_chain_are_refused(
    sandbox: Callable[..., Sandbox], chain_bundles: list[Path]
) -> None:
    sb = sandbox("3.4.2", supervise=False)
    before = tree_hash(sb.root)
    p = install("--root", sb.root, "apply", chain_bundles[0], chain_bundles[2])
    assert p.returncode == 4 and "do not form a chain" in p.stderr
    p = install("--root", sb.root, "apply", chain_bundles[2])
    assert p.returncode == 4
    assert "the way from 3.4.2: bundle-install apply demo-manager-3.4.2-to-4.0.1.zip" in p.stderr
    assert tree_hash(sb.root) == before


def test_plan_of_a_chain_changes_nothing_and_estimates_one_outage(
    sandbox: Callable[..., Sandbox], chain_bundles: list[Path]
) -> None:
    sb = sandbox("3.4.2")
    before = tree_hash(sb.root)
    p = install("--root", sb.root, "plan", *chain_bundles, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert tree_hash(sb.root) == before and not (sb.root / "var/lib/jumpkit").exists()
    assert doc["from"] == "3.4.2" and doc["to"] == "4.2.0" and len(doc["chain"]) == 3
    names = [s["step"] for s in doc["steps"]]
    assert names.count("stop-services") == 1 and names.count("start-services") == 1
    assert [n for n in names if n.startswith("migrate")] == ["migrate#1", "migrate#2", "migrate#3"]
    actions = {(f["jump"], f["path"]): f["action"] for f in doc["files"]}
    assert actions[("4.0.1 -> 4.1.1", "opt/demo-manager/lib/demo_manager/legacy_tcp.py")] == "remove"
    assert actions[("4.0.1 -> 4.1.1", "opt/demo-manager/lib/demo_manager/metrics.py")] == "add"
    assert actions[("4.1.1 -> 4.2.0", "opt/demo-manager/VERSION")] == "replace"
    assert [d["to"] for d in doc["databases"]] == ["0002", "0004", "0005"]
    assert doc["preflight"]["ok"] is True and doc["drift"] == []
    # no apply measured here yet: one stop + one start at their 2 s caps, an upper bound,
    # and the migrations as the chain's rehearsals on a copy of this manager's data ran them
    est = doc["outage_estimate"]
    assert est["upper_bound"] is True and 4.0 <= est["seconds"] < 4.5, est
    assert est["basis"][-1] == "migrations as rehearsed on a copy of this manager's data", est
    rehearsed = [ln for ln in doc["preflight"]["passed"] if "rehearsed" in ln]
    assert len(rehearsed) == 3, doc["preflight"]  # each jump on what the one before left
    text = install("--root", sb.root, "plan", *chain_bundles).stdout
    assert "upgrades 3.4.2 -> 4.2.0 in 3 jumps, one outage" in text
    assert "estimated outage: at most 4." in text, text
    # after an apply (and its rollback) the estimate is what this manager measured
    assert install("--root", sb.root, "apply", *chain_bundles).returncode == 0
    measured = json.loads(install("--root", sb.root, "status", "--json").stdout)["outage_seconds"]
    assert install("--root", sb.root, "rollback").returncode == 0
    est = json.loads(install("--root", sb.root, "plan", *chain_bundles, "--json").stdout)["outage_estimate"]
    assert est["upper_bound"] is False and est["seconds"] < max(1.0, 3 * measured), (est, measured)
    assert est["basis"][0] == "stop, start and health as measured in the last 1 apply(s) on this manager"
