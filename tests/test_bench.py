"""The benchmark scripts (issue 2's figures) still run and print their ratios: a small
tree, one repeat, --json. They never assert on time; neither does this."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO


def bench(script: str, *args: str) -> dict[str, float]:
    p = subprocess.run(
        [sys.executable, str(REPO / "scripts/bench" / script), "--size-mb", "6", "--files", "240", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    doc: dict[str, float] = json.loads(p.stdout.strip().splitlines()[-1])
    return doc


@pytest.mark.usefixtures("frozen")
def test_build_bench_prints_its_ratios() -> None:
    doc = bench("build.py", "--repeat", "1", "--json")
    keys = (
        "time_ratio_vs_tar_zstd",
        "size_ratio_vs_zip6",
        "peak_rss_mib",
        "peak_pss_total_mib",
        "installer_mib",
    )
    for key in keys:
        assert isinstance(doc[key], float) and doc[key] > 0, key
    assert doc["files"] >= 200


@pytest.mark.usefixtures("frozen")
def test_stage_bench_prints_its_ratio() -> None:
    doc = bench("stage.py", "--repeat", "1", "--json")
    assert doc["ratio_vs_unzip"] > 0 and doc["bundle_mib"] > 0
    assert doc["frozen_ratio_vs_unzip"] > 0  # the frozen installer staged too
