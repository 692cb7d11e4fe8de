"""The manager's installer kept unpacked (issue 23): ``installer/resident.py`` on synthetic
binaries in the launcher's layout (written by ``scripts/freeze/tree.py``, as a freeze
does). The real launcher and frozen binary are exercised in ``tests/test_frozen.py``."""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import sys
from pathlib import Path

import pytest

from installer import resident
from tests.helpers import REPO

sys.path.insert(0, str(REPO / "scripts/freeze"))
import tree as freeze_tree


def fake_binary(tmp: Path, name: str, body: bytes) -> Path:
    """A 'launcher' (any bytes) with a tree of lib/ and app/ appended."""
    src = tmp / f"src-{name}"
    (src / "app/_internal").mkdir(parents=True)
    (src / "lib").mkdir()
    (src / "app/bundle-install").write_bytes(body)
    (src / "app/bundle-install").chmod(0o755)
    (src / "app/_internal/data.txt").write_text(name)
    (src / "lib/libc.so.6").write_bytes(b"libc")
    os.symlink("libc.so.6", src / "lib/libc.so")
    launcher = tmp / "launcher"
    launcher.write_bytes(b"\x7fELF launcher")
    out = tmp / name
    freeze_tree.assemble(launcher, src, out)
    return out


def installed(bin_dir: Path, binary: Path) -> Path:
    bin_dir.mkdir(exist_ok=True)
    dest = bin_dir / "bundle-install"
    dest.write_bytes(binary.read_bytes())
    return dest


def test_keep_unpacks_once_and_the_link_names_the_tree(tmp_path: Path) -> None:
    b = installed(tmp_path / "bin", fake_binary(tmp_path, "one", b"ONE"))
    assert not resident.is_kept(b)
    assert resident.keep(b) and resident.is_kept(b)
    p = resident.payload(b)
    assert p is not None
    link = tmp_path / "bin/bundle-install.d"
    assert link.is_symlink() and os.readlink(link) == f".trees/{p.id}"
    assert (link / "app/bundle-install").read_bytes() == b"ONE"
    assert os.stat(link / "app/bundle-install").st_mode & 0o777 == 0o755
    assert os.readlink(link / "lib/libc.so") == "libc.so.6"
    assert (link / ".id").read_text() == p.id
    mtime = (link / ".id").stat().st_mtime_ns
    assert resident.keep(b) and (link / ".id").stat().st_mtime_ns == mtime, "kept twice: unpacked once"


def test_rotation_prev_and_collection_of_unnamed_trees(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    one = installed(bin_dir, fake_binary(tmp_path, "one", b"ONE"))
    resident.keep(one)
    id_one = (bin_dir / "bundle-install.d/.id").read_text()
    prev = bin_dir / "bundle-install.prev"
    prev.write_bytes(one.read_bytes())  # what selfupdate.install does, then the new binary
    resident.move(one, prev)
    one.write_bytes(fake_binary(tmp_path, "two", b"TWO").read_bytes())
    assert not resident.is_kept(one), "a link to another binary's tree is not this binary's"
    assert resident.keep(one) and resident.is_kept(one) and resident.is_kept(prev)
    assert sorted(os.listdir(bin_dir / ".trees")) == sorted([id_one, resident.payload(one).id])  # type: ignore[union-attr]
    # rollback (selfupdate.restore): the previous comes back, the newer tree goes
    one.write_bytes(prev.read_bytes())
    resident.move(prev, one)
    resident.discard(prev)
    assert resident.is_kept(one) and os.listdir(bin_dir / ".trees") == [id_one]
    resident.discard(one)
    assert os.listdir(bin_dir / ".trees") == [] and not (bin_dir / "bundle-install.d").is_symlink()


def test_a_tree_an_installer_runs_from_is_not_removed(tmp_path: Path) -> None:
    """The launcher holds a shared flock on .id while the installer runs."""
    b = installed(tmp_path / "bin", fake_binary(tmp_path, "one", b"ONE"))
    resident.keep(b)
    ident = resident.payload(b).id  # type: ignore[union-attr]
    fd = os.open(tmp_path / f"bin/.trees/{ident}/.id", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        resident.discard(b)
        assert os.listdir(tmp_path / "bin/.trees") == [ident], "removed under a running installer"
    finally:
        os.close(fd)
    assert resident.collect(tmp_path / "bin") == [ident]


def test_damaged_tree_or_binary_never_kept(tmp_path: Path) -> None:
    b = installed(tmp_path / "bin", fake_binary(tmp_path, "one", b"ONE"))
    data = bytearray(b.read_bytes())
    p = resident.payload(b)
    assert p is not None
    # a byte changed: the payload no longer matches its sha256
    i = data.index(b"ONE", p.offset)
    data[i : i + 3] = b"TWO"
    b.write_bytes(bytes(data))
    assert not resident.keep(b) and not resident.is_kept(b) and not any((tmp_path / "bin/.trees").iterdir())
    # a path that climbs out of the tree, same length as a real one, sha256 made to match
    data[i : i + 3] = b"ONE"
    i = data.index(b"app/_internal/data.txt", p.offset)
    data[i : i + 22] = b"../../../../../../evil"
    trailer = struct.pack("<8sQQ32s", b"JKPAYLD2", p.offset, p.size,
                          hashlib.sha256(data[p.offset : p.offset + p.size]).digest())  # fmt: skip
    data[-len(trailer) :] = trailer
    b.write_bytes(bytes(data))
    assert not resident.keep(b) and not resident.is_kept(b)
    assert not (tmp_path / "evil").exists() and not any((tmp_path / "bin/.trees").iterdir())
    # a truncated binary has no payload at all
    b.write_bytes(bytes(data[:-10]))
    assert resident.payload(b) is None and not resident.keep(b)


def test_binary_without_a_tree_drops_the_link(tmp_path: Path) -> None:
    b = installed(tmp_path / "bin", fake_binary(tmp_path, "one", b"ONE"))
    resident.keep(b)
    b.write_bytes(b"#!/bin/sh\necho an older installer\n")
    assert resident.payload(b) is None and not resident.keep(b)
    assert not (tmp_path / "bin/bundle-install.d").exists() and os.listdir(tmp_path / "bin/.trees") == []


@pytest.mark.parametrize("count", [resident.MAX_ENTRIES + 1])
def test_entry_count_is_bounded(tmp_path: Path, count: int) -> None:
    b = installed(tmp_path / "bin", fake_binary(tmp_path, "one", b"ONE"))
    p = resident.payload(b)
    assert p is not None
    data = bytearray(b.read_bytes())
    data[p.offset + 8 : p.offset + 12] = struct.pack("<I", count)
    b.write_bytes(bytes(data))
    assert not resident.keep(b)


def test_links_out_of_the_tree_and_entries_beneath_links_are_refused(tmp_path: Path) -> None:
    """A tree (from a signed bundle's installer: trusted for its origin, not its
    correctness) never writes outside its directory, not through a link either."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for i, (link, target, beneath) in enumerate(
        [
            ("app/escape", str(outside), "app/escape/planted"),  # absolute
            ("app/escape", "../../../outside", "app/escape/planted"),  # climbs
            ("app/inside", "_internal", "app/inside/planted"),  # inside, but written through
        ]
    ):
        src = tmp_path / f"src{i}"
        (src / "app/_internal").mkdir(parents=True)
        os.symlink(target, src / link)
        launcher = tmp_path / "launcher"
        launcher.write_bytes(b"\x7fELF")
        payload = tmp_path / f"payload{i}"
        with payload.open("wb") as out:  # the link, then a file beneath it
            freeze_tree.write_payload(src, out)
        data = bytearray(payload.read_bytes())
        name = beneath.encode()
        entry = freeze_tree.ENTRY.pack(b"f", 0o644, len(name), 3) + name + b"bad"
        count = struct.unpack("<I", data[8:12])[0]
        data[8:12] = struct.pack("<I", count + 1)
        data += entry
        b = tmp_path / f"bin{i}" / "bundle-install"
        b.parent.mkdir()
        trailer = struct.pack("<8sQQ32s", b"JKPAYLD2", len(launcher.read_bytes()), len(data),
                              hashlib.sha256(bytes(data)).digest())  # fmt: skip
        b.write_bytes(launcher.read_bytes() + bytes(data) + trailer)
        assert resident.payload(b) is not None
        assert not resident.keep(b), link
        assert list(outside.iterdir()) == [] and not any((b.parent / ".trees").iterdir())
