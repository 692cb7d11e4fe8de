"""glibc floor of a frozen installer: the highest GLIBC_x.y symbol version that the binary
and every library it bundles need FROM THE SYSTEM (run by scripts/glibc-floor).

The layers (launcher, staticx, PyInstaller) are unpacked by layers.py; every ELF file's
version needs are read with ``readelf -V`` (.gnu.version_r). A glibc that ships inside the
binary (staticx) satisfies those needs itself: the floor is then "none", and the kernel
that bundled libc was built for is the limit.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from layers import unpack

GLIBC_NEED = re.compile(r"Name: (GLIBC_(\d+)\.(\d+)(?:\.(\d+))?)")


def _needs(path: Path) -> tuple[int, ...]:
    out = subprocess.run(["readelf", "-V", "--wide", str(path)], capture_output=True, text=True).stdout
    best: tuple[int, ...] = ()
    for m in GLIBC_NEED.finditer(out):
        best = max(best, tuple(int(x) for x in m.groups()[1:] if x is not None))
    return best


def _glibc_version(libc: Path) -> str | None:
    """The release of a bundled libc.so.6: the newest GLIBC_x.y it defines."""
    out = subprocess.run(["readelf", "-V", "--wide", str(libc)], capture_output=True, text=True).stdout
    defs = [tuple(int(x) for x in m.groups()[1:] if x) for m in GLIBC_NEED.finditer(out)]
    top = [d for d in defs if len(d) == 2]
    return "{}.{}".format(*max(top)) if top else None


def _kernel(libc: Path) -> str | None:
    out = subprocess.run(["file", "-b", str(libc)], capture_output=True, text=True).stdout
    m = re.search(r"for GNU/Linux (\d+\.\d+\.\d+)", out)
    return m.group(1) if m else None


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="glibc-floor",
        description="Print the highest GLIBC_x.y symbol version a frozen installer needs from the "
        "system glibc (the binary and every library it bundles; a bundled glibc satisfies its own).",
    )
    ap.add_argument("binary", type=Path)
    ap.add_argument("--json", action="store_true", help="one JSON document")
    ap.add_argument("--verbose", "-v", action="store_true", help="list every ELF file and its need")
    args = ap.parse_args()
    if not args.binary.is_file():
        print(f"glibc-floor: {args.binary}: no such file", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="glibc-floor-") as tmp:
        layers = unpack(args.binary, Path(tmp))
        needs = {name: _needs(path) for name, path in layers.elf.items()}
        bundled = _glibc_version(layers.libc) if layers.libc else None
        kernel = _kernel(layers.libc) if layers.libc else None
    if not needs:
        print(f"glibc-floor: {args.binary}: not an ELF executable", file=sys.stderr)
        return 2
    worst = max(needs.items(), key=lambda kv: kv[1])
    used = "GLIBC_" + ".".join(map(str, worst[1])) if worst[1] else None
    floor = None if bundled else used
    if args.json:
        doc = {
            "binary": str(args.binary),
            "floor": floor,
            "highest_used": used,
            "highest_used_by": worst[0] if worst[1] else None,
            "bundled_glibc": bundled,
            "kernel": kernel,
            "layers": layers.layers,
            "elf_files": len(needs),
        }
        print(json.dumps(doc, indent=2))
        return 0
    if floor:
        print(floor)
        print(f"  needed by {worst[0]}; {len(needs)} ELF files checked", file=sys.stderr)
    else:
        print("none")
        print(
            f"  bundles its own glibc {bundled} (needs {used} inside, from {worst[0]}); "
            f"Linux kernel >= {kernel or '?'}; {len(needs)} ELF files checked",
            file=sys.stderr,
        )
    for layer in layers.layers:
        print(f"  layer {layer}", file=sys.stderr)
    if args.verbose:
        for n, need in sorted(needs.items()):
            print(f"    {'GLIBC_' + '.'.join(map(str, need)) if need else '-':<12} {n}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
