"""Benchmark: start-up of the frozen installer. Median wall time of 10 runs of
`bundle-install --version` (and of `--help`, which loads the CLI framework) for each build
(portable one-file, plain one-file, one-dir), their sizes, and the ratio to the same
command run by the unfrozen installer (`python -m installer.cli`) in the same run.
Targets (issue 5): <= 0.6 s one-file, <= 0.3 s one-dir, <= 40 MB. Never fails on time.

    uv run python scripts/bench/installer-startup.py [--repeat 10] [--json]

Builds what is missing with scripts/freeze-installer (cached by source hash).
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

BUILDS = {
    "onefile-portable": ([], REPO / "dist/bundle-install"),
    "onefile-plain": (
        ["--no-portable", "--out", "dist/bundle-install.plain"],
        REPO / "dist/bundle-install.plain",
    ),
    "onedir": (["--onedir"], REPO / "dist/bundle-install.d/bundle-install"),
}


def wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def size(path: Path) -> int:
    if path.parent.name == "bundle-install.d":
        return sum(p.stat().st_size for p in path.parent.rglob("*") if p.is_file())
    return path.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for flags, _ in BUILDS.values():
        subprocess.run([str(REPO / "scripts/freeze-installer"), *flags], check=True, cwd=REPO)
    contenders = {name: [str(path)] for name, (_, path) in BUILDS.items()}
    contenders["python -m installer.cli"] = [sys.executable, "-m", "installer.cli"]
    results: dict[str, dict[str, float]] = {}
    for what in ("--version", "--help"):
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for argv in contenders.values():  # one warm-up each: page cache, not disk
            wall([*argv, what])
        for _ in range(args.repeat):  # interleaved: a noisy VM slows all contenders alike
            for name, argv in contenders.items():
                times[name].append(wall([*argv, what]))
        for name, ts in times.items():
            results.setdefault(name, {})[what] = statistics.median(ts)
    base = results["python -m installer.cli"]
    doc = {
        name: {
            "version_s": round(r["--version"], 3),
            "help_s": round(r["--help"], 3),
            "version_ratio": round(r["--version"] / base["--version"], 2),
            "help_ratio": round(r["--help"] / base["--help"], 2),
            "bytes": size(BUILDS[name][1]) if name in BUILDS else None,
        }
        for name, r in results.items()
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{'build':<26}{'--version':>10}{'ratio':>7}{'--help':>9}{'ratio':>7}{'size':>10}")
    for name, d in doc.items():
        mb = f"{d['bytes'] / 1e6:.1f} MB" if d["bytes"] else "-"
        print(
            f"{name:<26}{d['version_s']:>9.3f}s{d['version_ratio']:>6.2f}x"
            f"{d['help_s']:>8.3f}s{d['help_ratio']:>6.2f}x{mb:>10}"
        )
    print(
        f"(medians of {args.repeat}; ratios to the unfrozen installer; targets: one-file <= 0.6 s, "
        "one-dir <= 0.3 s, <= 40 MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
