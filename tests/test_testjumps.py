"""``bundle-build test-jumps`` (issue 24): the demo product's every jump and its chain
pass through the frozen installer; a stray file left by a rollback, a broken downgrade
and a new version that fails health each fail the matrix at the right cell."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.helpers import SPECS, build

CELLS = ["build", "apply", "health", "version", "schema", "rollback", "exact"]


def test_every_demo_jump_and_the_chain_pass(frozen: Path, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    p = build("test-jumps", "--specs", SPECS, "--all", "--installer", frozen, "--junit", junit, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["ok"] and doc["cells"] == CELLS
    names = [c["case"] for c in doc["cases"]]
    assert names == ["3.4.2 -> 4.0.1", "4.0.1 -> 4.1.1", "4.1.1 -> 4.2.0", "3.4.2 -> 4.2.0 (3 jumps)"]
    for c in doc["cases"]:
        assert c["cells"] == dict.fromkeys(CELLS, "pass"), c
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "28" and suite.get("failures") == "0"
    # the upgrade-path site shows this run: each jump's own case and the chain through it
    (tmp_path / "results.json").write_text(p.stdout)
    site = tmp_path / "site"
    p = build(
        "site", "--specs", SPECS, "--out", site, "--dist", tmp_path, "--results", tmp_path / "results.json"
    )
    assert p.returncode == 0, p.stderr
    page = (site / "jumps/4.0.1-to-4.1.1.html").read_text()
    assert "<td>4.0.1 -&gt; 4.1.1</td>" in page and "<td>3.4.2 -&gt; 4.2.0 (3 jumps)</td>" in page
    assert page.count('<td class="pass">ok</td>') == 2 * len(CELLS)


DATA_DEPENDENT = (
    "if op.get_bind().execute(sa.text('SELECT count(*) FROM items')).scalar():\n"
    "        raise RuntimeError('no way back with data')\n"
)


def _broken(tmp_path: Path, downgrade: str | None = DATA_DEPENDENT, stray: bool = True) -> Path:
    """The demo with up to three mistakes, one per jump (the downgrade fails only on a
    database that holds rows: the build's rehearsal, on an empty one, lets it through)."""
    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs, symlinks=True)
    d = specs / "demo-manager"
    if stray:  # 3.4.2 -> 4.0.1: a post hook leaves a file that no undo removes
        (d / "jumps/stray.sh").write_text("#!/bin/sh\necho left > opt/demo-manager/stray.txt\n")
        (d / "jumps/stray.sh").chmod(0o755)
        jump = d / "jumps/3.4.2-4.0.1.yaml"
        jump.write_text(jump.read_text() + "hooks:\n  - {name: stray, when: post, script: stray.sh}\n")
    if downgrade:  # 4.0.1 -> 4.1.1: its migration's downgrade fails (jumpkit restores the backup)
        rev = d / "releases/4.1.1/migrations/main/versions/0004_items_title.py"
        rev.write_text(rev.read_text().replace("def downgrade():\n", "def downgrade():\n    " + downgrade))
    # 4.1.1 -> 4.2.0: the new version reports another version: its health check fails
    init = d / "releases/4.2.0/root/opt/demo-manager/lib/demo_manager/__init__.py"
    init.write_text(init.read_text().replace('"4.2.0"', '"9.9.9"'))
    return specs


def test_each_mistake_fails_its_cell(frozen: Path, tmp_path: Path) -> None:
    """One run over the three broken jumps: the human lines name the case and the check;
    the JUnit XML holds every cell (failure, skipped or passed)."""
    specs = _broken(tmp_path)
    junit = tmp_path / "junit.xml"
    p = build("test-jumps", "--specs", specs, "--installer", frozen, "--junit", junit)
    assert p.returncode == 1, p.stdout + p.stderr
    cells: dict[str, dict[str, str]] = {}
    why: dict[str, str] = {}
    for tc in ET.parse(junit).getroot():
        failure = tc.find("failure")
        state = "fail" if failure is not None else "skip" if tc.find("skipped") is not None else "pass"
        cells.setdefault(str(tc.get("classname")), {})[str(tc.get("name"))] = state
        if failure is not None:
            why[str(tc.get("classname"))] = str(failure.get("message"))
    stray, downgrade, health = cells["3.4.2 -> 4.0.1"], cells["4.0.1 -> 4.1.1"], cells["4.1.1 -> 4.2.0"]
    assert stray["rollback"] == "pass" and stray["exact"] == "fail", stray
    assert "+opt/demo-manager/stray.txt" in why["3.4.2 -> 4.0.1"]
    assert downgrade["schema"] == "pass" and downgrade["rollback"] == "fail" and downgrade["exact"] == "skip"
    assert "a downgrade failed" in why["4.0.1 -> 4.1.1"]
    assert health["build"] == "pass" and health["apply"] == "fail", health
    assert all(v == "skip" for k, v in health.items() if k not in ("build", "apply"))
    lines = p.stderr.splitlines()
    assert "bundle-build: test-jumps: 3.4.2 -> 4.0.1: exact: tree differs from the fresh from-release: " \
           "+opt/demo-manager/stray.txt" in lines, p.stderr  # fmt: skip
    assert any(
        ln.startswith("bundle-build: test-jumps: 4.0.1 -> 4.1.1: rollback: a downgrade failed")
        for ln in lines
    )
    health_line = "bundle-build: test-jumps: 4.1.1 -> 4.2.0: apply: exit 5"
    assert any(ln.startswith(health_line) and "health check 'version'" in ln for ln in lines), p.stderr


def test_a_jump_whose_bundle_does_not_build_fails_at_build(frozen: Path, tmp_path: Path) -> None:
    """A downgrade that always fails is caught by the build's rehearsal: the build cell."""
    specs = _broken(tmp_path, downgrade="raise RuntimeError('no way back')\n")
    p = build(
        "test-jumps", "--specs", specs, "--installer", frozen, "--from", "4.0.1", "--to", "4.1.1", "--json"
    )
    assert p.returncode == 1
    (case,) = json.loads(p.stdout)["cases"]
    assert case["cells"] == {"build": "fail", **dict.fromkeys(CELLS[1:], "skip")}, case
    assert "rehearsal of main 0002 -> 0004 failed" in case["failure"]


def test_rpm_format_installs_each_rpm_and_sees_a_failed_posttrans(frozen: Path, tmp_path: Path) -> None:
    """--format rpm: rpm -U into each sandbox (chrooted %posttrans), rollback, rpm -e, exact;
    the chain is its RPMs one after another. The 4.2.0 that fails its health check makes
    rpm exit 0 (a failed %posttrans does not fail rpm): the installer's status fails it."""
    specs = _broken(tmp_path, downgrade=None, stray=False)
    p = build("test-jumps", "--specs", specs, "--all", "--format", "rpm", "--installer", frozen, "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    doc = {c["case"]: c for c in json.loads(p.stdout)["cases"]}
    assert list(doc) == ["3.4.2 -> 4.0.1", "4.0.1 -> 4.1.1", "4.1.1 -> 4.2.0", "3.4.2 -> 4.2.0 (3 RPMs)"]
    for name in ("3.4.2 -> 4.0.1", "4.0.1 -> 4.1.1"):
        assert doc[name]["cells"] == dict.fromkeys(CELLS, "pass"), doc[name]
    for name in ("4.1.1 -> 4.2.0", "3.4.2 -> 4.2.0 (3 RPMs)"):
        case = doc[name]
        assert case["cells"]["build"] == "pass" and case["cells"]["apply"] == "fail", case
        assert case["failure"].startswith(
            "apply: rpm -U demo-manager-upgrade-4.2.0-from4.1.1.x86_64.rpm exited 0 but the apply "
            "4.1.1 -> 4.2.0 did not finish: rolled-back"
        ), case["failure"]


def test_bad_format_is_one_line_and_exit_2(tmp_path: Path) -> None:
    p = build("test-jumps", "--specs", SPECS, "--format", "tar")
    assert (
        p.returncode == 2 and p.stderr.strip() == "bundle-build test-jumps: --format 'tar': one of zip, rpm"
    )
