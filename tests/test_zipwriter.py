"""The ZIP writer's worker processes: errors, dead workers, fallbacks, changing files."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest

from builder import zipwriter
from builder.zipwriter import BATCH_BYTES, Source, WorkerError, ZipWriter
from tests.helpers import SPECS

SPECS_MIGRATION = SPECS / "demo-manager/releases/4.1.1/migrations/main/versions/0002_settings.py"


def children() -> list[int]:
    """This process's live child processes."""
    out: list[int] = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def write(dest: Path, sources: list[Source], **kw: object) -> dict[str, tuple[str, int]]:
    with open(dest, "wb") as f, ZipWriter(f, epoch=1_700_000_000, **kw) as w:  # type: ignore[arg-type]
        digests = w.write_all(sources)
        w.close()
    return digests


def check(dest: Path, digests: dict[str, tuple[str, int]]) -> None:
    with zipfile.ZipFile(dest) as z:
        assert z.testzip() is None
        for name, (sha, size) in digests.items():
            data = z.read(name)
            assert (hashlib.sha256(data).hexdigest(), len(data)) == (sha, size), name
    p = subprocess.run(["unzip", "-tq", str(dest)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def tree(tmp_path: Path, n: int = 400) -> list[Source]:
    """Enough files for many batches on both workers (text, random, empty)."""
    rng = random.Random(7)
    d = tmp_path / "tree"
    d.mkdir()
    out = []
    for i in range(n):
        p = d / f"f{i:04d}"
        if i % 3 == 0:
            p.write_bytes(rng.randbytes(rng.randrange(0, 60_000)))
        else:
            p.write_text(f"line {i}\n" * rng.randrange(0, 20_000))
        out.append(Source(f"payload/{p.name}", 0o644, path=p, size=p.stat().st_size))
    return out


def test_many_batches_on_two_workers_come_out_in_order(tmp_path: Path) -> None:
    sources = tree(tmp_path)
    assert sum(s.size or 0 for s in sources) > 4 * BATCH_BYTES
    digests = write(tmp_path / "a.zip", sources)
    check(tmp_path / "a.zip", digests)
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        assert z.namelist() == [s.name for s in sources]
    # the same bytes with one worker: the order of completion does not leak into the file
    write(tmp_path / "b.zip", sources, workers=1)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert children() == []


def test_small_entries_are_deflated_by_zlib_whose_output_is_fixed(tmp_path: Path) -> None:
    """Entries up to SMALL are the standard library's zlib stream, byte for byte (one ISA-L
    stream of a 396-byte file differed between two CI builds of the same inputs); larger
    ones still go through ISA-L."""
    text = (SPECS_MIGRATION.read_bytes() * 3)[: zipwriter.SMALL]
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(text[:396])
    big.write_bytes(b"".join(f"row {i} {i * i}\n".encode() for i in range(60_000)))
    dest = tmp_path / "o.zip"
    write(dest, [Source("s", 0o644, path=small), Source("b", 0o644, path=big)], workers=1)
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    expect = comp.compress(text[:396]) + comp.flush()
    with zipfile.ZipFile(dest) as z, open(dest, "rb") as f:
        info = z.getinfo("s")
        f.seek(info.header_offset + 30 + len("s"))
        assert f.read(info.compress_size) == expect
        assert z.read("b") == big.read_bytes() and z.getinfo("b").compress_type == zipfile.ZIP_DEFLATED


def test_a_killed_worker_fails_the_write_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies without a word (OOM killer, SIGKILL) is an error naming the
    signal, not a hang; the other worker is reaped and no segment is left behind."""
    sources = tree(tmp_path)
    victim = sources[len(sources) // 2].name
    real_add = zipwriter._Segment.add

    def add(self: zipwriter._Segment, src: Source) -> zipwriter.Written:
        if src.name == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_add(self, src)

    monkeypatch.setattr(zipwriter._Segment, "add", add)  # inherited by the forked workers
    (tmp_path / "out").mkdir()
    with pytest.raises(WorkerError, match="killed by SIGKILL"):
        write(tmp_path / "out/a.zip", sources)
    assert children() == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.zip"]


def test_an_unreadable_file_raises_its_own_error_in_the_parent(tmp_path: Path) -> None:
    sources = tree(tmp_path, 50)
    os.chmod(sources[30].path or "", 0)
    if os.access(sources[30].path or "", os.R_OK):  # root reads anything: use a vanished file
        Path(sources[30].path or "").unlink()
        with pytest.raises(FileNotFoundError, match="f0030"):
            write(tmp_path / "a.zip", sources)
    else:
        with pytest.raises(PermissionError, match="f0030"):
            write(tmp_path / "a.zip", sources)
    assert children() == []


def test_segments_are_copied_through_a_buffer_across_filesystems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy_file_range refuses some pairs of filesystems (EXDEV) and some kernels lack it."""
    calls = []

    def refuse(*args: object) -> int:
        calls.append(args)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(zipwriter.os, "copy_file_range", refuse)
    sources = tree(tmp_path, 100)
    digests = write(tmp_path / "a.zip", sources)
    check(tmp_path / "a.zip", digests)
    assert calls


def test_a_file_that_grew_since_the_walk_is_written_whole(tmp_path: Path) -> None:
    """The walk's size is a hint: a file longer than it (here 5 MB against 10 bytes, so
    streamed) is written with every byte it has when read."""
    (tmp_path / "grew").write_text("more lines\n" * 500_000)
    (tmp_path / "shrank").write_text("short\n")
    sources = [
        Source("grew", 0o644, path=tmp_path / "grew", size=10),
        Source("shrank", 0o644, path=tmp_path / "shrank", size=1000),
    ]
    digests = write(tmp_path / "a.zip", sources)
    check(tmp_path / "a.zip", digests)
    assert digests["grew"][1] == 5_500_000 and digests["shrank"][1] == 6


def test_a_large_entry_that_deflate_does_not_shrink_is_stored(tmp_path: Path) -> None:
    """A sample (its first 64 KiB) says compressible, the whole file is not: the deflated
    attempt is discarded and the entry written again, stored."""
    rng = random.Random(3)
    head = bytes(rng.randrange(180) for _ in range(64 * 1024))  # ~0.94 of its size deflated
    data = head + rng.randbytes(30 * 1024 * 1024)
    from isal import isal_zlib

    assert len(isal_zlib.compress(data, 2, -15)) >= len(data)  # the case this test is about
    (tmp_path / "blob").write_bytes(data)
    digests = write(tmp_path / "a.zip", [Source("blob", 0o644, path=tmp_path / "blob")])
    check(tmp_path / "a.zip", digests)
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        info = z.getinfo("blob")
        assert info.compress_type == zipfile.ZIP_STORED and info.file_size == len(data)


@pytest.mark.parametrize("size", [2 * 1024 * 1024, 12 * 1024 * 1024])  # one-shot and streamed
def test_an_entry_whose_head_does_not_shrink_but_the_rest_does_is_deflated(tmp_path: Path, size: int) -> None:
    """A shared library whose first 64 KiB did not shrink was stored whole (issue 21:
    62 MB that zip -6 halves): samples spread over the entry decide, not the head alone."""
    rng = random.Random(5)
    text = b"".join(f"symbol_{rng.randrange(5000)} = {i}\n".encode() for i in range(size // 16))
    data = rng.randbytes(64 * 1024) + text[: size - 64 * 1024]
    (tmp_path / "lib.so").write_bytes(data)
    digests = write(tmp_path / "a.zip", [Source("lib.so", 0o755, path=tmp_path / "lib.so")])
    check(tmp_path / "a.zip", digests)
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        info = z.getinfo("lib.so")
        assert info.compress_type == zipfile.ZIP_DEFLATED and info.compress_size < len(data) // 2


def _real_elf_files(n: int = 6) -> list[Path]:
    """Shared libraries over 1 MiB of this machine's Python and the project's venv."""
    import sys
    import sysconfig

    out: list[Path] = []
    roots = {Path(sysconfig.get_config_var("LIBDIR") or "/usr/lib"), Path(sys.prefix) / "lib"}
    for root in sorted(roots):
        for p in sorted(root.rglob("*.so*")):
            if p.is_file() and not p.is_symlink() and p.stat().st_size > 1024 * 1024:
                with open(p, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        out.append(p)
            if len(out) >= n:
                return out
    return out


def test_real_elf_files_that_deflate_shrinks_are_never_stored(tmp_path: Path) -> None:
    """Every ELF shared library over 1 MiB found (up to six) that zlib -6 shrinks by more
    than 5% is deflated in the bundle. (ISA-L level 2, zlib -6's stand-in at about seven
    times its speed, ran up to 26% larger than zlib -6 on one of them: unicodedata's .so.)"""
    import zlib

    libs = _real_elf_files()
    assert libs, "no ELF shared library over 1 MiB on this machine"
    sources = [Source(f"lib{i}/{p.name}", 0o755, path=p, size=p.stat().st_size) for i, p in enumerate(libs)]
    digests = write(tmp_path / "a.zip", sources)
    check(tmp_path / "a.zip", digests)
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        for src, p in zip(sources, libs, strict=True):
            data = p.read_bytes()
            z6 = len(zlib.compress(data, 6))
            info = z.getinfo(src.name)
            if z6 < 0.95 * len(data):
                assert info.compress_type == zipfile.ZIP_DEFLATED, (
                    f"{p} was stored; zlib -6: {z6 / len(data):.2f}"
                )
                assert info.compress_size <= 1.35 * z6, f"{p}: {info.compress_size} vs zlib -6 {z6}"


def test_duplicates_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with open(tmp_path / "a.zip", "wb") as f, ZipWriter(f, epoch=1_700_000_000) as w:
        with pytest.raises(ValueError, match="duplicate entry x"):
            w.write_all([Source("x", 0o644, data=b"1"), Source("y", 0o644, data=b"2"), Source("x", 0o644)])
        assert f.tell() == 0 and os.path.getsize(tmp_path / "a.zip") == 0


def test_a_write_error_is_a_build_error_and_leaves_nothing_in_the_output(
    tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source unreadable at write time (raised in a worker) ends the build as a
    BuildError (exit 1, one line), with no partial bundle or segment left in --out."""
    from builder.build import build_bundle
    from builder.errors import BuildError
    from tests.helpers import SPECS

    real_add = zipwriter._Segment.add

    def add(self: zipwriter._Segment, src: Source) -> zipwriter.Written:
        if src.name.endswith("/VERSION"):
            raise PermissionError(errno.EACCES, "Permission denied", "opt/demo-manager/VERSION")
        return real_add(self, src)

    monkeypatch.setattr(zipwriter._Segment, "add", add)
    out = tmp_path / "dist"
    with pytest.raises(
        BuildError, match=r"cannot write demo-manager-4\.0\.1-to-4\.1\.1\.zip: .*Permission denied"
    ) as e:
        build_bundle(SPECS, None, "4.0.1", "4.1.1", out, key=keys["key"])
    assert e.value.exit_code == 1
    assert list(out.iterdir()) == []
    assert children() == []
