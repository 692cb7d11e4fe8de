"""Named failpoints: ``JUMPKIT_FAILPOINT=NAME[@N][=ACTION]`` acts the N-th time (default:
first) the installer passes NAME. ACTION is ``kill`` (default: SIGKILL, a crash at that
instant) or ``stop`` (SIGSTOP: the run freezes there until ``kill -CONT``, so an operator or
a test can do something at that exact moment, e.g. fill the disk). Used by the crash tests;
operators rehearse failures the same way. When the variable is unset a failpoint is one
comparison.

Names:

- ``begin:<step>``, ``run:<step>``, ``done:<step>``: around every apply step, and
  ``commit`` / ``committed`` around the commit record;
- ``stage:member``: after each member is unpacked into staging;
- ``swap:<group>``: inside a swap, after each file (groups ``files``, ``configs``);
- ``migrate:revision``: between two schema revisions;
- ``service:stopped:<name>``: after a service stopped (before the next stops);
- ``service:started:<name>``: after a service started (before the next starts);
- ``undo:<step>``, ``after-undo:<step>``: during a rollback.
"""

from __future__ import annotations

import os
import signal

_ENV = "JUMPKIT_FAILPOINT"
ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


def _parse(raw: str | None) -> tuple[str, int, signal.Signals] | None:
    if not raw:
        return None
    spec, _, action = raw.partition("=")
    name, _, count = spec.partition("@")
    return name, int(count) if count.isdigit() else 1, ACTIONS.get(action, signal.SIGKILL)


_ARMED = _parse(os.environ.get(_ENV))
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Act (SIGKILL or SIGSTOP this process) if ``name`` is armed and its count is reached."""
    if _ARMED is None or _ARMED[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _ARMED[1]:
        os.kill(os.getpid(), _ARMED[2])
