"""The manager's installer kept unpacked: ``var/lib/jumpkit/bin/bundle-install.d/``.

The portable ``bundle-install`` is a static launcher with a tree appended (loader, glibc
and PyInstaller's one-dir build: ``scripts/freeze/tree.py``). Run anywhere else, the
launcher unpacks the tree into a temporary directory at every start. When a committed
apply makes a bundle's installer the manager's own (:mod:`installer.selfupdate`), the tree
is unpacked here once, as ``bin/.trees/<id>/``, and ``<binary>.d`` (a symlink, swapped by
one rename) points at it; the launcher then executes it in place. Measured
(``scripts/bench/installer-startup.py``): the figures are in its output and docs/benchmarks.md.

Safety rests on ``.id``: the sha256 of the payload, written last (after every file is
fsynced) and compared by the launcher with its own trailer. A half-written tree, a tree of
another version, or no tree at all makes the launcher unpack as anywhere else; a crash
at any instant costs speed, never correctness. ``.prev`` follows the binary: the link of
``bundle-install.prev`` is ``bundle-install.prev.d``. A tree is never removed while an
installer runs from it (the launcher holds a shared flock on its ``.id``; the installer
that replaces itself runs from the very tree it replaces): :func:`collect` removes only
trees that no link names and that it can lock exclusively.

``scripts/freeze/layers.py`` reads the payload with it too.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import shutil
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from installer.paths import fsync_dir

TRAILER = struct.Struct("<8sQQ32s")
MAGIC = b"JKPAYLD2"
TREE_MAGIC = b"JKTREE02"
"""The entry stream in zstd frames (frame table first): what freezes write since the
portable installer shrank from 58 to ~26 MB. The frames are read as one stream: where they
are cut (between entries in older freezes, at content-defined points inside entries since)
is the writer's choice (``scripts/freeze/tree.py``: FRAME_AVERAGE)."""
TREE_MAGIC_STORED = b"JKTREE01"
"""The entry stream stored as it is: installers frozen before, still read (kept trees)."""
MAX_FRAMES = 100_000
MAX_ENTRY = 1 << 32
ENTRY = struct.Struct("<cIHQ")
ID_FILE = ".id"
TREES = ".trees"
MAX_ENTRIES = 100_000


class TreeError(Exception):
    """The binary's appended tree is damaged (a truncated or altered file)."""


@dataclass(frozen=True)
class Payload:
    offset: int
    size: int
    id: str
    """sha256 of the payload (hex): what the kept tree's .id must say."""


def payload(binary: Path) -> Payload | None:
    """The tree appended to ``binary``, or None when it has none (an installer frozen
    before the tree layout, a plain PyInstaller build, a Python checkout)."""
    try:
        with binary.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            if end < TRAILER.size:
                return None
            f.seek(end - TRAILER.size)
            magic, offset, size, digest = TRAILER.unpack(f.read(TRAILER.size))
    except OSError:
        return None
    if magic != MAGIC or offset + size + TRAILER.size != end:
        return None
    return Payload(offset, size, digest.hex())


class _Stream:
    """The tree's entry stream, read in order: stored as it is (``JKTREE01``) or as zstd
    frames listed in a table (``JKTREE02``); an entry may span frames."""

    def __init__(self, f: BinaryIO, p: Payload) -> None:
        self.f, self.end = f, p.offset + p.size
        f.seek(p.offset)
        head = f.read(12)
        if len(head) != 12 or head[:8] not in (TREE_MAGIC_STORED, TREE_MAGIC):
            raise TreeError("not a jumpkit tree")
        (self.count,) = struct.unpack("<I", head[8:])
        self.frames: list[tuple[int, int]] | None = None
        self.buf, self.at, self.pos = b"", 0, 0
        if head[:8] == TREE_MAGIC:
            (n,) = struct.unpack("<I", f.read(4))
            table = f.read(16 * n)
            if n > MAX_FRAMES or len(table) != 16 * n:
                raise TreeError("truncated")
            self.frames = [struct.unpack_from("<QQ", table, 16 * i) for i in range(n)]
            self.frames.reverse()
            if sum(c for c, _ in self.frames) + 16 + 16 * n != p.size:
                raise TreeError("frames do not fill the payload")

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end)."""
        if self.frames is None:
            data = self.f.read(min(n, self.end - self.f.tell()))
            self.pos += len(data)
            return data
        import zstandard  # only a compressed tree needs it (kept-tree starts stay lean)

        out = []
        while n and (self.at < len(self.buf) or self.frames):
            if self.at == len(self.buf):
                csize, dsize = self.frames.pop()
                frame = self.f.read(csize)
                try:
                    self.buf = zstandard.ZstdDecompressor().decompress(frame, max_output_size=dsize)
                except zstandard.ZstdError as e:
                    raise TreeError(f"a frame does not decompress ({e})") from e
                if len(frame) != csize or len(self.buf) != dsize:
                    raise TreeError("truncated")
                self.at = 0
            piece = self.buf[self.at : self.at + n]
            self.at += len(piece)
            n -= len(piece)
            out.append(piece)
        data = b"".join(out)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> None:
        for _ in chunks(self, n):
            pass


def entries(stream: _Stream) -> Iterator[tuple[str, str, int, int, bytes | None]]:
    """(kind, relative path, mode, data length, link target) per entry; a file's data is
    the next ``length`` bytes of ``stream`` (skipped when the caller reads none of it).

    Raises:
        TreeError: a bad header, a path that is absolute or climbs, data past the end.
    """
    if stream.count > MAX_ENTRIES:
        raise TreeError(f"{stream.count} entries")
    for _ in range(stream.count):
        raw = stream.read(ENTRY.size)
        if len(raw) != ENTRY.size:
            raise TreeError("truncated")
        kind, mode, plen, length = ENTRY.unpack(raw)
        name = stream.read(plen).decode("utf-8", "surrogateescape")
        parts = name.split("/")
        if not name or name.startswith("/") or any(x in ("", ".", "..") for x in parts) or length > MAX_ENTRY:
            raise TreeError(f"bad entry {name!r}")
        target = stream.read(length) if kind == b"l" else None
        after = stream.pos + (length if kind == b"f" else 0)
        yield kind.decode(), name, stat.S_IMODE(mode), length, target
        stream.skip(after - stream.pos)


def chunks(f: BinaryIO | _Stream, length: int) -> Iterator[bytes]:
    """The next ``length`` bytes of ``f``, 1 MiB at a time.

    Raises:
        TreeError: the file ends first.
    """
    while length:
        chunk = f.read(min(length, 1 << 20))
        if not chunk:
            raise TreeError("truncated")
        yield chunk
        length -= len(chunk)


def unpack(binary: Path, dest: Path, p: Payload) -> None:
    """Check the payload against its sha256, then write the tree of ``binary`` into
    ``dest`` (created; must not exist), every file fsynced, then ``.id`` last.

    Raises:
        TreeError, OSError.
    """
    with binary.open("rb") as f:
        f.seek(p.offset)
        h = hashlib.sha256()
        for chunk in chunks(f, p.size):
            h.update(chunk)
        if h.hexdigest() != p.id:
            raise TreeError("the payload does not match its sha256 (an altered binary)")
    dest.mkdir(mode=0o755)
    links: set[str] = set()
    with binary.open("rb") as f:
        stream = _Stream(f, p)
        for kind, name, mode, length, target in entries(stream):
            path = dest / name
            parts = name.split("/")
            if any("/".join(parts[:i]) in links for i in range(1, len(parts))):
                raise TreeError(f"bad entry {name!r}: beneath a symlink of the tree")
            if kind == "l":
                to = os.fsdecode(target or b"")
                where = posixpath.normpath(posixpath.join(posixpath.dirname(name), to))
                if not to or to.startswith("/") or where == ".." or where.startswith("../"):
                    raise TreeError(f"bad entry {name!r}: a link out of the tree ({to!r})")
                links.add(name)
            if kind == "d":
                path.mkdir(mode=mode | 0o700)
            elif kind == "l":
                os.symlink(os.fsdecode(target or b""), path)
            elif kind == "f":
                with open(path, "xb") as out:
                    for chunk in chunks(stream, length):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(path, mode)
            else:
                raise TreeError(f"unknown entry kind {kind!r}")
    _fsync_tree(dest)
    idf = dest / ID_FILE
    with open(idf, "x") as out:
        out.write(p.id)
        out.flush()
        os.fsync(out.fileno())
    fsync_dir(dest)


def tree_of(binary: Path) -> Path:
    """Where the launcher of ``binary`` looks for its kept tree: ``<binary>.d``, a symlink
    to ``.trees/<id>`` beside it."""
    return binary.with_name(binary.name + ".d")


def is_kept(binary: Path) -> bool:
    """Whether ``binary`` starts from a kept tree (its tree is there and is this binary's)."""
    p = payload(binary)
    try:
        return p is not None and (tree_of(binary) / ID_FILE).read_text() == p.id
    except OSError:
        return False


def keep(binary: Path) -> bool:
    """Unpack ``binary``'s tree beside it and point ``<binary>.d`` at it (one rename of a
    symlink); True when ``binary`` now starts kept. A binary without a tree loses its
    link. Trees no link names and no installer runs from are removed."""
    p = payload(binary)
    if p is None:
        discard(binary)
        return False
    trees = binary.parent / TREES
    tree = trees / p.id
    if not _valid(tree, p.id):
        trees.mkdir(exist_ok=True)
        tmp = trees / f".{p.id}.new"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            unpack(binary, tmp, p)
            shutil.rmtree(tree, ignore_errors=True)  # a damaged one: nobody can run from it
            os.rename(tmp, tree)
            fsync_dir(trees)
        except (OSError, TreeError):
            shutil.rmtree(tmp, ignore_errors=True)
            discard(binary)
            return False  # the launcher unpacks as anywhere else: slower, still correct
    _link(tree_of(binary), f"{TREES}/{p.id}")
    collect(binary.parent)
    return True


def move(src: Path, dest: Path) -> None:
    """Make the kept tree of binary ``src`` that of ``dest`` too (``.prev`` rotation)."""
    link = tree_of(src)
    if link.is_symlink():
        _link(tree_of(dest), os.readlink(link))
    else:
        discard(dest)


def discard(binary: Path) -> None:
    """``binary`` no longer starts kept (its tree goes once no link and no process holds it)."""
    link = tree_of(binary)
    if link.is_symlink() or link.exists():
        link.unlink()
        fsync_dir(link.parent)
    collect(binary.parent)


def collect(bin_dir: Path) -> list[str]:
    """Remove the trees under ``bin_dir/.trees`` that no ``*.d`` link names and that no
    running installer holds (the launcher keeps a shared flock on the tree's .id); returns
    the ids removed."""
    trees = bin_dir / TREES
    if not trees.is_dir():
        return []
    named = {os.path.basename(os.readlink(link)) for link in bin_dir.glob("*.d") if link.is_symlink()}
    gone = []
    for tree in trees.iterdir():
        if tree.name in named:
            continue
        try:
            fd = os.open(tree / ID_FILE, os.O_RDONLY)
        except OSError:
            fd = None  # half unpacked or damaged: no launcher would run from it
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(tree)
            gone.append(tree.name)
        except OSError:
            continue  # an installer still runs from it: the next self-update removes it
        finally:
            if fd is not None:
                os.close(fd)
    return gone


def _valid(tree: Path, ident: str) -> bool:
    try:
        return (tree / ID_FILE).read_text() == ident
    except OSError:
        return False


def _link(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def _fsync_tree(top: Path) -> None:
    for dirpath, _dirs, _files in os.walk(top):
        fsync_dir(Path(dirpath))
