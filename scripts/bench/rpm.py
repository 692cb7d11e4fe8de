"""Benchmark: `bundle-build --format rpm` of the ~600 MiB tree (the whole job: ZIP bundle,
then the RPM around it) against a plain `rpmbuild -bb` of the same tree with the same
payload compression (zstd level 3), in the same run. Also prints the RPM step alone
(`--format rpm` minus `--format zip`). Never fails on absolute time.

    uv run python scripts/bench/rpm.py [--size-mb 600] [--repeat 3] [--json]
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, build_argv, frozen_installer, keygen, make_product, make_tree, parser, timed, warm

PLAIN_SPEC = """Name: plain
Version: 1.1.0
Release: 1
Summary: the same tree, packaged by rpmbuild alone
License: MIT
AutoReqProv: no
%global _binary_payload w3.zstdio
%global _build_id_links none
%global __os_install_post %{{nil}}
%global debug_package %{{nil}}
%description
baseline
%install
mkdir -p %{{buildroot}}/opt/plain
cp -a {tree}/. %{{buildroot}}/opt/plain/
%files
/opt/plain
"""


def main() -> int:
    args = parser(__doc__).parse_args()
    tree = make_tree(args.size_mb, args.files)
    installer = frozen_installer()
    with tempfile.TemporaryDirectory(prefix="jk-bench-", dir=REPO / ".cache") as tmp:
        work = Path(tmp)
        specs = make_product(tree, work)
        key, _ = keygen(work)
        spec = work / "plain.spec"
        spec.write_text(PLAIN_SPEC.format(tree=tree))
        warm(tree)
        plain_t, rpm_t, zip_t = [], [], []
        for i in range(args.repeat):  # interleaved: a noisy VM slows every contender alike
            top = work / f"top{i}"
            plain_t.append(
                timed(
                    ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}", str(spec)],
                    stdout=subprocess.DEVNULL,
                )[0]
            )
            shutil.rmtree(top)
            for fmt, times in (("rpm", rpm_t), ("zip", zip_t)):
                out = work / f"{fmt}{i}"
                argv = [*build_argv(specs, key, out, installer), "--format", fmt]
                times.append(timed(argv, stdout=subprocess.DEVNULL)[0])
                shutil.rmtree(out)
    plain, rpm, zipped = (statistics.median(t) for t in (plain_t, rpm_t, zip_t))
    doc = {
        "plain_rpmbuild_s": round(plain, 2),
        "bundle_build_rpm_s": round(rpm, 2),
        "ratio": round(rpm / plain, 2),
        "rpm_step_alone_s": round(rpm - zipped, 2),
        "rpm_step_ratio": round((rpm - zipped) / plain, 2),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"plain rpmbuild -bb (w3.zstdio)      : {plain:.2f} s")
    print(f"bundle-build --format rpm (ZIP+RPM) : {rpm:.2f} s  ratio {rpm / plain:.2f}x (target <= 1.0)")
    print(f"  of which the RPM step             : {rpm - zipped:.2f} s  ratio {(rpm - zipped) / plain:.2f}x")
    print(f"(medians of {args.repeat}, interleaved)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
