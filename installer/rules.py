"""The checks the bundle contract makes of what a manifest names, shared by the builder
(when it writes a manifest) and the installer (when it reads one): rewrite rules compile
in RE2 (linear time) and fit their replacement, and no path touches the installer's own.
"""

from __future__ import annotations

from typing import Any

from installer.errors import UnsafePathError

MAX_RULE_CHARS = 1000

RESERVED = ("var/lib/jumpkit", "etc/jumpkit")
"""The installer's own: state dirs, locks, the manager's installer, trust store, product
marker, TUF root. No file, config, symlink or removal of a bundle touches them, nor an
ancestor of them (a symlink or a file at ``var/lib`` would move the state dir)."""


def check_not_reserved(path: str) -> None:
    """Refuse a bundle path inside, or an ancestor of, a path the installer owns.

    Raises:
        UnsafePathError: it is.
    """
    low = path.casefold()
    for r in RESERVED:
        if low == r or low.startswith(r + "/") or r.startswith(low + "/"):
            raise UnsafePathError(f"{r}/ belongs to the installer; no bundle entry may touch it", entry=path)


def compile_rule(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (linear time in the text, memory bounded by RE2's
    default 8 MiB program budget), multi-line (``^``/``$`` at each line).

    Raises:
        ValueError: it does not compile (RE2 syntax: no backreferences, no lookaround).
    """
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would print its own line to stderr
    try:
        return re2.compile(f"(?m){pattern}", options=options)
    except re2.error as e:
        detail = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(f"rewrite rule pattern {pattern[:60]!r} does not compile (RE2): {detail}") from e


def check_rule(pattern: str, replacement: str) -> None:
    """Compile ``pattern`` and expand ``replacement`` against it: every group reference
    must exist (``\\g<9>`` of a pattern with one group is refused).

    Raises:
        ValueError: either does not compile, or is longer than MAX_RULE_CHARS.
    """
    if len(pattern) > MAX_RULE_CHARS or len(replacement) > MAX_RULE_CHARS:
        raise ValueError(f"a rewrite rule's pattern and replacement are at most {MAX_RULE_CHARS} characters")
    compile_rule(pattern)
    always = compile_rule(f"(?:{pattern})|")  # the same groups, and a match on "" whatever the pattern
    try:
        always.subn(replacement, "", count=1)
    except (IndexError, ValueError, KeyError) as e:
        raise ValueError(
            f"rewrite rule replacement {replacement[:60]!r} does not fit pattern {pattern[:60]!r}: "
            f"invalid group reference ({e})"
        ) from e
