"""The unpacking machinery: ``run_each`` (threads over a shared iterator)."""

from __future__ import annotations

import threading
import time

import pytest

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
