"""Running a command a bundle or spec names (hooks, jobs, pre-flight and health commands,
a ``commands`` service backend, cluster hooks): bounded in time, with everything it
started ended when that time is up, and its output read from a file.

Why not ``subprocess.run(capture_output=True, timeout=...)``: it reads the output from
pipes until end of file, and a command that leaves a child running with its output open
(a start command whose daemon keeps stdout, ``tool &`` in a hook) never gives one: a
hook that exited 0 at once was reported "timed out" after its whole timeout (measured:
``sh -c 'sleep 5 & echo started'`` with a 3 s timeout). And on a timeout it kills the
command alone: its children went on writing to the manager while the run rolled back.
Here the command is a session of its own; on a timeout, or when the run is interrupted
while it waits, the whole process group is killed. A child it leaves behind after it exits
is not touched (a start command's daemon must live).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

OUTPUT_LIMIT = 64 * 1024
"""Bytes of output kept (the end of it): callers show its last lines."""


class NotRun(OSError):
    """A command that could not be started; ``str()`` says why in the manager's terms:
    the interpreter its ``#!`` line names is missing, it is not executable, it is not a
    program, it does not exist."""

    def __str__(self) -> str:
        return str(self.strerror)


def why_not_run(program: str, e: OSError, cwd: Path) -> str:
    """What kept ``program`` (``argv[0]``, relative to ``cwd`` when not absolute) from
    starting, given the error ``exec`` gave."""
    import errno
    import shutil

    path = Path(program) if "/" in program else None
    if path is None:
        found = shutil.which(program)
        if found is None:
            return f"{program} is not on this manager (not found on PATH)"
        path = Path(found)
    elif not path.is_absolute():
        path = cwd / path
    if e.errno == errno.ENOENT and path.exists():
        try:
            with open(path, "rb") as f:
                first = f.readline(256)
        except OSError:
            first = b""
        if first.startswith(b"#!"):
            words = first[2:].decode(errors="replace").split()
            interpreter = words[0] if words else "(none)"
            return f"its interpreter {interpreter} does not exist on this manager"
    if e.errno == errno.ENOENT:
        return f"{program} does not exist"
    if e.errno == errno.EACCES:
        return f"{program} is not executable"
    if e.errno == errno.ENOEXEC:
        return f"{program} is not a program this manager can run (no #! line, not a binary it knows)"
    return f"{program}: {e.strerror or e}"


@dataclass(frozen=True)
class Finished:
    """A command that exited: its exit code (negative: the signal that ended it) and the
    end of its output, stdout and stderr interleaved as written."""

    returncode: int
    output: str


class ExitWatch:
    """A pidfd of a process (Linux 5.3+): readable once the process has exited, whoever
    its parent is. A pid that is gone already, a pid of no process, a system without
    pidfds: no watch (the caller polls)."""

    SLICE = 0.02
    """The longest wait before a caller watching a pid it did not start (supervisord's
    child) looks at its manager's view again: a pid from another pid namespace may name a
    process that never exits."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._exited = False

    @classmethod
    def of(cls, pid: object) -> ExitWatch | None:
        """A watch of ``pid``, or None where none can be had."""
        if not isinstance(pid, int) or pid <= 0 or not hasattr(os, "pidfd_open"):
            return None
        try:
            return cls(os.pidfd_open(pid))
        except OSError:  # ESRCH: exited already; ENOSYS, EPERM: no pidfds here
            return None

    def wait(self, timeout: float) -> bool:
        """Whether the process has exited, waiting up to ``timeout`` seconds for it."""
        if not self._exited:
            readable, _, _ = select.select([self.fd], [], [], max(timeout, 0))
            self._exited = bool(readable)
        return self._exited

    def close(self) -> None:
        """Release the descriptor."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _tail(f: BinaryIO) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - OUTPUT_LIMIT))
    return f.read(OUTPUT_LIMIT).decode(errors="replace")


def _output_file() -> BinaryIO:
    """An anonymous file in memory (memfd: no /tmp needed on a bare manager), else a
    temporary file."""
    try:
        return open(os.memfd_create("jumpkit-child"), "w+b")
    except (AttributeError, OSError):
        return tempfile.TemporaryFile()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's process group (its session: it is the leader), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()  # the group is gone; the leader may still need reaping
    proc.wait()


def run(argv: Sequence[str], *, cwd: Path, timeout: float, env: Mapping[str, str] | None = None) -> Finished:
    """Run ``argv`` in ``cwd`` until it exits, at most ``timeout`` seconds.

    Raises:
        NotRun: it could not be started (missing, its interpreter missing, not executable).
        subprocess.TimeoutExpired: it ran longer; it and every process of its group were
            killed (``output`` holds what it wrote, as text).
    """
    with _output_file() as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=None if env is None else dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            raise NotRun(e.errno, why_not_run(str(argv[0]), e, cwd)) from e
        watch = ExitWatch.of(proc.pid)  # wakes at the exit: Popen.wait(timeout) polls, up to 50 ms late
        try:
            if watch is not None and not watch.wait(timeout):
                raise subprocess.TimeoutExpired(list(argv), timeout)
            code = proc.wait(None if watch is not None else timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise subprocess.TimeoutExpired(list(argv), timeout, output=_tail(out)) from None
        except BaseException:  # interrupted while waiting: nothing of it outlives the run
            _kill_group(proc)
            raise
        finally:
            if watch is not None:
                watch.close()
        return Finished(code, _tail(out))
