"""The one error guard of both CLIs: whatever a command raises ends in one line (or one
JSON object with ``--json``) and a documented exit code; a traceback only with
``--debug`` or ``JUMPKIT_DEBUG=1``.

- :class:`JumpkitError`: its message and its ``exit_code``;
- anything else (a bug): ``internal error: <type>: <message>``, exit 1, with the advice
  to rerun with ``--debug``;
- a Ctrl-C that reached Python as ``KeyboardInterrupt`` (the signal guard not installed
  yet, or a builder run): ``interrupted``, exit 5 for bundle-install (nothing was changed
  before the guard is installed) and 1 for bundle-build (nothing is left in --out).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from installer.errors import JumpkitError
from installer.interrupts import Interrupted

INTERNAL_ERROR = 1


def one_line(text: str) -> str:
    """``text`` with every run of white space (newlines included) folded to one space."""
    return " ".join(text.split())


def debugging(argv: Sequence[str]) -> bool:
    """Whether tracebacks are wanted (``--debug`` anywhere, or ``JUMPKIT_DEBUG=1``)."""
    return "--debug" in argv or os.environ.get("JUMPKIT_DEBUG", "") not in ("", "0")


def report(
    prog: str, e: BaseException, *, code: int, as_json: bool, debug: bool, hint: str | None = None
) -> NoReturn:
    """Print ``e`` as one line on stderr (or one JSON object on stdout) and exit ``code``.
    ``hint``, when given, is ``"hint"`` in the JSON, and a second line only when stderr is
    a terminal (an operator reads it; a script that reads the last line keeps one)."""
    if debug:
        traceback.print_exception(e)
    if isinstance(e, JumpkitError | Interrupted):
        message = one_line(e.message)
        details = [one_line(d) for d in getattr(e, "details", [])]
    else:
        message = (
            one_line(f"internal error: {type(e).__name__}: {e}") + "; rerun with --debug for the traceback"
        )
        details = []
    try:
        if as_json:
            doc = {"ok": False, "exit": code, "error": message, "details": details}
            print(json.dumps(doc | ({"hint": hint} if hint else {})), flush=True)
        else:
            print(f"{prog}: {message}", file=sys.stderr, flush=True)
            for d in details:
                if d not in message:
                    print(f"  - {d}", file=sys.stderr, flush=True)
            if hint and sys.stderr.isatty():
                print(f"{prog}: {hint}", file=sys.stderr, flush=True)
    except OSError:
        pass  # the terminal is gone (SIGHUP); the exit code still says what happened
    raise SystemExit(code)


def run(prog: str, app: Callable[[], Any], *, interrupted_code: int) -> None:
    """Run a typer app under the guard (see the module docstring)."""
    argv = sys.argv[1:]
    debug, as_json = debugging(argv), "--json" in argv
    try:
        app()
    except SystemExit:
        raise
    except (JumpkitError, Interrupted) as e:
        report(prog, e, code=e.exit_code, as_json=as_json, debug=debug)
    except KeyboardInterrupt:
        report(
            prog, JumpkitError("interrupted by SIGINT"), code=interrupted_code, as_json=as_json, debug=debug
        )
    except Exception as e:
        report(prog, e, code=INTERNAL_ERROR, as_json=as_json, debug=debug)
