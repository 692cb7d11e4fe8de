"""Unpack the layers of a frozen jumpkit installer, outermost first (used by
scripts/glibc-floor and by the tests that check what the binary contains):

  launcher     scripts/freeze/launcher.c: payload + trailer "JKPAYLD2" <offset> <size>
               <sha256> (installers frozen before the tree: "JKPAYLD1" <offset> <size>)
  tree         scripts/freeze/tree.py: lib/ (loader, glibc, system libraries) and app/
               (PyInstaller's one-dir build), read with installer.resident
  staticx      (older installers) ELF section .staticx.archive: a tar (maybe xz) of the
               program, its libraries, libc and the dynamic loader
  PyInstaller  CArchive: one-file: libpython, extension modules, the shared libraries
               they link, and PYZ.pyz; one-dir: PYZ.pyz, the rest beside it on disk

Runs in the freeze venv (PyInstaller's own archive readers).
"""

from __future__ import annotations

import io
import lzma
import struct
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PyInstaller.archive.readers import ArchiveReadError, CArchiveReader, ZlibArchiveReader

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from installer import resident

ELF_MAGIC = b"\x7fELF"
TRAILER = struct.Struct("<8sQQ")


@dataclass
class Layers:
    """What a frozen binary holds."""

    elf: dict[str, Path] = field(default_factory=dict)  # display name -> unpacked file
    layers: list[str] = field(default_factory=list)
    modules: set[str] = field(default_factory=set)  # frozen Python modules (PYZ, base_library.zip)
    libc: Path | None = None  # a glibc shipped inside (staticx)


def _copy_range(src: Path, offset: int, length: int, dest: Path) -> None:
    with src.open("rb") as f, dest.open("wb") as out:
        f.seek(offset)
        for chunk in resident.chunks(f, length):
            out.write(chunk)


def _launcher(path: Path, name: str, out: Layers, tmp: Path) -> bool:
    tree = resident.payload(path)
    if tree is not None:
        out.layers.append(f"{name}: jumpkit launcher (static)")
        return _tree(path, tree, name, out, tmp)
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(size - TRAILER.size, 0))
        tail = f.read(TRAILER.size)
    if len(tail) != TRAILER.size:
        return False
    magic, offset, length = TRAILER.unpack(tail)
    if magic != b"JKPAYLD1" or offset + length + TRAILER.size != size:
        return False
    out.layers.append(f"{name}: jumpkit launcher (static)")
    payload = tmp / f"payload-{len(out.layers)}"
    _copy_range(path, offset, length, payload)
    _walk(payload, f"{name}/payload", out, tmp)
    return True


def _tree(path: Path, payload: resident.Payload, name: str, out: Layers, tmp: Path) -> bool:
    out.layers.append(f"{name}/tree: jumpkit tree (loader, glibc, one-dir)")
    dest = tmp / f"tree-{len(out.layers)}"
    resident.unpack(path, dest, payload)
    lib = dest / "lib" / "libc.so.6"
    out.libc = lib if lib.is_file() else None
    for f in sorted(p for p in dest.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = f.relative_to(dest).as_posix()
        if f.name == "base_library.zip":
            _base_library(f.read_bytes(), out)
        elif rel == "app/bundle-install":
            out.elf[f"{name}/{rel}"] = f
            _pyinstaller(f, f"{name}/{rel}", out, tmp)
        else:
            _walk(f, f"{name}/{rel}", out, tmp)
    return True


def _base_library(data: bytes, out: Layers) -> None:
    """The stdlib modules PyInstaller's bootstrap needs (base_library.zip)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for n in z.namelist():
            if n.endswith(".pyc"):
                mod = n[: -len(".pyc")].replace("/", ".")
                out.modules.add(mod.removesuffix(".__init__"))


def _staticx(path: Path, name: str, out: Layers, tmp: Path) -> bool:
    section = tmp / f"sx-{len(out.layers)}"
    subprocess.run(
        [
            "objcopy",
            "-O",
            "binary",
            "--only-section=.staticx.archive",
            # a non-alloc section: without the flag objcopy writes an empty file
            "--set-section-flags",
            ".staticx.archive=alloc",
            str(path),
            str(section),
        ],
        capture_output=True,
        check=False,
    )
    if not section.exists() or section.stat().st_size == 0:
        return False
    out.layers.append(f"{name}: staticx")
    raw = section.read_bytes()
    if raw.startswith(b"\xfd7zXZ"):
        raw = lzma.decompress(raw)
    dest = tmp / f"sx-{len(out.layers)}.d"
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar.getmembers():  # regular files with flat names only (3.11.2 has no filter=)
            src = (
                tar.extractfile(m) if m.isfile() and "/" not in m.name and m.name not in (".", "..") else None
            )
            if src is not None:
                (dest / m.name).write_bytes(src.read())
    for member in sorted(dest.iterdir()):
        if member.name.startswith("libc.so"):
            out.libc = member
        _walk(member, f"{name}/{member.name}", out, tmp)
    return True


def _pyinstaller(path: Path, name: str, out: Layers, tmp: Path) -> bool:
    try:
        archive = CArchiveReader(str(path))
    except (ArchiveReadError, OSError, struct.error, ValueError):
        return False
    onedir = (path.parent / "_internal").is_dir()
    out.layers.append(f"{name}: PyInstaller {'one-dir' if onedir else 'onefile'}")
    for entry, (_pos, _clen, _ulen, _flag, typecode) in sorted(archive.toc.items()):
        if typecode == "b":
            data = archive.extract(entry)
            if data[:4] == ELF_MAGIC:
                dest = tmp / f"pyi-{len(out.elf)}"
                dest.write_bytes(data)
                out.elf[f"{name}/{entry}"] = dest
        elif typecode in ("m", "M"):  # modules PyInstaller's bootstrap loads itself (struct, ...)
            out.modules.add(entry)
        elif typecode == "x" and entry == "base_library.zip":  # the stdlib the bootstrap needs
            _base_library(archive.extract(entry), out)
        elif typecode == "z":
            pyz = tmp / f"pyz-{len(out.layers)}"
            pyz.write_bytes(archive.extract(entry))
            out.modules |= set(ZlibArchiveReader(str(pyz)).toc)
    return True


UNPACKERS: tuple[Callable[[Path, str, Layers, Path], bool], ...] = (_launcher, _staticx, _pyinstaller)


def _walk(path: Path, name: str, out: Layers, tmp: Path) -> None:
    with path.open("rb") as f:
        if f.read(4) != ELF_MAGIC:
            return
    out.elf[name] = path
    for unpack in UNPACKERS:
        if unpack(path, name, out, tmp):
            return


def unpack(binary: Path, tmp: Path) -> Layers:
    """Every layer of ``binary`` unpacked under ``tmp`` (which the caller removes)."""
    out = Layers()
    _walk(binary, binary.name, out, tmp)
    return out
