"""Benchmark: bundle-build of a ~600 MiB realistic tree against `tar -cf - | zstd -T0 -3`
(time) and `zip -r -6` (size), measured in the same run. Prints ratios; never fails on
absolute time.

The bundle is a release bundle: it carries the frozen installer (~29 MiB) as well as the
tree, so every contender packs the same inputs, the tree plus that binary.

    uv run python scripts/bench/build.py [--size-mb 600] [--files 25000]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    REPO,
    build_argv,
    frozen_installer,
    keygen,
    make_product,
    make_tree,
    parser,
    peak_memory,
    timed,
    tree_stats,
    warm,
)


def main() -> int:
    args = parser(__doc__).parse_args()
    tree = make_tree(args.size_mb, args.files)
    n, size = tree_stats(tree)
    installer = frozen_installer()
    with tempfile.TemporaryDirectory(prefix="jk-bench-", dir=REPO / ".cache") as tmp:
        work = Path(tmp)
        specs = make_product(tree, work)
        key, _ = keygen(work)
        warm(tree)
        zstd_times, our_times, rss = [], [], 0
        argv = build_argv(specs, key, work / "dist", installer)
        bundle = work / "dist/bench-1.0.0-to-1.1.0.zip"
        tar = f"tar -cf - -C {tree} --exclude ./.done . -C {installer.parent} {installer.name}"
        for _ in range(args.repeat):
            (work / "b.tar.zst").unlink(missing_ok=True)
            zstd_times.append(timed(["sh", "-c", f"{tar} | zstd -q -T0 -3 -o {work / 'b.tar.zst'}"])[0])
            bundle.unlink(missing_ok=True)  # as for zstd: replacing a file frees its blocks
            t, peak = timed(argv, stdout=subprocess.DEVNULL)
            our_times.append(t)
            rss = max(rss, peak)
        t_zstd, t_ours = statistics.median(zstd_times), statistics.median(our_times)
        # memory in a run of its own: sampling /proc costs time
        bundle.unlink()
        pss, rss2 = peak_memory(argv, stdout=subprocess.DEVNULL)
        rss = max(rss, rss2)
        t_zip, _ = timed(
            [
                "sh",
                "-c",
                f"cd {tree} && zip -r -6 -q {work / 'b.zip'} . -x .done"
                f" && cd {installer.parent} && zip -6 -q {work / 'b.zip'} {installer.name}",
            ]
        )
        res = {
            "files": n,
            "tree_mib": round(size / 2**20, 1),
            "installer_mib": round(installer.stat().st_size / 2**20, 1),
            "repeat": args.repeat,
            "tar_zstd_s": round(t_zstd, 2),
            "zip6_s": round(t_zip, 2),
            "bundle_build_s": round(t_ours, 2),
            "time_ratio_vs_tar_zstd": round(t_ours / t_zstd, 2),
            "bundle_mib": round(bundle.stat().st_size / 2**20, 1),
            "zip6_mib": round((work / "b.zip").stat().st_size / 2**20, 1),
            "tar_zstd_mib": round((work / "b.tar.zst").stat().st_size / 2**20, 1),
            "size_ratio_vs_zip6": round(bundle.stat().st_size / (work / "b.zip").stat().st_size, 3),
            "peak_rss_mib": round(rss / 1024, 1),
            "peak_pss_total_mib": round(pss / 1024, 1),
            "peak_memory_mib": round(max(pss, rss) / 1024, 1),
        }
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"tree: {res['files']} files, {res['tree_mib']} MiB, + the frozen installer "
            f"{res['installer_mib']} MiB; medians of {args.repeat} interleaved runs"
        )
        print(f"tar|zstd -T0 -3 : {res['tar_zstd_s']:7.2f} s  {res['tar_zstd_mib']} MiB")
        print(f"zip -r -6       : {res['zip6_s']:7.2f} s  {res['zip6_mib']} MiB")
        print(f"bundle-build    : {res['bundle_build_s']:7.2f} s  {res['bundle_mib']} MiB")
        print(f"time ratio vs tar|zstd: {res['time_ratio_vs_tar_zstd']}x (target <= 1.6)")
        print(f"size ratio vs zip -6  : {res['size_ratio_vs_zip6']}x (target <= 1.05)")
        print(
            f"peak memory           : {res['peak_memory_mib']} MiB (target < 120 MB = 114.4 MiB); the larger"
            f" of: PSS of the build and its workers summed, {res['peak_pss_total_mib']} MiB (sampled every"
            f" 5 ms), and the largest process's peak RSS, {res['peak_rss_mib']} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
