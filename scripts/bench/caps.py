"""Benchmark: `bundle-install verify` of a signed bundle at the manifest caps (issue 20):
300,000 file entries (MAX_FILES, each its own ZIP member) and, separately, 100,000
removals (MAX_REMOVED). Prints wall time and the installer's peak memory (PSS), against
`unzip -tq` of the same ZIP (which also reads and checks every member) in the same run.
Never fails on absolute time.

    uv run python scripts/bench/caps.py [--repeat 3] [--json]
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cli, installer_argv, keygen, parser, peak_memory, timed

sys.path.insert(0, str(REPO))
from builder.keys import load_private_key
from installer.codec import canonical_json
from installer.format import MAX_FILES, MAX_REMOVED
from installer.signing import sign_manifest


def _demo_bundle(work: Path, key: Path) -> Path:
    cli("builder.cli", "--specs", str(REPO / "specs"), "--from", "4.0.1", "--to", "4.1.1", "--key", str(key),
        "--no-installer", "--no-rehearse", "--out", str(work / "dist"))  # fmt: skip
    return work / "dist/demo-manager-4.0.1-to-4.1.1.zip"


def _at_cap(demo: Path, key: Path, out: Path, *, files: int, removals: int) -> Path:
    """The demo bundle with ``files`` more one-line files and ``removals`` more removals,
    re-signed: a manifest at the cap the caller chose."""
    body = b"x\n"
    digest = hashlib.sha256(body).hexdigest()
    with zipfile.ZipFile(demo) as z:
        man = json.loads(z.read("manifest.json"))
        members = {n: z.read(n) for n in z.namelist() if n not in ("manifest.json", "manifest.sig")}
    extra = [f"opt/demo-manager/many/d{i // 1000:03d}/f{i:06d}" for i in range(files - len(man["files"]))]
    man["files"] = sorted(
        [*man["files"], *({"path": p, "kind": "file", "sha256": digest, "size": len(body), "mode": 0o644,
                           "from_sha256": None, "policy": "replace", "rules": [], "link_target": None}
                          for p in extra)],
        key=lambda f: f["path"],
    )  # fmt: skip
    more = removals - len(man["removed"]) if removals else 0
    man["removed"] = sorted(
        [
            *man["removed"],
            *({"path": f"opt/demo-manager/old/f{i:06d}", "from_sha256": None} for i in range(more)),
        ],
        key=lambda r: r["path"],
    )
    data = canonical_json(man)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("manifest.json", data)
        z.writestr("manifest.sig", sign_manifest(data, load_private_key(key)))
        for name, b in members.items():
            z.writestr(name, b)
        for p in extra:
            z.writestr("payload/" + p, body)
    return out


def main() -> int:
    args = parser(__doc__).parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="jk-bench-caps-", dir=REPO / ".cache") as tmp:
        work = Path(tmp)
        key, pub = keygen(work)
        demo = _demo_bundle(work, key)
        root = work / "empty-root"
        root.mkdir()
        cases = {
            f"{MAX_FILES} files": _at_cap(demo, key, work / "files.zip", files=MAX_FILES, removals=0),
            f"{MAX_REMOVED} removals": _at_cap(
                demo, key, work / "removed.zip", files=0, removals=MAX_REMOVED
            ),
        }
        for what, bundle in cases.items():
            verify = installer_argv(root, "--trust", pub, "verify", bundle)
            unzip = ["unzip", "-tq", str(bundle)]
            check = subprocess.run(verify, capture_output=True, text=True, cwd=REPO)
            if check.returncode != 0:
                print(f"{what}: verify refused the bundle: {check.stderr.strip()}", file=sys.stderr)
                return 1
            v_t, v_rss, u_t = [], [], []
            for _ in range(args.repeat):  # interleaved
                t, _ = timed(unzip, stdout=subprocess.DEVNULL)
                u_t.append(t)
                t, _ = timed(verify, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
                v_t.append(t)
                # PSS sampled every 5 ms: wait4's RSS of a child forked from this (large)
                # process counts the parent's pages it maps until exec
                pss, _ = peak_memory(verify, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
                v_rss.append(pss)
            row = {
                "case": what,
                "bundle_mib": round(bundle.stat().st_size / 2**20, 1),
                "verify_s": round(statistics.median(v_t), 2),
                "verify_spread_s": round(max(v_t) - min(v_t), 2),
                "verify_peak_pss_mib": round(max(v_rss) / 1024),
                "unzip_t_s": round(statistics.median(u_t), 2),
                "ratio": round(statistics.median(v_t) / statistics.median(u_t), 2),
            }
            rows.append(row)
            if not args.json:
                print(f"{what}: bundle {row['bundle_mib']} MiB; verify {row['verify_s']}s "
                      f"(spread {row['verify_spread_s']}s), peak PSS {row['verify_peak_pss_mib']} MiB; "
                      f"unzip -tq {row['unzip_t_s']}s; ratio {row['ratio']}x")  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
