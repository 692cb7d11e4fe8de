"""Assemble the portable installer: launcher + tree + trailer (run by scripts/freeze-installer
in the freeze venv).

The tree (unpacked by scripts/freeze/launcher.c, or once by installer/resident.py when a
manager keeps the installer):

  lib/   ld-linux-x86-64.so.2, libc.so.6 and every system library that the one-dir build
         links and does not carry (found here, on the build host, by their DT_NEEDED
         names, to closure), libnss_files/libnss_dns, and staticx's libnssfix.so (loaded
         with --preload: name lookups use files and DNS only, never a system NSS module
         built for another glibc);
  app/   the PyInstaller one-dir build.

Why not staticx + PyInstaller one-file as before: a one-file binary unpacks itself on every
start (0.3-0.6 s, ~100 MB written in three steps) and PyInstaller 6.22 refuses, by design,
to run from a directory another process unpacked ("Security validation failure:
unexpected name of application's home directory"), so it cannot be kept unpacked. A
one-dir build can, and our own loader and glibc keep it portable.

Payload: the entry stream (per entry: kind 'd'/'f'/'l', u32le mode, u16le path length,
u64le data length, path, data; directories before what they hold) in zstd frames behind a
frame table (write_payload: JKTREE02), cut where the content says (FRAME_AVERAGE). Trailer:
"JKPAYLD2" u64le offset u64le size, then the payload's sha256 (the kept tree's .id).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import stat
import struct
import sys
from pathlib import Path
from typing import BinaryIO

LOADER = "ld-linux-x86-64.so.2"
SYSTEM_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64")
ALWAYS = ("libc.so.6", "libnss_files.so.2", "libnss_dns.so.2")
ENTRY = struct.Struct("<cIHQ")
TRAILER = struct.Struct("<8sQQ32s")


def _needed(path: Path) -> list[str]:
    from elftools.common.exceptions import ELFError  # the freeze venv's (staticx needs pyelftools)
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    try:
        with path.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                return []
            f.seek(0)
            elf = ELFFile(f)
            out = []
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    out += [t.needed for t in section.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
            return out
    except (ELFError, OSError):
        return []


def _system(name: str) -> Path:
    for d in SYSTEM_DIRS:
        p = Path(d) / name
        if p.exists():
            return p.resolve()
    raise SystemExit(f"tree: {name} is needed but not on this build host ({', '.join(SYSTEM_DIRS)})")


def gather_libs(app: Path, lib: Path, nssfix: Path) -> list[str]:
    """Fill ``lib`` with the loader, glibc and every system library the tree needs."""
    lib.mkdir(parents=True)
    shutil.copy(_system(LOADER), lib / LOADER)
    shutil.copy(nssfix, lib / "libnssfix.so")
    carried = {p.name for p in app.rglob("*") if p.is_file() or p.is_symlink()}
    todo = [p for p in app.rglob("*") if p.is_file()] + [lib / "libnssfix.so"]
    for name in ALWAYS:
        shutil.copy(_system(name), lib / name)
        todo.append(lib / name)
    added = list(ALWAYS)
    while todo:
        for name in _needed(todo.pop()):
            if name == LOADER or name in carried or (lib / name).exists():
                continue
            shutil.copy(_system(name), lib / name)
            added.append(name)
            todo.append(lib / name)
    return sorted(set(added))


def _entries(top: Path) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirs, files in os.walk(top):
        dirs.sort()
        rel = os.path.relpath(dirpath, top)
        for name in sorted(dirs) + sorted(files):
            out.append((os.path.normpath(os.path.join(rel, name)), Path(dirpath) / name))
    return out


FRAME_AVERAGE = 2 << 20
"""The frames are cut where the entry stream's content says (FastCDC, average 2 MiB, at
least 512 KiB, at most 8 MiB), also inside an entry: a change in a few modules of the
PyInstaller archive changes the frames that hold them and no other, so that an installer
patch against the last release (``bundle-build --installer-base``) carries those frames
only. Measured on two freezes of this tree a few modules apart (a 76 MB stream, level 19),
payload and patch of the second against the first:

    cut between whole entries, every 4 MiB (before)   22.57 MB   6,082 KB
    content-defined, average 1 MiB                   23.86 MB     561 KB
    content-defined, average 2 MiB (this)            23.34 MB     816 KB
    content-defined, average 4 MiB                   22.94 MB   1,645 KB

(the whole-entry cuts kept the 30 MB PyInstaller executable in one frame, and moved every
later frame). A frame is also what a reader decompresses at once (its memory)."""
LEVEL = 19
"""zstd level: measured on this tree (58 MB), 3 -> 29.4 MB in 0.2 s, 9 -> 28.1 MB, 19 ->
26.2 MB in 13 s; decompression ~0.09 s whatever the level. The freeze runs once per
release, every manager start that unpacks pays nothing more for the higher level."""


def _entry(rel: str, path: Path) -> bytes:
    st = path.lstat()
    name = rel.encode()
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path).encode()
        return ENTRY.pack(b"l", 0o777, len(name), len(target)) + name + target
    if stat.S_ISDIR(st.st_mode):
        return ENTRY.pack(b"d", stat.S_IMODE(st.st_mode), len(name), 0) + name
    return ENTRY.pack(b"f", stat.S_IMODE(st.st_mode), len(name), st.st_size) + name + path.read_bytes()


def write_payload(tree: Path, out: BinaryIO) -> None:
    """JKTREE02: "JKTREE02" u32le count, u32le frames, per frame u64le compressed and u64le
    decompressed size, then the frames: zstd (level LEVEL, one thread, no checksum of its
    own: the payload's sha256 covers it) of the entry stream cut at content-defined points
    (:data:`FRAME_AVERAGE`). A reader reads the frames as one stream. Fixed order, fixed
    parameters: the same tree gives the same bytes."""
    import zstandard  # the freeze venv's (the installer depends on it)
    from pyfastcdc import FastCDC  # the freeze venv's

    entries = _entries(tree)
    stream = b"".join(_entry(rel, path) for rel, path in entries)
    cctx = zstandard.ZstdCompressor(level=LEVEL, threads=0, write_checksum=False, write_content_size=True)
    cuts = FastCDC(FRAME_AVERAGE, min_size=FRAME_AVERAGE // 4, max_size=FRAME_AVERAGE * 4, seed=0)
    frames = [(cctx.compress(c.data), c.length) for c in cuts.cut_buf(stream)]
    out.write(b"JKTREE02" + struct.pack("<II", len(entries), len(frames)))
    for data, size in frames:
        out.write(struct.pack("<QQ", len(data), size))
    for data, _ in frames:
        out.write(data)


def assemble(launcher: Path, tree: Path, dest: Path) -> str:
    with dest.open("wb") as f:
        with launcher.open("rb") as src:
            shutil.copyfileobj(src, f)
        offset = f.tell()
        write_payload(tree, f)
        size = f.tell() - offset
    h = hashlib.sha256()
    with dest.open("rb") as f:
        f.seek(offset)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    with dest.open("ab") as f:
        f.write(TRAILER.pack(b"JKPAYLD2", offset, size, h.digest()))
    dest.chmod(0o755)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(prog="tree.py", description=__doc__.splitlines()[0])
    ap.add_argument("--onedir", type=Path, required=True, help="PyInstaller's one-dir output")
    ap.add_argument("--launcher", type=Path, required=True)
    ap.add_argument("--nssfix", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    tree = a.work / "tree"
    shutil.copytree(a.onedir, tree / "app", symlinks=True)
    libs = gather_libs(tree / "app", tree / "lib", a.nssfix)
    digest = assemble(a.launcher, tree, a.out)
    print(f"tree: lib/ has {len(libs)} system libraries ({', '.join(libs)}); payload {digest[:12]}",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
