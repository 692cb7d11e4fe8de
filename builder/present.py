"""What every bundle-build command shares to present results: the error console, the --json
option and how a JumpkitError becomes one line (or one JSON document) and an exit code."""

from __future__ import annotations

import json
import traceback
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from installer.errors import JumpkitError

err = Console(stderr=True, highlight=False, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]


def fail(e: JumpkitError, as_json: bool, debug: bool) -> NoReturn:
    """Report ``e`` (one line, its details indented; or JSON) and exit with its code."""
    if debug:
        traceback.print_exception(e)
    details = getattr(e, "details", [])
    if as_json:
        print(json.dumps({"ok": False, "exit": e.exit_code, "error": e.message, "details": details}))
    else:
        err.print(f"bundle-build: {e.message}")
        for d in details:
            if d not in e.message:
                err.print(f"  - {d}")
    raise typer.Exit(e.exit_code)
