"""What every bundle-build command shares to present results: the error console, the --json
option and how a JumpkitError becomes one line (or one JSON document) and an exit code."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from rich.console import Console

from installer import entry
from installer.errors import JumpkitError

err = Console(stderr=True, highlight=False, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]


def fail(e: JumpkitError, as_json: bool, debug: bool) -> NoReturn:
    """Report ``e`` (one line, its details indented; or JSON) and exit with its code."""
    entry.report("bundle-build", e, code=e.exit_code, as_json=as_json, debug=debug)
