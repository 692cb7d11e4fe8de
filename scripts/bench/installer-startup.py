"""Benchmark: start-up of the frozen installer. Median wall time of 10 interleaved runs of
`bundle-install --version`, `--help` (loads the CLI framework) and `--root EMPTY status
--json` (a real command) for each build: the portable binary started anywhere (it unpacks
its tree into TMPDIR), the same binary as a manager keeps it (its tree unpacked beside it
once: installer/resident.py), the plain PyInstaller one-file, the one-dir build, and the
unfrozen installer (`python -m installer.cli`); sizes; ratios to the one-dir build measured
in the same run. Targets: the kept installer <= 0.15 s (issue 23), portable <= 0.6 s
(issue 5). Never fails on time.

    uv run python scripts/bench/installer-startup.py [--repeat 10] [--json]

Builds what is missing with scripts/freeze-installer (cached by source hash).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from installer import resident  # noqa: E402

BUILDS = {
    "portable": ([], REPO / "dist/bundle-install"),
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
    with tempfile.TemporaryDirectory(prefix="jk-startup-") as tmp:
        bin_dir = Path(tmp) / "var/lib/jumpkit/bin"
        bin_dir.mkdir(parents=True)
        managers = bin_dir / "bundle-install"
        shutil.copy(BUILDS["portable"][1], managers)
        t0 = time.perf_counter()
        if not resident.keep(managers):
            raise SystemExit("installer-startup: dist/bundle-install has no tree to keep")
        keep_s = time.perf_counter() - t0
        empty = Path(tmp) / "empty"
        empty.mkdir()
        contenders = {"kept (manager's)": [str(managers)]}
        contenders |= {name: [str(path)] for name, (_, path) in BUILDS.items()}
        contenders["python -m installer.cli"] = [sys.executable, "-m", "installer.cli"]
        commands = {"--version": ["--version"], "--help": ["--help"],
                    "status": ["--root", str(empty), "status", "--json"]}  # fmt: skip
        times: dict[str, dict[str, list[float]]] = {n: {c: [] for c in commands} for n in contenders}
        for argv in contenders.values():  # one warm-up each: page cache, not disk
            for extra in commands.values():
                wall([*argv, *extra])
        for _ in range(args.repeat):  # interleaved: a noisy VM slows all contenders alike
            for name, argv in contenders.items():
                for c, extra in commands.items():
                    times[name][c].append(wall([*argv, *extra]))
    med = {n: {c: statistics.median(ts) for c, ts in per.items()} for n, per in times.items()}
    spread = {n: {c: (min(ts), max(ts)) for c, ts in per.items()} for n, per in times.items()}
    base = med["onedir"]
    doc = {
        name: {
            **{f"{c}_s": round(v, 3) for c, v in r.items()},
            **{f"{c}_range_s": [round(x, 3) for x in spread[name][c]] for c in r},
            **{f"{c}_ratio": round(v / base[c], 2) for c, v in r.items()},
            "bytes": size(BUILDS[name][1]) if name in BUILDS else None,
        }
        for name, r in med.items()
    }
    doc["kept (manager's)"]["keep_s"] = round(keep_s, 2)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{'build':<26}" + "".join(f"{c:>10}{'/onedir':>8}" for c in commands) + f"{'size':>10}")
    for name, d in doc.items():
        mb = f"{d['bytes'] / 1e6:.1f} MB" if d["bytes"] else "-"
        print(f"{name:<26}" + "".join(f"{d[c + '_s']:>9.3f}s{d[c + '_ratio']:>7.2f}x" for c in commands)
              + f"{mb:>10}")  # fmt: skip
    print(f"(medians of {args.repeat} interleaved runs; the kept tree was unpacked once in {keep_s:.2f} s; "
          "targets: kept <= 0.15 s, portable <= 0.6 s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
