"""Commands a bundle or spec names (installer/child.py): a child left running does not
hold the run, and a timeout ends everything the command started."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from installer import child
from tests.helpers import alive


def test_a_child_left_running_with_the_output_open_does_not_hold_the_run(tmp_path: Path) -> None:
    """``sleep 30 &`` keeps stdout open: with pipes this ran into the timeout (a hook that
    exited 0 at once, reported timed out); the background child is left alone."""
    t = time.monotonic()
    p = child.run(
        ["sh", "-c", f"sleep 30 & echo $! > {tmp_path}/pid; echo started; exit 3"], cwd=tmp_path, timeout=20
    )
    took = time.monotonic() - t
    assert (p.returncode, p.output) == (3, "started\n")
    assert took < 2, took
    pid = int((tmp_path / "pid").read_text())
    try:
        assert alive(pid)  # a start command's daemon must live on
    finally:
        os.kill(pid, 9)


def test_a_timeout_kills_the_command_and_everything_it_started(tmp_path: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired) as e:
        child.run(
            ["sh", "-c", f"sleep 60 & echo $! > {tmp_path}/pid; echo waiting; sleep 60"],
            cwd=tmp_path,
            timeout=1,
        )
    assert e.value.output == "waiting\n"
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid), "the command's child outlived its timeout"


def test_output_interleaved_and_its_end_kept(tmp_path: Path) -> None:
    p = child.run(["sh", "-c", "echo out; echo err >&2; echo out2"], cwd=tmp_path, timeout=10)
    assert p.output == "out\nerr\nout2\n"
    p = child.run(
        ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' a; echo; echo last"], cwd=tmp_path, timeout=10
    )
    assert len(p.output) == child.OUTPUT_LIMIT and p.output.endswith("a\nlast\n")


def test_the_exit_is_seen_at_once(tmp_path: Path) -> None:
    """A hook runs inside the outage window: Popen.wait(timeout) polls (up to 50 ms late);
    the pidfd wakes at the exit."""
    took = []
    for _ in range(5):
        t = time.monotonic()
        child.run(["sh", "-c", "sleep 0.2"], cwd=tmp_path, timeout=10)
        took.append(time.monotonic() - t)
    assert min(took) < 0.21, took  # polling: 0.2135 at the soonest


def test_a_command_that_cannot_start_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        child.run([str(tmp_path / "missing")], cwd=tmp_path, timeout=5)
