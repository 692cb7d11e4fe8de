"""The unpacking machinery: ``run_each`` (threads over a shared iterator) and reading ZIP
members with one ``pread`` for header, name and first chunk."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import pytest

from installer.archive import ZipBundle
from installer.errors import BundleRejectedError
from installer.format import CHUNK
from installer.parallel import run_each


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_item_once(threads: int) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def take(i: int) -> None:
        with lock:
            seen.append(i)

    run_each(take, range(5000), threads=threads)
    assert sorted(seen) == list(range(5000))


def test_first_error_stops_the_others_and_nothing_runs_after() -> None:
    ran: list[int] = []
    running = 0
    lock = threading.Lock()

    def work(i: int) -> None:
        nonlocal running
        with lock:
            running += 1
            ran.append(i)
        try:
            if i == 10:
                raise OSError(28, "No space left on device")
            time.sleep(0.001)
        finally:
            with lock:
                running -= 1

    with pytest.raises(OSError, match="No space"):
        run_each(work, range(10_000), threads=2)
    assert running == 0, "a thread was still working when run_each raised"
    assert len(ran) < 20, "the other thread went on after the error"


def _zip_with_extras(path: Path, members: dict[str, bytes]) -> None:
    """A ZIP whose local headers carry extra fields (as Info-ZIP's do; ours carry none),
    so the data does not start where a header-plus-name read would guess."""
    with zipfile.ZipFile(path, "w") as z:
        for i, (name, data) in enumerate(members.items()):
            info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if i % 2 else zipfile.ZIP_STORED
            info.extra = b"\x75\x78\x0b\x00\x01\x04\xe8\x03\x00\x00\x04\xe8\x03\x00\x00" * (i + 1)
            z.writestr(info, data)


def test_members_read_whole_whatever_the_extra_fields(tmp_path: Path) -> None:
    big = bytes(range(256)) * (CHUNK // 256) * 3 + b"tail"  # three chunks and a bit
    members = {
        "empty": b"",
        "small.txt": b"hello\n" * 100,
        "big-deflated": big,
        "big-stored": big[::-1],
        "one-chunk": b"x" * CHUNK,
        "one-byte-over": b"y" * (CHUNK + 1),
    }
    path = tmp_path / "b.zip"
    _zip_with_extras(path, members)
    bundle = ZipBundle(path)
    try:
        for name, data in members.items():
            assert b"".join(bundle.iter_member(name, len(data))) == data, name
    finally:
        bundle.close()


def test_a_local_header_naming_another_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    _zip_with_extras(path, {"aaaa": b"1" * 100, "bbbb": b"2" * 100})
    raw = bytearray(path.read_bytes())
    first = raw.index(b"PK\x03\x04")
    raw[first + 30 : first + 34] = b"zzzz"  # the local name only; the central one stays
    path.write_bytes(raw)
    bundle = ZipBundle(path)
    try:
        with pytest.raises(BundleRejectedError, match="names another member"):
            b"".join(bundle.iter_member("aaaa", 100))
    finally:
        bundle.close()


def test_a_budget_never_holds_more_than_its_largest_claim_at_once() -> None:
    """Patches built on two threads: the claims in flight never exceed the limit (the
    largest one), a claim over the limit runs alone, and small ones overlap."""
    import threading
    import time

    from installer.parallel import Budget, run_each

    budget = Budget(100)
    held, peak, overlapped = [0], [0], [False]
    lock = threading.Lock()

    def work(size: int) -> None:
        with budget.claim(size):
            size = min(size, 100)  # one over the limit holds all of it
            with lock:
                held[0] += size
                peak[0] = max(peak[0], held[0])
                overlapped[0] |= held[0] > size
            time.sleep(0.002)
            with lock:
                held[0] -= size

    run_each(work, [100, 70, 60, 500, *([10] * 40)], threads=3)
    assert held[0] == 0 and peak[0] <= 100 and overlapped[0]
