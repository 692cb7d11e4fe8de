"""Benchmark: delta bundles (issue 21) on a pair of consecutive real releases of published
software from the package registry: a product whose tree is Django, ansible-core (Python
application code), cryptography (its ~13 MB Rust extension) and numpy (OpenBLAS, ~24 MB,
and its ~9 MB core extension), each at two consecutive versions pinned below. Wheels are
downloaded once with pip into .cache/bench/delta/ and unpacked into two release trees.

Two pairs (``--pairs``): ``stack``, the above; ``vendored``, the Ansible community package
at two consecutive releases (~24,000 files, almost all small text: modules, plugins, docs).

Prints for each pair, in one run: the bundle (`bundle-build --delta auto --solid on`,
without installer; with `--solid none`, one archive entry per member; then as it ships,
with the frozen installer whole and as a patch against the same installer) against the
full to-release as `zip -r -6`, the changed and added files as `zip -6`, per-file `xdelta3`
patches (when the xdelta3 binary is installed: apt-get install xdelta3), and the best of bsdiff / zstd
--patch-from / xdelta3 / whole-deflated per file (xdelta3 as Mender ships deltas: a patch
per changed file over 64 KiB, smaller ones whole); build time with a cold and a warm patch
cache; `bundle-install stage` time against `unzip -q` of the changed-files ZIP; the
installer's peak memory while staging (PSS). Never fails on absolute time.

    uv run python scripts/bench/delta.py [--repeat 3] [--pairs stack,vendored] [--json]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, REPO, frozen_installer, installer_argv, keygen, parser, peak_memory, python, timed

sys.path.insert(0, str(REPO))
from isal import isal_zlib

from builder.delta import bsdiff_patch, zstd_patch

Pair = list[tuple[str, str, str]]
PAIRS: dict[str, Pair] = {
    # (distribution, from, to): consecutive releases across a minor (or major) line, the
    # size of change a manager's 4.0 -> 4.1 jump carries (patch releases change a few dozen
    # files, and then the installer's start, not the patches, is what stage measures)
    "stack": [
        ("django", "5.0.8", "5.1"),
        ("ansible-core", "2.17.6", "2.18.0"),
        ("cryptography", "43.0.3", "44.0.0"),
        ("numpy", "2.1.3", "2.2.0"),
    ],
    # a Python application of thousands of vendored library files, mostly small text:
    # the Ansible community package (~24,000 files, 205 MiB, collections of modules,
    # plugins, docs) at two consecutive releases
    "vendored": [("ansible", "11.12.0", "11.13.0")],
}
HERE = CACHE / "delta"


def _pip() -> list[str]:
    """pip, the registry's ordinary client (the project's venv, made by uv, has none)."""
    for argv in (
        [sys.executable, "-m", "pip"],
        [shutil.which("pip3") or "pip3"],
        [shutil.which("pip") or "pip"],
    ):
        try:
            if subprocess.run([*argv, "--version"], capture_output=True).returncode == 0:
                return argv
        except OSError:
            continue
    raise SystemExit("delta.py: no pip on PATH to download the release wheels")


def _wheels(pair: Pair, version_index: int) -> list[Path]:
    out = []
    for dist, *versions in pair:
        v = versions[version_index]
        d = HERE / "wheels" / f"{dist}-{v}"
        if not any(d.glob("*.whl")):
            d.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [*_pip(), "download", "--no-deps", "--only-binary=:all:",
                 "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                 "--platform", "manylinux2014_x86_64", "--platform", "any", "-d", str(d), f"{dist}=={v}"],
                check=True, capture_output=True,
            )  # fmt: skip
        out += sorted(d.glob("*.whl"))
    return out


def _tree(pair: Pair, version_index: int) -> Path:
    """One release tree: every wheel unpacked under opt/app/lib."""
    tag = "-".join(f"{d}{v[version_index]}" for d, *v in pair)
    tree = HERE / f"tree-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"
    if (tree / ".done").exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    lib = tree / "opt/app/lib"
    for whl in _wheels(pair, version_index):
        with zipfile.ZipFile(whl) as z:
            z.extractall(lib)
    for dirpath, _, files in os.walk(tree):
        for f in files:
            p = Path(dirpath) / f
            p.chmod(0o755 if f.endswith(".so") or ".so." in f else 0o644)
    (tree / "VERSION").write_text(f"{version_index + 1}.0.0\n")
    (tree / ".done").write_text("ok\n")
    return tree


def _files(tree: Path) -> dict[str, Path]:
    out = {}
    for dirpath, _, files in os.walk(tree):
        for f in files:
            p = Path(dirpath) / f
            rel = p.relative_to(tree).as_posix()
            if rel != ".done":
                out[rel] = p
    return out


def _zip(dest: Path, root: Path, names: list[str]) -> int:
    dest.unlink(missing_ok=True)
    listing = dest.with_suffix(".list")
    listing.write_text("\n".join(names) + "\n")
    with open(listing) as f:
        subprocess.run(["zip", "-q", "-6", "-@", str(dest)], cwd=root, stdin=f, check=True)
    return dest.stat().st_size


def _xdelta3(old: Path, new: Path, out: Path) -> int | None:
    if shutil.which("xdelta3") is None:
        return None
    subprocess.run(["xdelta3", "-e", "-9", "-f", "-s", str(old), str(new), str(out)], check=True)
    return out.stat().st_size


def _product(specs: Path, old: Path, new: Path) -> None:
    d = specs / "app"
    (d / "jumps").mkdir(parents=True)
    (d / "product.yaml").write_text("product: app\nversion_file: VERSION\n")
    (d / "jumps/1.0.0-2.0.0.yaml").write_text("from: 1.0.0\nto: 2.0.0\nfiles:\n  exclude: ['.done']\n")
    for v, tree in (("1.0.0", old), ("2.0.0", new)):
        (d / "releases" / v).mkdir(parents=True)
        (d / "releases" / v / "root").symlink_to(tree)


def measure(pair: Pair, repeat: int) -> dict[str, object]:
    """Every row of the table for one pair of releases."""
    old_tree, new_tree = _tree(pair, 0), _tree(pair, 1)
    old_files, new_files = _files(old_tree), _files(new_tree)
    changed = sorted(
        p for p in new_files if p in old_files and new_files[p].read_bytes() != old_files[p].read_bytes()
    )
    added = sorted(p for p in new_files if p not in old_files)
    rows: dict[str, object] = {"releases": [f"{d} {a} -> {b}" for d, a, b in pair]}
    with tempfile.TemporaryDirectory(prefix="jk-bench-delta-", dir=REPO / ".cache") as tmp:
        work = Path(tmp)
        full = _zip(work / "full.zip", new_tree, sorted(new_files))
        changed_zip = work / "changed.zip"
        changed_size = _zip(changed_zip, new_tree, changed + added)
        # per file: xdelta3 as Mender ships deltas (a patch for each changed file over
        # 64 KiB, smaller ones whole), and the best of every tool or the file deflated whole
        xd_total, best_total, have_xd = 0, 0, shutil.which("xdelta3") is not None
        for rel in changed:
            o, n = old_files[rel].read_bytes(), new_files[rel].read_bytes()
            whole = len(isal_zlib.compress(n, 2, -15))
            cands = [whole, len(zstd_patch(o, n))]
            if len(n) <= 64 * 1024 * 1024:
                cands.append(len(bsdiff_patch(o, n)))
            xd = _xdelta3(old_files[rel], new_files[rel], work / "x.vcdiff")
            if xd is not None:
                cands.append(xd)
                xd_total += xd if len(n) > 64 * 1024 else whole
            best_total += min(cands)
        added_deflated = sum(len(isal_zlib.compress(new_files[p].read_bytes(), 2, -15)) for p in added)
        specs = work / "specs"
        _product(specs, old_tree, new_tree)
        key, pub = keygen(work)
        cache = work / "patch-cache"
        env = {**os.environ, "JUMPKIT_CACHE_DIR": str(cache)}
        argv = [python(), "-m", "builder.cli", "--specs", str(specs), "--from", "1.0.0", "--to", "2.0.0",
                "--key", str(key), "--no-installer", "--solid", "on", "--json", "--out", str(work / "dist")]  # fmt: skip
        cold, _ = timed(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
        warm_t = []
        for _ in range(repeat):
            t, _ = timed(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
            warm_t.append(t)
        doc = json.loads(
            subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, check=True).stdout
        )
        bundle = Path(doc["bundle"])
        # one archive entry per member (format 2, what bundles were before solid members)
        plain = [
            *argv[: argv.index("--solid")],
            "--solid",
            "none",
            "--json",
            "--out",
            str(work / "dist-plain"),
        ]
        plain_doc = json.loads(
            subprocess.run(plain, capture_output=True, text=True, env=env, cwd=REPO, check=True).stdout
        )
        # the release bundle as it ships: with the frozen installer whole, and with it as a
        # patch against the same installer (a release whose jumpkit did not change)
        frozen = str(frozen_installer())
        shipped = [*argv[: argv.index("--no-installer")], "--installer", frozen, "--installer-base", frozen,
                   "--solid", "auto", "--json", "--out", str(work / "dist-shipped")]  # fmt: skip
        shipped_doc = json.loads(
            subprocess.run(shipped, capture_output=True, text=True, env=env, cwd=REPO, check=True).stdout
        )
        # stage against a manager at the old release, vs unzip -q of the changed files
        root = work / "root"
        shutil.copytree(old_tree, root, symlinks=True, ignore=shutil.ignore_patterns(".done"))
        (root / "etc/jumpkit").mkdir(parents=True)
        (root / "etc/jumpkit/product").write_text("app\n")
        stage = installer_argv(root, "--trust", pub, "stage", bundle)
        unstage = installer_argv(root, "unstage")
        stage_t, step_t, unzip_t, pss = [], [], [], []
        for i in range(repeat):  # interleaved
            out = work / f"unzip-{i}"
            t, _ = timed(["unzip", "-q", str(changed_zip), "-d", str(out)])
            unzip_t.append(t)
            with open(work / "stage.log", "w") as log:
                t, _ = timed(stage, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)
            stage_t.append(t)
            # the installer's own line: the unpack and the patches, after the interpreter's
            # start, the imports and the signature check that unzip does not pay for
            said = re.search(r"staged \d+ files in ([\d.]+)s", (work / "stage.log").read_text())
            step_t.append(float(said[1]) if said else float("nan"))
            subprocess.run(unstage, capture_output=True, cwd=REPO)
        start_t = [timed([python(), "-m", "installer.cli", "--version"], stdout=subprocess.DEVNULL, cwd=REPO)[0]
                   for _ in range(repeat)]  # fmt: skip
        peak, _ = peak_memory(stage, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        pss.append(peak)
        with zipfile.ZipFile(bundle) as z:
            patched = [f for f in json.loads(z.read("manifest.json"))["files"] if f.get("delta")]
        largest = max((int(f["size"]) for f in patched), default=0)
        renamed = sum(1 for f in patched if f["delta"].get("base"))
        rows.update({
            "files": len(new_files), "changed": len(changed), "added": len(added),
            "full_to_release_zip6": full, "changed_files_zip6": changed_size,
            "per_file_xdelta3": (xd_total + added_deflated) if have_xd else None,
            "best_of_tools_per_file": best_total + added_deflated,
            "jumpkit_bundle": bundle.stat().st_size,
            "jumpkit_one_entry_per_file": Path(plain_doc["bundle"]).stat().st_size,
            "jumpkit_with_installer": Path(shipped_doc["bundle"]).stat().st_size,
            "jumpkit_with_installer_patch": shipped_doc["installer_patch"]["size"],
            "build_cold_s": round(cold, 2), "build_warm_s": round(statistics.median(warm_t), 2),
            "stage_s": round(statistics.median(stage_t), 2), "stage_step_s": round(statistics.median(step_t), 2),
            "unzip_changed_s": round(statistics.median(unzip_t), 2),
            "stage_ratios": sorted(round(a / max(b, 1e-9), 2) for a, b in zip(stage_t, unzip_t, strict=True)),
            "installer_start_s": round(statistics.median(start_t), 2),
            "patched": len(patched), "patched_against_a_renamed_file": renamed,
            "stage_peak_pss_mib": round(max(pss) / 1024), "largest_patched_file_mib": round(largest / 2**20, 1),
            "stage_memory_target_mib": round(3 * largest / 2**20 + 100 * 1e6 / 2**20),
        })  # fmt: skip
    return rows


def show(rows: dict[str, object]) -> None:
    b = int(rows["jumpkit_bundle"])  # type: ignore[call-overload]
    print("releases: " + "; ".join(rows["releases"]))  # type: ignore[arg-type]
    print(f"{rows['files']} files; {rows['changed']} changed, {rows['added']} added; "
          f"{rows['patched']} travel as patches ({rows['patched_against_a_renamed_file']} against a "
          "file the release renamed)")  # fmt: skip
    for what in ("full_to_release_zip6", "changed_files_zip6", "per_file_xdelta3", "best_of_tools_per_file"):
        v = rows[what]
        if v is not None:
            print(f"  {what:<26} {int(v) / 2**20:8.1f} MiB   bundle/this = {b / int(v):.3f}")  # type: ignore[call-overload]
    print(
        f"  {'jumpkit bundle':<26} {b / 2**20:8.1f} MiB   (without installer; small members in solid members)"
    )
    for what in ("jumpkit_one_entry_per_file", "jumpkit_with_installer", "jumpkit_with_installer_patch"):
        print(f"  {what:<26} {int(rows[what]) / 2**20:8.1f} MiB")  # type: ignore[call-overload]
    print(f"build: cold {rows['build_cold_s']}s, warm cache {rows['build_warm_s']}s")
    print(f"stage {rows['stage_s']}s vs unzip -q of the changed files {rows['unzip_changed_s']}s "
          f"({float(rows['stage_s']) / max(float(rows['unzip_changed_s']), 1e-9):.2f}x; "  # type: ignore[arg-type]
          f"interleaved pairs {rows['stage_ratios']}); the stage step alone (unpack and patches, as the "
          f"installer reports it) {rows['stage_step_s']}s "
          f"({float(rows['stage_step_s']) / max(float(rows['unzip_changed_s']), 1e-9):.2f}x unzip); "  # type: ignore[arg-type]
          f"(of which the installer's own start, --version: {rows['installer_start_s']}s); "
          f"installer peak PSS {rows['stage_peak_pss_mib']} MiB (target: 3 x the largest patched file, "
          f"{rows['largest_patched_file_mib']} MiB, + 100 MB = {rows['stage_memory_target_mib']} MiB)")  # fmt: skip


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument(
        "--pairs", default=",".join(PAIRS), help=f"which pairs, comma-separated: {', '.join(PAIRS)}"
    )
    args = ap.parse_args()
    unknown = [n for n in args.pairs.split(",") if n not in PAIRS]
    if unknown:
        ap.error(f"--pairs: unknown {unknown[0]!r} (known: {', '.join(PAIRS)})")
    results = {n: measure(PAIRS[n], args.repeat) for n in args.pairs.split(",")}
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for n, rows in results.items():
        print(f"== {n}")
        show(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
