"""The manager's installer kept unpacked: ``installer/resident.py`` on synthetic
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


def crafted(
    tmp: Path, stream: bytes, count: int, *, stored: bool = False, frame: bytes | None = None
) -> Path:
    """A binary whose tree is ``stream`` (raw entries), as JKTREE01 (stored) or as one
    zstd frame (``frame`` replaces the compressed bytes), with a matching sha256."""
    import zstandard

    if stored:
        payload = b"JKTREE01" + struct.pack("<I", count) + stream
    else:
        data = zstandard.ZstdCompressor().compress(stream) if frame is None else frame
        payload = (
            b"JKTREE02" + struct.pack("<II", count, 1) + struct.pack("<QQ", len(data), len(stream)) + data
        )
    launcher = b"\x7fELF launcher"
    trailer = struct.pack(
        "<8sQQ32s", b"JKPAYLD2", len(launcher), len(payload), hashlib.sha256(payload).digest()
    )
    return installed(tmp / "bin", _write(tmp / "crafted", launcher + payload + trailer))


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def entry(kind: bytes, name: str, data: bytes = b"", mode: int = 0o644) -> bytes:
    return struct.pack("<cIHQ", kind, mode, len(name.encode()), len(data)) + name.encode() + data


def test_damaged_tree_or_binary_never_kept(tmp_path: Path) -> None:
    b = installed(tmp_path / "bin", fake_binary(tmp_path, "one", b"ONE"))
    data = bytearray(b.read_bytes())
    p = resident.payload(b)
    assert p is not None
    # a byte changed: the payload no longer matches its sha256
    data[p.offset + p.size // 2] ^= 0xFF
    b.write_bytes(bytes(data))
    assert not resident.keep(b) and not resident.is_kept(b) and not any((tmp_path / "bin/.trees").iterdir())
    # a truncated binary has no payload at all
    b.write_bytes(bytes(data[:-10]))
    assert resident.payload(b) is None and not resident.keep(b)


@pytest.mark.parametrize("stored", [False, True], ids=["zstd", "stored"])
def test_a_path_that_climbs_is_refused_with_a_matching_sha256(tmp_path: Path, stored: bool) -> None:
    stream = entry(b"d", "app", mode=0o755) + entry(b"f", "../../../../../../evil", b"x")
    b = crafted(tmp_path, stream, 2, stored=stored)
    assert not resident.keep(b) and not resident.is_kept(b)
    assert not (tmp_path / "evil").exists() and not any((tmp_path / "bin/.trees").iterdir())


def test_an_older_stored_tree_is_still_kept(tmp_path: Path) -> None:
    """Installers frozen before the tree was compressed (JKTREE01) still keep."""
    stream = entry(b"d", "app", mode=0o755) + entry(b"f", "app/bundle-install", b"OLD", 0o755)
    b = crafted(tmp_path, stream, 2, stored=True)
    assert resident.keep(b) and (tmp_path / "bin/bundle-install.d/app/bundle-install").read_bytes() == b"OLD"


def test_a_frame_that_does_not_decompress_or_fill_the_payload_is_refused(tmp_path: Path) -> None:
    import zstandard

    stream = entry(b"d", "app", mode=0o755) + entry(b"f", "app/bundle-install", b"NEW" * 1000, 0o755)
    good = zstandard.ZstdCompressor().compress(stream)
    # no zstd frame at all, its sha256 made to match (a flipped byte inside a frame is the
    # payload sha256's to catch: the frames carry no checksum of their own)
    b = crafted(tmp_path / "a", stream, 2, frame=b"not a zstd frame" * 4)
    assert not resident.keep(b) and not any((tmp_path / "a/bin/.trees").iterdir())
    b = crafted(tmp_path / "b", stream, 2, frame=good[:-5])  # a truncated frame
    assert not resident.keep(b)
    b = crafted(tmp_path / "c", stream, 3)  # one entry more than the stream holds
    assert not resident.keep(b)


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


def test_the_same_tree_gives_the_same_payload_bytes(tmp_path: Path) -> None:
    """Fixed order and zstd parameters: a rebuilt release carries the same installer."""
    src = tmp_path / "src"
    (src / "app").mkdir(parents=True)
    (src / "app/bundle-install").write_bytes(os.urandom(1 << 20) + b"x" * (5 << 20))
    (src / "app/b.txt").write_text("b")
    launcher = tmp_path / "launcher"
    launcher.write_bytes(b"\x7fELF launcher")
    one, two = tmp_path / "one", tmp_path / "two"
    freeze_tree.assemble(launcher, src, one)
    os.utime(src / "app/b.txt", (0, 0))  # mtimes are not part of the tree
    freeze_tree.assemble(launcher, src, two)
    assert one.read_bytes() == two.read_bytes()
    p = resident.payload(one)
    assert p is not None and p.size < (5 << 20)  # the 5 MiB of x went into a zstd frame


def _frames(binary: Path) -> list[bytes]:
    """The compressed frames of ``binary``'s tree, in order."""
    p = resident.payload(binary)
    assert p is not None
    data = binary.read_bytes()[p.offset : p.offset + p.size]
    (n,) = struct.unpack_from("<I", data, 12)
    sizes = [struct.unpack_from("<QQ", data, 16 + 16 * i)[0] for i in range(n)]
    at, out = 16 + 16 * n, []
    for size in sizes:
        out.append(data[at : at + size])
        at += size
    return out


def test_a_small_change_in_a_large_file_changes_few_frames(tmp_path: Path) -> None:
    """Frames are cut where the content says, inside entries too: a few bytes inserted in
    the middle of a 24 MiB file (a module edited inside PyInstaller's archive) change the
    frames around them and no other, which is what keeps an installer patch small; and
    the reader still keeps the tree (entries span frames)."""
    body = bytearray(os.urandom(24 << 20))
    one = fake_binary(tmp_path / "a", "one", bytes(body))
    body[12 << 20 : 12 << 20] = b"an edited module"
    two = fake_binary(tmp_path / "b", "two", bytes(body))
    a, b = _frames(one), _frames(two)
    assert len(a) >= 6 and len(b) >= 6  # several frames, hence cuts inside the 24 MiB entry
    # the frame of the entry's header (its length grew) and one or two around the edit
    assert len(set(b) - set(a)) <= 3 < len(b) // 2
    kept = installed(tmp_path / "m", two)
    assert resident.keep(kept)
    assert (kept.parent / "bundle-install.d/app/bundle-install").read_bytes() == bytes(body)
