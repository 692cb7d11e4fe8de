"""Benchmark: what a release bundle weighs with its installer whole and as a patch
(``bundle-build --installer-base``), on the demo jump 4.0.1 -> 4.1.1 with the real frozen
installer. Prints, medians of --repeat builds in one run:

- the ZIP and the RPM with the installer whole, and their patch forms against the same
  installer (a release whose jumpkit did not change: target <= 100 KB of installer);
- the installer patch when jumpkit changed in a few modules: this checkout frozen again
  with two modules edited (a copy of the tree; the freeze cache is shared), target <= 3 MB;
- the ratios (RPM / ZIP, patch form / full) and the installer's own size.

Never fails on absolute size or time.

    uv run python scripts/bench/size.py [--repeat 3] [--json]
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
from common import REPO, frozen_installer, keygen, parser, python

sys.path.insert(0, str(REPO))
from builder.delta import zstd_patch

EDITS = {  # a few modules changed, as between two jumpkit releases
    "installer/selfpatch.py": ("def kept_bytes(", "def kept_bytes(  # bench edit\n    "),
    "installer/errors.py": ('"""', '"""bench edit: one more line of text.\n', 1),
}


def _build(out: Path, key: Path, installer: Path, base: Path | None) -> dict[str, object]:
    argv = [python(), "-m", "builder.cli", "--specs", str(REPO / "specs"), "--from", "4.0.1",
            "--to", "4.1.1", "--key", str(key), "--out", str(out), "--installer", str(installer),
            "--format", "all", "--json", "--installer-base", str(base) if base else "none"]  # fmt: skip
    p = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=True)
    return dict(json.loads(p.stdout))


def _edited_installer(work: Path) -> Path:
    """This checkout's installer frozen again with :data:`EDITS` applied to a copy."""
    copy = work / "edited"
    shutil.copytree(
        REPO, copy, symlinks=True, ignore=shutil.ignore_patterns(".venv", ".cache", "dist", ".git")
    )
    (copy / ".cache").mkdir()
    (copy / ".cache/freeze").symlink_to(REPO / ".cache/freeze")  # its venv and its lock
    for rel, (old, new, *count) in EDITS.items():
        path = copy / rel
        path.write_text(path.read_text().replace(old, new, *count))
    p = subprocess.run([str(copy / "scripts/freeze-installer"), "--print-path"], capture_output=True,
                       text=True, cwd=copy, check=True)  # fmt: skip
    return Path(p.stdout.split()[-1])


def main() -> int:
    args = parser(__doc__).parse_args()
    frozen = frozen_installer()
    rows: dict[str, object] = {"installer_bytes": frozen.stat().st_size}
    with tempfile.TemporaryDirectory(prefix="jk-size-") as tmp:
        work = Path(tmp)
        key, _ = keygen(work)
        runs = [_build(work / f"b{i}", key, frozen, frozen) for i in range(args.repeat)]
        rpm_full = [Path(r["rpm"]["path"]).stat().st_size for r in runs]  # type: ignore[index]
        rpm_lean = [Path(r["installer_patch"]["rpm"]["path"]).stat().st_size for r in runs]  # type: ignore[index]
        rows |= {
            "zip_full": statistics.median(int(r["size"]) for r in runs),  # type: ignore[call-overload]
            "zip_patch_form": statistics.median(int(r["installer_patch"]["size"]) for r in runs),  # type: ignore[index]
            "installer_patch_unchanged": statistics.median(
                int(r["installer_patch"]["patch_bytes"])
                for r in runs  # type: ignore[index]
            ),
            "rpm_full": statistics.median(rpm_full),
            "rpm_patch_form": statistics.median(rpm_lean),
        }
        edited = _edited_installer(work)
        changed = zstd_patch(frozen.read_bytes(), edited.read_bytes())
        rows |= {"installer_patch_few_modules": len(changed), "edited_installer_bytes": edited.stat().st_size}
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    r = rows
    print(
        f"demo jump 4.0.1 -> 4.1.1, medians of {args.repeat} builds; the installer is {r['installer_bytes']:,} bytes"
    )
    print(f"  ZIP, installer whole         {r['zip_full']:>12,} bytes")
    print(
        f"  ZIP, installer as a patch    {r['zip_patch_form']:>12,} bytes   "
        f"{r['zip_full'] / r['zip_patch_form']:.0f}x smaller"
    )  # type: ignore[operator]
    print(
        f"  RPM, installer whole         {r['rpm_full']:>12,} bytes   RPM/ZIP = {r['rpm_full'] / r['zip_full']:.3f}"
    )  # type: ignore[operator]
    print(f"  RPM, installer as a patch    {r['rpm_patch_form']:>12,} bytes")
    print(
        f"installer patch, jumpkit unchanged       {r['installer_patch_unchanged']:>10,} bytes (target <= 100,000)"
    )
    print(f"installer patch, {len(EDITS)} modules of jumpkit changed {r['installer_patch_few_modules']:>10,} bytes "
          "(target <= 3,000,000)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
