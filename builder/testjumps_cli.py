"""``bundle-build test-jumps``: its command line and its live matrix; the work is in
:mod:`builder.testjumps`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from builder.errors import BuildError
from builder.present import JsonOpt, err
from installer.errors import UsageError


def test_jumps_cmd(
    product: Annotated[
        str | None, typer.Option("--product", help="Product under --specs (default: the only one).")
    ] = None,
    specs: Annotated[Path, typer.Option("--specs", help="Specs directory, or one product's.")] = Path(
        "specs"
    ),
    frm: Annotated[str | None, typer.Option("--from", help="Test this jump (or chain) only: from.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="... to.")] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every jump, and the chain across all releases as one apply.")
    ] = False,
    installer_path: Annotated[
        Path | None, typer.Option("--installer", help="Frozen installer to embed (default: as a build).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Cases at once (default: the core count).")] = 0,
    junit_file: Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML here (for CI).")] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="zip: the installer applies the bundles; rpm: rpm -U the bundle RPMs into each "
            "sandbox (needs root, rpm, unshare and busybox; a chain is its RPMs one after another).",
        ),
    ] = "zip",
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="supervisord or systemd (default: the product's). systemd boots a real systemd "
            "per case (PID 1 of its own namespaces, the sandbox as its /; needs root, unshare, "
            "nsenter) and compares its units' state after the rollback too.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Prove every supported jump before a release ships: for each jump (with --all also
    the chain across all releases, as one apply), a sandbox at the from-release with its
    services running, the release bundle built and applied by the installer it carries,
    then health, the version file and each database's revision checked, then rollback,
    and the tree compared byte for byte (paths, modes, contents) and each database
    (revision and rows) with a fresh from-release. Cases run in parallel; a live table on
    a terminal; the matrix at the end (jump x build/apply/health/version/schema/rollback/exact);
    --junit for CI. --format rpm applies the bundle RPMs with rpm -U, as yum would. Exit 1
    when a cell fails (the line names the jump and the check), 2 for bad input, 4 when the
    product has no such jump or chain."""
    import tempfile
    import time

    from rich.console import Console

    from builder import testjumps as tj
    from builder.frozen import choose_installer
    from builder.spec import load_product

    if (frm is None) != (to is None) or (frm is not None and everything):
        err.print("bundle-build test-jumps: give --from and --to together, or --all, or neither (every jump)")
        raise typer.Exit(2)
    if fmt not in tj.FORMATS:
        err.print(f"bundle-build test-jumps: --format {fmt!r}: one of {', '.join(tj.FORMATS)}")
        raise typer.Exit(2)
    if fmt == "rpm" and (why := tj.rpm_problem()) is not None:
        err.print(f"bundle-build test-jumps: {why}")
        raise typer.Exit(2)
    prod = load_product(specs, product)
    if (why := tj.backend_problem(prod, backend, fmt)) is not None:
        raise UsageError(why)
    todo = tj.cases(prod, frm, to, everything, fmt)
    frozen = choose_installer(installer_path, none=False, note=None)
    if frozen is None:
        raise BuildError("test-jumps tests what ships: it needs the frozen installer "
                         "(scripts/freeze-installer, or --installer)")  # fmt: skip
    t0 = time.monotonic()
    live = not json_out and sys.stdout.isatty()
    with tempfile.TemporaryDirectory(prefix="jk-test-jumps-") as tmp:
        runner = tj.Runner(prod, specs, frozen, Path(tmp), fmt)
        runner.build({j for c in todo for j in c.steps}, lambda what: None if json_out else err.print(what))
        results = _run_cases(runner, todo, workers or os.cpu_count() or 1, live)
    seconds = time.monotonic() - t0
    if junit_file is not None:
        junit_file.write_text(tj.junit(results, seconds))
    failed = [c for c in results if not c.ok]
    if json_out:
        print(json.dumps({
            "ok": not failed, "seconds": round(seconds, 1), "cells": list(tj.CELLS),
            "cases": [{"case": c.name, "cells": c.cells, "failure": c.failure, "seconds": round(c.seconds, 1)}
                      for c in results],
        }))  # fmt: skip
    else:
        Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(_matrix(results, tj.CELLS))
        for c in failed:
            err.print(f"bundle-build: test-jumps: {c.name}: {c.failure}")
        print(f"{len(results) - len(failed)} of {len(results)} case(s) passed in {seconds:.0f}s")
    if failed:
        raise typer.Exit(1)


def _matrix(results: list[Any], cells: tuple[str, ...]) -> Any:
    from rich.table import Table

    marks = {"pass": "ok", "fail": "[red]FAIL[/red]", "skip": "-", "run": "...", None: " "}
    table = Table(title="test-jumps")
    table.add_column("case", no_wrap=True)
    for c in cells:
        table.add_column(c, justify="center")
    table.add_column("s", justify="right")
    for r in results:
        table.add_row(r.name, *(marks[r.cells.get(c)] for c in cells), f"{r.seconds:.0f}")
    return table


def _run_cases(runner: Any, todo: list[Any], workers: int, live: bool) -> list[Any]:
    import threading

    from builder import testjumps as tj

    if not live:
        return tj.run_all(runner, todo, lambda c: None, workers)
    from rich.live import Live

    lock = threading.Lock()
    with Live(_matrix(todo, tj.CELLS), console=err, refresh_per_second=4, transient=True) as view:

        def changed(_: Any) -> None:
            with lock:
                view.update(_matrix(todo, tj.CELLS))

        return tj.run_all(runner, todo, changed, workers)
