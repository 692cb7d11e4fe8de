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


def test_cli_startup_bench_prints_its_ratios() -> None:
    p = subprocess.run(
        [sys.executable, str(REPO / "scripts/bench/cli-startup.py"), "--repeat", "1", "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)
    assert all(doc[f"{k}_ratio_vs_import_typer"] > 0 for k in ("version", "help", "lint_demo")), doc


HEAVY = ("builder.build", "builder.collect", "builder.rpm", "builder.rollout", "installer.format", "jinja2")


@pytest.mark.parametrize(
    ("argv", "absent"),
    [
        (["--version"], (*HEAVY, "builder.spec", "pydantic")),
        (["--help"], (*HEAVY, "builder.spec")),
        (["lint", "--help"], (*HEAVY, "builder.spec")),
        (["rollout", "--help"], (*HEAVY, "builder.spec")),
        (
            ["lint", "--specs", str(REPO / "specs")],
            ("builder.build", "builder.collect", "builder.rpm", "jinja2"),
        ),
    ],
    ids=["version", "help", "lint-help", "rollout-help", "lint"],
)
def test_the_cli_answers_without_the_build_modules(argv: list[str], absent: tuple[str, ...]) -> None:
    """What made ``bundle-build --version`` take 0.86 s was importing the whole build at
    start; the commands import what they use (scripts/bench/cli-startup.py measures it)."""
    code = (
        "import sys; sys.argv = ['bundle-build', *sys.argv[1:]]\n"
        "from builder import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in {absent!r} if m in sys.modules))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert "LOADED []" in p.stdout, p.stdout[-500:] + p.stderr[-500:]
