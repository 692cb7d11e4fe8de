"""Named failpoints: ``JUMPKIT_FAILPOINT=NAME[@N][=ACTION][,...]`` acts the N-th time (default:
first) the installer passes NAME. ACTION is ``kill`` (default: SIGKILL, a crash at that
instant), ``stop`` (SIGSTOP: the run freezes there until ``kill -CONT``, so an operator or
a test can do something at that exact moment, e.g. fill the disk), ``fail`` (the step
fails there with an error: the apply rolls back as after any failure), or ``int``,
``term``, ``hup`` (SIGINT, SIGTERM, SIGHUP to this process: an operator's Ctrl-C, systemd's
stop, a closed SSH session, at that exact instant). Used by the crash tests;
operators rehearse failures the same way. When the variable is unset a failpoint is one
comparison.

Names:

- ``begin:<step>``, ``run:<step>``, ``done:<step>``: around every apply step (in a chain,
  the steps of the n-th jump are ``<step>#<n>``, e.g. ``run:migrate#3``), and
  ``commit`` / ``committed`` around the commit record, ``finished`` once an apply or a
  rollback has returned (the CLI's last moments);
- ``stage:member``: after each member is unpacked into staging;
- ``swap:<group>``: inside a swap, after each file (groups ``files``, ``configs``);
- ``migrate:revision``: between two schema revisions;
- ``service:stopped:<name>``: after a service stopped (before the next stops);
- ``service:started:<name>``: after a service started (before the next starts);
- ``undo:<step>``, ``after-undo:<step>``: during a rollback;
- ``cluster:<action>``: before a ``bundle-install cluster`` action (``cluster:cluster-post``).
"""

from __future__ import annotations

import os
import signal

from installer.errors import StepError

_ENV = "JUMPKIT_FAILPOINT"
ACTIONS = {
    "kill": signal.SIGKILL,
    "stop": signal.SIGSTOP,
    "fail": None,
    "int": signal.SIGINT,
    "term": signal.SIGTERM,
    "hup": signal.SIGHUP,
}


_BAD: list[str] = []
"""What the variable says that no failpoint could act on (a count or action misspelled)."""


def _parse(raw: str | None) -> dict[str, tuple[int, signal.Signals | None]]:
    armed: dict[str, tuple[int, signal.Signals | None]] = {}
    for one in (raw or "").split(","):
        if not one.strip():
            continue
        spec, _, action = one.strip().partition("=")
        name, at, count = spec.partition("@")
        if (at and not count.isdigit()) or (action and action not in ACTIONS):
            _BAD.append(one.strip())
        armed[name] = (int(count) if count.isdigit() else 1, ACTIONS.get(action, signal.SIGKILL))
    return armed


_ARMED = _parse(os.environ.get(_ENV))
_hits: dict[str, int] = {}
ANY_NAME = ("service:stopped:", "service:started:", "cluster:")
"""Failpoints named after a service or a cluster action: any name after the prefix."""


def refuse_unknown(known: set[str]) -> None:
    """Refuse a failpoint this run cannot pass (``run:migrate`` in a chain, whose steps are
    ``migrate#<n>``; a typo), a count that is no number, an action that is none of
    :data:`ACTIONS`: a rehearsal that silently never fires proves nothing.

    Raises:
        UsageError: naming the first, and the names this run passes that are nearest.
    """
    from installer.errors import UsageError

    if _BAD:
        raise UsageError(f"{_ENV}: {_BAD[0]!r} is not NAME[@N][=ACTION] (actions: {', '.join(ACTIONS)})")
    unknown = [n for n in _ARMED if n not in known and not n.startswith(ANY_NAME)]
    if unknown:
        import difflib

        name = unknown[0]
        near = sorted(k for k in known if k.startswith(name + "#")) or difflib.get_close_matches(
            name, known, 6, 0.6
        )
        hint = (
            f"; did you mean {', '.join(near)}?"
            if near
            else f" (it passes {len(known)}; see the module's list)"
        )
        raise UsageError(f"{_ENV}: this run passes no failpoint {name!r}{hint}")


def failpoint(name: str) -> None:
    """Act (signal this process, or raise) if ``name`` is armed and its count is reached.

    Raises:
        StepError: the action is ``fail``.
    """
    if not _ARMED or name not in _ARMED:
        return
    _hits[name] = _hits.get(name, 0) + 1
    count, sig = _ARMED[name]
    if _hits[name] == count:
        if sig is None:
            raise StepError("failpoint fired (JUMPKIT_FAILPOINT)", step=name)
        os.kill(os.getpid(), sig)
