"""Benchmark: how soon ``bundle-build`` answers ``--version``, ``--help`` and ``lint`` of
the demo specs, against the bare interpreter starting (``python -c pass``) and the CLI
framework alone (``python -c 'import typer'``), measured in the same run: median of
``--repeat`` runs each. Prints ratios; never fails on absolute time.

    uv run python scripts/bench/cli-startup.py [--repeat 9] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def median_seconds(argv: list[str], repeat: int) -> float:
    took = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=REPO, capture_output=True, check=False)
        took.append(time.perf_counter() - t0)
    return statistics.median(took)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    py = sys.executable
    cli = [py, "-m", "builder.cli"]
    runs = {
        "python": [py, "-c", "pass"],
        "import_typer": [py, "-c", "import typer"],
        "version": [*cli, "--version"],
        "help": [*cli, "--help"],
        "lint_demo": [*cli, "lint", "--specs", str(REPO / "specs")],
    }
    got = {name: median_seconds(argv, args.repeat) for name, argv in runs.items()}
    doc = {f"{k}_seconds": round(v, 3) for k, v in got.items()}
    for k in ("version", "help", "lint_demo"):
        doc[f"{k}_ratio_vs_import_typer"] = round(got[k] / got["import_typer"], 2)
    if args.json:
        print(json.dumps(doc))
    else:
        for k, v in doc.items():
            print(f"{k:34} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
