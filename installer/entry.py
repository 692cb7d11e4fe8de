"""How both CLIs run and end: whatever a command raises ends in one line (or one
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


def hoisted(argv: list[str], app: Any, globals_: dict[str, bool]) -> list[str]:
    """``argv`` with the global options (``globals_``: option -> takes a value) that come
    after the subcommand moved before it, where the CLI reads them: ``bundle-build repo
    init ... --debug`` as ``bundle-build --debug repo init ...``. An option the subcommand
    has itself (``sandbox --root``) stays where it is; so does everything after ``--``."""

    def name(tok: str) -> str:
        return tok.split("=", 1)[0]

    late = [i for i, t in enumerate(argv) if name(t) in globals_]
    words = [i for i, t in enumerate(argv) if not t.startswith("-")]
    if not late or not words or max(late) < words[0]:
        return argv  # nothing after a subcommand: the usual case costs no parse
    import typer

    command: Any = typer.main.get_command(app)  # a click command (typer vendors click)
    i, path_end = 0, 0
    while i < len(argv):  # the subcommand path: root options, then group and command names
        tok = argv[i]
        if tok == "--":
            return argv
        if tok.startswith("-"):
            i += 2 if globals_.get(name(tok)) and "=" not in tok else 1
            continue
        sub = getattr(command, "commands", {}).get(tok)
        if sub is None:
            break
        command, path_end, i = sub, i + 1, i + 1
    if path_end == 0:
        return argv
    own = {o for param in command.params for o in (*param.opts, *param.secondary_opts)}
    front: list[str] = []
    rest: list[str] = []
    tail = argv[path_end:]
    k = 0
    while k < len(tail):
        tok = tail[k]
        if tok == "--":
            rest += tail[k:]
            break
        if name(tok) in globals_ and name(tok) not in own:
            takes = globals_[name(tok)] and "=" not in tok
            front += tail[k : k + 2] if takes else [tok]
            k += 2 if takes else 1
            continue
        rest.append(tok)
        k += 1
    return front + argv[:path_end] + rest


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
