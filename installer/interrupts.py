"""SIGINT, SIGTERM and SIGHUP are requests to stop, never a crash: before the commit record
the run rolls back to exactly the old version and exits 5 naming the signal; after it the
run finishes the commit. Only SIGKILL and power loss leave work for resume or rollback.

A handler that raised wherever the main thread happened to be (Python's own
``KeyboardInterrupt``) escaped between two steps: after a step's run but before its
``done`` record, in the middle of a status write, while a rollback was undoing. Measured
on ten Ctrl-C's: four runs exited 130 with the uncommitted new version serving. So the
handler records the signal and raises only where raising is safe:

- **raise** (the default: verify, pre-flight, staging, every command that changes nothing
  on the manager): the first signal raises :class:`Interrupted` at once; the code it
  unwinds through removes what it made (a half staging) and the run exits 5 with the
  manager untouched. Later signals only add to the record, so the clean-up is not cut.
- **transaction**: a signal raises :class:`Interrupted` only inside :func:`interruptible`
  (a step's ``run``, where the step is begun and ``undo`` covers any instant); elsewhere
  (journal and status writes between steps) it is recorded and the transaction asks
  :func:`pending` at the next boundary, then rolls back.
- **deferred** (a rollback, the commit record and everything after it): recorded only.
  A rollback is never cut short by a second signal; after the commit record the run
  finishes the commit. From the commit record on this holds for the rest of the process
  (:func:`hold`): a signal in the CLI's last moments once the transaction has returned
  made a committed apply exit 5, "interrupted; nothing was changed", with the new version
  serving (caught by a CI run of the random-signal test, then pinned by the ``finished``
  failpoint).

SIGHUP (a closed SSH session or terminal) also points stdin, stdout and stderr at
``/dev/null``: the rollback that follows must not fail on a write to a terminal that is
gone (the status file keeps the log).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A stop signal arrived where the run could stop at once (exit 5: nothing is left
    changed; an apply under way is rolled back first). A ``BaseException``, as
    ``KeyboardInterrupt`` is: no ``except JumpkitError`` or ``except Exception`` on the
    way (a pre-flight check, alembic, a library) may take it for a failure of its own."""

    exit_code = 5

    def __init__(self, signame: str, message: str | None = None) -> None:
        self.message = message or f"interrupted by {signame}; nothing was changed"
        super().__init__(self.message)
        self.signame = signame


class _Guard:
    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.raising = True
        self.held = False  # the commit is recorded: never raise again in this process


_G = _Guard()


def _detach_terminal() -> None:
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)


def _handler(signum: int, frame: FrameType | None) -> None:
    sig = signal.Signals(signum)
    if sig == signal.SIGHUP:
        _detach_terminal()
    if _G.received is None:
        _G.received = sig
    if _G.raising and not _G.held:
        _G.raising = False  # once: the code it unwinds through must be able to clean up
        raise Interrupted(sig.name)


def install() -> None:
    """Take over SIGINT, SIGTERM and SIGHUP for this process (the CLIs call it first)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)


def ignore() -> None:
    """Ignore stop signals from now on: the run is over and its exit code decided (a signal
    during the interpreter's shutdown would otherwise end it with the default action)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def hold() -> None:
    """The commit is recorded: from now on, for the rest of the process, stop signals are
    recorded and never raised (the run finishes what it committed and exits 0)."""
    _G.held = True


def pending() -> str | None:
    """The name of the first stop signal received and not yet taken, or None."""
    return _G.received.name if _G.received is not None else None


def take() -> str | None:
    """:func:`pending`, and forget it (the caller reports it)."""
    name = pending()
    _G.received = None
    return name


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within: signals are recorded, never raised (rollback, commit, after commit)."""
    prev, _G.raising = _G.raising, False
    try:
        yield
    finally:
        _G.raising = prev


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within (a step's ``run``): a stop signal raises :class:`Interrupted` where the code
    is; one that came just before entering raises at once. A ``KeyboardInterrupt`` (the
    guard not installed: a library caller) counts as SIGINT.

    Raises:
        Interrupted: a stop signal arrived.
    """
    prev = _G.raising
    if _G.received is not None and not _G.held:
        raise Interrupted(_G.received.name)
    _G.raising = True
    try:
        yield
    except KeyboardInterrupt as e:
        if _G.received is None:
            _G.received = signal.SIGINT
        raise Interrupted("SIGINT") from e
    finally:
        _G.raising = prev
