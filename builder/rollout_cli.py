"""``bundle-build rollout``: the fleet rollout's command line (the work is in
:mod:`builder.rollout`). A live table of hosts on a terminal, one line per change otherwise,
one JSON document with --json."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from builder.present import JsonOpt, err, fail
from installer.errors import JumpkitError

if TYPE_CHECKING:  # imported by the commands that run: the CLI's --help stays quick
    from rich.live import Live
    from rich.table import Table

    from builder.rollout import RolloutReport

rollout_app = typer.Typer(
    pretty_exceptions_enable=False,
    invoke_without_command=True,
    rich_markup_mode=None,
    help="Roll a release bundle out to a cluster of managers with Ansible, one host at a time.\n\n"
    "bundle-build rollout --inventory INV --bundle B --trust KEY: copies the bundle to every host "
    "(skipped when the checksum matches), takes its frozen installer out of it there (checked "
    "against the signed manifest) and stages it everywhere before any host stops; finds the "
    "leader with the product's probe; pins it and runs the jump's "
    "cluster-pre hooks on it; applies host by host (leader last unless --order leader-first, "
    "--serial at a time), each followed by the node hooks and the member health gate; runs "
    "cluster-post once all are done, and unpins the leader (also after a failure). The first "
    "failure stops the rollout: that host has rolled itself back, upgraded hosts stay, the rest "
    "stay staged; the summary says which host is on which version.\n\n"
    "Inventory: any Ansible inventory. Host variables: jumpkit_root (default /), jumpkit_dir, "
    "jumpkit_env. Exit codes: 0 done; 2 usage; 3 bundle rejected; 5 a host failed (summary lists "
    "every host).",
)
InventoryOpt = Annotated[
    Path | None, typer.Option("--inventory", "-i", help="Ansible inventory (file or dir).")
]
LimitOpt = Annotated[str, typer.Option("--limit", help="Ansible host pattern within the inventory.")]


class _Presenter:
    """Shows the report as it changes: a live table on a terminal, else a line per change."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.live: Live | None = None
        self.seen: dict[str, str] = {}

    def table(self, report: RolloutReport) -> Table:
        from rich.table import Table

        t = Table(
            title=f"{report.bundle}  {report.from_version} -> {report.to_version}", title_justify="left"
        )
        for col in ("host", "role", "order", "before", "state", "after", "outage", "note"):
            t.add_column(col)
        for h in report.hosts.values():
            role = {True: "leader", False: "member", None: ""}[h.leader]
            outage = f"{h.outage_seconds:.2f}s" if h.outage_seconds is not None else ""
            note = h.error or (f"bundle {h.copied}" if h.copied else "")
            t.add_row(
                h.name, role, str(h.order or ""), h.before or "", h.state, h.after or "", outage, note[:80]
            )
        return t

    def __call__(self, report: RolloutReport) -> None:
        if self.quiet:
            return
        if self.live is not None:
            self.live.update(self.table(report))
            return
        for h in report.hosts.values():
            if self.seen.get(h.name) != h.state:
                self.seen[h.name] = h.state
                err.print(f"{h.name}: {h.state}" + (f" ({h.error})" if h.error else ""))


def _print_report(report: RolloutReport, as_json: bool, presenter: _Presenter | None = None) -> None:
    if as_json:
        print(json.dumps({**report.to_json(), "ok": report.ok}, indent=2))
        return
    if presenter is not None and presenter.live is None:
        err.print(presenter.table(report))
    print(report.summary)
    for line in report.lines():
        print(f"  {line}")
    if report.artifacts:
        print(f"ansible logs: {report.artifacts}/artifacts/")


@rollout_app.callback()
def rollout_cmd(
    ctx: typer.Context,
    inventory: InventoryOpt = None,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="Release bundle ZIP (with its frozen installer).")
    ] = None,
    trust: Annotated[
        list[Path] | None,
        typer.Option(
            "--trust", metavar="KEY", help="Public key (or dir of keys) the bundle must be signed by."
        ),
    ] = None,
    order: Annotated[
        str, typer.Option("--order", help="leader-last (default) or leader-first.")
    ] = "leader-last",
    serial: Annotated[int, typer.Option("--serial", help="Hosts applied at a time.")] = 1,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Copy, probe and plan on every host, print the order; stage, stop and apply nothing.",
        ),
    ] = False,
    limit: LimitOpt = "all",
    work_dir: Annotated[
        Path | None,
        typer.Option("--work-dir", help="Where ansible-runner keeps its artifacts (default: a temp dir)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Roll a release bundle out (see the group help); 'rollout status' shows the fleet."""
    if ctx.invoked_subcommand is not None:
        return
    if inventory is None or bundle is None or not trust:
        err.print("bundle-build rollout: --inventory, --bundle and --trust are required")
        raise typer.Exit(2)
    if order not in ("leader-last", "leader-first"):
        err.print(f"bundle-build rollout: --order {order!r}: leader-last or leader-first")
        raise typer.Exit(2)
    from rich.live import Live

    from builder.errors import RolloutError
    from builder.rollout import Order, rollout

    presenter = _Presenter(quiet=json_out)
    with ExitStack() as stack:
        if not json_out and sys.stderr.isatty():
            presenter.live = stack.enter_context(Live(console=err, refresh_per_second=8))
        try:
            report = rollout(
                inventory,
                bundle,
                trust=trust,
                order=cast(Order, order),
                serial=serial,
                check=check,
                pattern=limit,
                work=work_dir,
                listener=presenter,
            )
        except RolloutError as e:
            stack.close()
            _print_report(e.report, json_out, presenter)
            if not json_out:
                err.print(f"bundle-build: rollout failed: {e.message}")
            raise typer.Exit(e.exit_code) from None
        except JumpkitError as e:
            stack.close()
            fail(e, json_out, False)
    _print_report(report, json_out, presenter)


@rollout_app.command("status")
def rollout_status(
    inventory: InventoryOpt = None,
    product: Annotated[str | None, typer.Option("--product", help="Product under --specs.")] = None,
    specs: Annotated[Path, typer.Option("--specs", help="Specs directory.")] = Path("specs"),
    limit: LimitOpt = "all",
    json_out: JsonOpt = False,
) -> None:
    """One table of every host's installed version and upgrade status, gathered through
    Ansible (the product spec says where the version file is)."""
    if inventory is None:
        err.print("bundle-build rollout status: --inventory is required")
        raise typer.Exit(2)
    from rich.console import Console
    from rich.table import Table

    from builder.rollout import fleet_status
    from builder.spec import load_product

    version_file = load_product(specs, product).spec.version_file
    report = fleet_status(inventory, version_file, pattern=limit)
    if json_out:
        hosts: list[dict[str, Any]] = report.to_json()["hosts"]
        print(json.dumps({"ok": report.ok, "hosts": hosts}, indent=2))
        return
    t = Table()
    for col in ("host", "version", "upgrade status", "reachable"):
        t.add_column(col)
    for h in report.hosts.values():
        t.add_row(h.name, h.after or "?", h.status or "none", "yes" if h.result == "reachable" else "NO")
    Console(highlight=False, width=max(100, Console().width)).print(t)
