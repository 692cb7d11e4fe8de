"""Commands a bundle or spec names (installer/commands.py): a child left running does not
hold the run, and a timeout ends everything the command started."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from installer import commands
from tests.helpers import alive


def test_a_child_left_running_with_the_output_open_does_not_hold_the_run(tmp_path: Path) -> None:
    """``sleep 30 &`` keeps stdout open: with pipes this ran into the timeout (a hook that
    exited 0 at once, reported timed out); the background child is left alone."""
    t = time.monotonic()
    p = commands.run(
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
        commands.run(
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
    p = commands.run(["sh", "-c", "echo out; echo err >&2; echo out2"], cwd=tmp_path, timeout=10)
    assert p.output == "out\nerr\nout2\n"
    p = commands.run(
        ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' a; echo; echo last"], cwd=tmp_path, timeout=10
    )
    assert len(p.output) == commands.OUTPUT_LIMIT and p.output.endswith("a\nlast\n")


def test_the_exit_is_seen_at_once(tmp_path: Path) -> None:
    """A hook runs inside the outage window: Popen.wait(timeout) polls (up to 50 ms late);
    the pidfd wakes at the exit."""
    took = []
    for _ in range(5):
        t = time.monotonic()
        commands.run(["sh", "-c", "sleep 0.2"], cwd=tmp_path, timeout=10)
        took.append(time.monotonic() - t)
    assert min(took) < 0.21, took  # polling: 0.2135 at the soonest


def test_a_command_that_cannot_start_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        commands.run([str(tmp_path / "missing")], cwd=tmp_path, timeout=5)


@pytest.mark.parametrize(
    ("first", "mode", "argv0", "why"),
    [
        (
            "#!/nonexistent/sh\n",
            0o755,
            "./hook",
            "its interpreter /nonexistent/sh does not exist on this manager",
        ),
        (
            "#! /nonexistent/env python3\n",
            0o755,
            "hook",
            "its interpreter /nonexistent/env does not exist on this manager",
        ),
        ("#!/bin/sh\n", 0o644, "./hook", "./hook is not executable"),
        ("echo no shebang\n", 0o755, "./hook", "./hook is not a program this manager can run"),
        (None, 0, "./missing", "./missing does not exist"),
        (None, 0, "no-such-tool-here", "no-such-tool-here is not on this manager (not found on PATH)"),
    ],
    ids=["interpreter", "interpreter-env", "not-executable", "no-shebang", "missing", "not-on-path"],
)
def test_why_a_command_could_not_start_is_said_in_the_managers_terms(
    tmp_path: Path, first: str | None, mode: int, argv0: str, why: str
) -> None:
    """Every command a bundle names (hooks, jobs, checks, cluster hooks, service commands)
    starts through commands.run: exec's bare ENOENT for a missing ``#!`` interpreter named the
    script itself, which exists."""
    if first is not None:
        (tmp_path / "hook").write_text(first + "echo hi\n")
        (tmp_path / "hook").chmod(mode)
    argv = [str(tmp_path / "hook")] if argv0 == "hook" else [argv0]
    with pytest.raises(commands.NotRun) as e:
        commands.run(argv, cwd=tmp_path, timeout=5)
    assert str(e.value).startswith(why), str(e.value)
