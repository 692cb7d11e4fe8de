"""Bounded work while the lock is held (issue 20): graph planning at the graph caps, a
catastrophic-backtracking rule on RE2, and manifests at and over the entry caps. Times and
peak memory are printed for the record; the bounds asserted are an order of magnitude
above what was measured, to catch a return of super-linear work, not to gate speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from installer.codec import parse_manifest
from installer.errors import ManifestError
from installer.format import MAX_REMOVED, FileEntry, RewriteRule
from installer.graph import MAX_JUMPS, MAX_STOPS, Graph, Policy, plan_chain
from installer.swapplan import _rewrite
from tests.counts import count
from tests.helpers import REPO
from tests.hostile.corpus import read, write


def _graph(jumps: int, stops: int) -> Graph:
    """A chain of patch versions with short and long jumps (skip_patch allows both) and
    required stops spread along it."""
    n = jumps // 2
    edges = [(f"1.0.{i}", f"1.0.{i + 1}") for i in range(n)] + [
        (f"1.0.{i}", f"1.0.{i + 2}") for i in range(n)
    ]
    step = max(1, n // stops)
    required = [f"1.0.{i}" for i in range(step, n, step)][:stops]
    return Graph(jumps=tuple(edges[:jumps]), required_stops=tuple(required), policy=Policy())


def test_plan_at_the_graph_caps_is_near_linear() -> None:
    g = _graph(MAX_JUMPS, MAX_STOPS)
    t0 = time.monotonic()
    chain = plan_chain(g, "1.0.0", f"1.0.{MAX_JUMPS // 2}")
    took = time.monotonic() - t0
    stops = set(g.required_stops)
    assert stops <= {b for _, b in chain}, "the chain skipped a required stop"
    print(f"\nplan at the caps ({MAX_JUMPS} jumps, {MAX_STOPS} stops): {len(chain)} jumps in {took:.3f}s")
    assert took < 10


def test_graph_over_the_caps_is_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        _graph(MAX_JUMPS + 2, 1)


def test_catastrophic_rule_runs_in_linear_time() -> None:
    """(\\S|\\S)*! made Python's re backtrack for minutes on one long line; RE2 does not."""
    rules = (
        RewriteRule(pattern=r"(\S|\S)*!", replacement="x"),
        RewriteRule(pattern=r"(a+)+$", replacement="y"),
    )
    entry = FileEntry(path="etc/x.ini", kind="config", sha256="0" * 64, policy="rewrite", rules=rules)
    text = "a" * 1_000_000 + "\n" + "b" * 1_000_000
    t0 = time.monotonic()
    _, n = _rewrite(text, entry)
    took = time.monotonic() - t0
    print(f"\ntwo backtracking rules over 2 MB: {took:.3f}s")
    assert took < 5 and n == 1


def _manifest_with_removals(bundle: Path, n: int) -> dict[str, object]:
    man = json.loads(read(bundle)["manifest.json"])
    man["removed"] = sorted(
        [
            *man["removed"],
            *({"path": f"opt/demo-manager/old/f{i:06d}", "from_sha256": None} for i in range(n)),
        ],
        key=lambda r: r["path"],
    )
    return man


def test_manifest_over_the_removal_cap_is_refused(bundle: Path) -> None:
    from installer.codec import canonical_json

    data = canonical_json(_manifest_with_removals(bundle, MAX_REMOVED + 1))
    with pytest.raises(ManifestError, match=f"at most {MAX_REMOVED}"):
        parse_manifest(data)


def test_verify_at_the_removal_cap_time_and_memory(
    bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """verify of a signed manifest at the removal cap: one line, and its time and peak
    memory (the installer's own process) for the record."""
    from builder.keys import load_private_key
    from installer.codec import canonical_json
    from installer.signing import sign_manifest

    man = _manifest_with_removals(
        bundle, MAX_REMOVED - len(json.loads(read(bundle)["manifest.json"])["removed"])
    )
    data = canonical_json(man)
    sig = sign_manifest(data, load_private_key(keys["key"]))
    big = write(tmp_path / "big.zip", {**read(bundle), "manifest.json": data, "manifest.sig": sig})
    err = tmp_path / "stderr"
    t0 = time.monotonic()
    with open(err, "w") as e:
        argv = ["--root", str(tmp_path), "--trust", str(keys["pub"]), "verify", str(big)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "installer.cli", *argv], stdout=subprocess.DEVNULL, stderr=e, cwd=REPO
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the largest child's
    took = time.monotonic() - t0
    peak_mib = usage.ru_maxrss / 1024
    assert os.waitstatus_to_exitcode(status) == 0, err.read_text()
    print(f"\nverify at the removal cap ({MAX_REMOVED} removals, {len(data) >> 20} MiB manifest): "
          f"{took:.2f}s, peak RSS {peak_mib:.0f} MiB")  # fmt: skip
    assert took < 120
    count(f"verify at the removal cap: {took:.1f}s, {peak_mib:.0f} MiB peak")
