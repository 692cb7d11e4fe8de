"""Named failpoints: ``JUMPKIT_FAILPOINT=NAME[@N]`` SIGKILLs the installer the N-th time
(default: first) it passes NAME. Used by the crash tests; operators can rehearse
failures the same way. When the variable is unset a failpoint is one dict lookup.

Names: ``before:<step>``, ``after:<step>``, ``swap:<group>`` (inside a swap, every file),
``undo:<step>`` and ``after-undo:<step>`` (rollback).
"""

from __future__ import annotations

import os
import signal

_ENV = "JUMPKIT_FAILPOINT"


def _parse(raw: str | None) -> tuple[str, int] | None:
    if not raw:
        return None
    name, _, count = raw.partition("@")
    return name, int(count) if count.isdigit() else 1


_ARMED = _parse(os.environ.get(_ENV))
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """SIGKILL this process here if ``name`` is armed and its count is reached."""
    if _ARMED is None or _ARMED[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= _ARMED[1]:
        os.kill(os.getpid(), signal.SIGKILL)
