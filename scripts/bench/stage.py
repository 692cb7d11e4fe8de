"""Benchmark: `bundle-install stage` (verify the signature, check every member's sha256,
unpack) of the ~600 MiB bundle against `unzip -q` of the same ZIP, in the same run: the
installer from source (`python -m installer.cli`) and the frozen one the bundle carries,
which operators run (it unpacks itself first). Prints the ratios; never fails on
absolute time.

    uv run python scripts/bench/stage.py [--size-mb 600] [--repeat 3]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, build_argv, frozen_installer, keygen, make_product, make_tree, parser, python, timed


def main() -> int:
    args = parser(__doc__).parse_args()
    tree = make_tree(args.size_mb, args.files)
    with tempfile.TemporaryDirectory(prefix="jk-bench-", dir=REPO / ".cache") as tmp:
        work = Path(tmp)
        specs = make_product(tree, work)
        key, pub = keygen(work)
        # a release bundle, as operators get it: the frozen installer is a member too
        frozen = frozen_installer()
        subprocess.run(build_argv(specs, key, work / "dist", frozen), check=True, capture_output=True)
        bundle = work / "dist/bench-1.0.0-to-1.1.0.zip"
        subprocess.run(["cat", str(bundle)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
        unzip_t, stage_t, frozen_t = [], [], []
        # Outputs are kept until the end: this machine's ext4 runs without a journal, and
        # then every new inode is allocated past the inodes deleted in the last 30 s,
        # reading their inode table blocks (perf: 60% of unzip's time went to
        # recently_deleted after an rmtree of 24k files). Deleting between runs made
        # whichever contender came next pay for the other's clean-up, growing run by run.
        # Each contender starts with nothing dirty in the page cache (stage ends with
        # sync; it should not write back unzip's output).
        for i in range(args.repeat):
            out = work / f"unz{i}"
            os.sync()
            unzip_t.append(timed(["unzip", "-q", str(bundle), "-d", str(out)])[0])
            contenders = (
                ("src", [python(), "-m", "installer.cli"], stage_t),
                ("frozen", [str(frozen)], frozen_t),
            )
            for label, installer, times in contenders:
                root = work / f"root-{label}{i}"
                root.mkdir()
                (root / "VERSION").write_text("1.0.0\n")
                os.sync()
                argv = [*installer, "--root", str(root), "--trust", str(pub), "stage", str(bundle)]
                times.append(timed(argv, stdout=subprocess.DEVNULL)[0])
        res = {
            "bundle_mib": round(bundle.stat().st_size / 2**20, 1),
            "repeat": args.repeat,
            "unzip_s": round(statistics.median(unzip_t), 2),
            "stage_s": round(statistics.median(stage_t), 2),
            "frozen_stage_s": round(statistics.median(frozen_t), 2),
        }
        res["ratio_vs_unzip"] = round(res["stage_s"] / res["unzip_s"], 2)
        res["frozen_ratio_vs_unzip"] = round(res["frozen_stage_s"] / res["unzip_s"], 2)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"bundle: {res['bundle_mib']} MiB; medians of {args.repeat} interleaved runs")
        print(f"unzip -q              : {res['unzip_s']:6.2f} s")
        print(
            f"bundle-install stage  : {res['stage_s']:6.2f} s  (signature + sha256 of every member + unpack + sync)"
        )
        print(f"frozen installer stage: {res['frozen_stage_s']:6.2f} s  (the same, plus unpacking itself)")
        print(
            f"ratio vs unzip        : {res['ratio_vs_unzip']}x, frozen {res['frozen_ratio_vs_unzip']}x (target <= 1.0)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
