"""``bundle-install``: the operator's command line. It only presents; the work is in
:mod:`installer.engine`."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from installer import entry, interrupts, version_line
from installer.errors import JumpkitError, PreconditionError, UsageError

if TYPE_CHECKING:  # the engine (pydantic, cryptography, ...) loads when a command runs, not for --help
    from installer.engine import Engine, Options
    from installer.state import StatusDoc

EXIT_CODES = """Exit codes: 0 ok, also "nothing to do" for every command (apply, plan and verify
of a bundle whose to-version is installed; rollback after a rollback; resume with nothing
unfinished); 1 internal error (a bug: rerun with --debug); 2 usage; 3 bundle rejected
(integrity, signature, format, unsafe path); 4 precondition failed, nothing changed (also
plan when pre-flight would fail; rollback with no apply to undo); 5 apply failed,
or SIGINT/SIGTERM/SIGHUP arrived before the commit, and it was rolled back; 6 apply
failed and rollback failed (operator action needed; status says what); 7 another run
holds the lock; 8 committed, but a post-upgrade job or the component RPMs failed (the
upgrade stays; 'jobs' or 'components' retries). A signal after the commit is logged and
the apply finishes (0)."""

app = typer.Typer(
    add_completion=True,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Verify, stage and apply jumpkit upgrade bundles on this manager.\n\n"
    "Every apply is journaled under the state dir: after a crash, 'resume' finishes it and "
    "'rollback' returns to the old version.\n\n" + EXIT_CODES,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


@dataclass
class Globals:
    """Options given before the command."""

    opts: Options
    json: bool
    debug: bool


G: Globals | None = None

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
BundleArg = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The bundle file (.zip).")
]


def _version_cb(value: bool) -> None:
    if value:
        print(version_line())
        raise typer.Exit()


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    num, unit = text.strip().upper().rstrip("B").rstrip("I"), ""
    if num and num[-1] in units:
        num, unit = num[:-1], num[-1]
    if not num.isdigit() or int(num) <= 0:
        raise typer.BadParameter(f"{text!r} is not a size like 512M or 64G", param_hint="--max-bundle-size")
    return int(num) * units[unit]


@app.callback()
def main_options(
    root: Annotated[
        Path, typer.Option("--root", help="Prefix for every target path (a sandbox root).")
    ] = Path("/"),
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="State dir (default <root>/var/lib/jumpkit/<product>).")
    ] = None,
    trust: Annotated[
        list[Path] | None,
        typer.Option(
            "--trust",
            help="Trusted public key file or dir (default <root>/etc/jumpkit/trusted-keys/). Repeatable.",
        ),
    ] = None,
    allow_unsigned: Annotated[
        bool, typer.Option("--allow-unsigned", help="DEVELOPMENT ONLY: skip the signature check.")
    ] = False,
    accept_drift: Annotated[
        bool, typer.Option("--accept-drift", help="Apply over locally modified files (they are backed up).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Proceed although the services are unhealthy now.")
    ] = False,
    no_selinux: Annotated[
        bool,
        typer.Option(
            "--no-selinux",
            help="Do not label placed files from the root's SELinux policy (they keep the staging "
            "directory's label; plan says so).",
        ),
    ] = False,
    max_bundle_size: Annotated[
        str,
        typer.Option(
            "--max-bundle-size",
            metavar="SIZE",
            help="Refuse a bundle whose manifest declares more unpacked bytes than this "
            "(K/M/G/T suffixes; default 64G): checked before anything is unpacked.",
        ),
    ] = "64G",
    json_out: JsonOpt = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_cb,
            is_eager=True,
            help="Print the version and the bundle formats read.",
        ),
    ] = False,
) -> None:
    """Global options."""
    from installer.engine import Options

    if not root.is_dir():  # a refused run creates nothing: never the root itself
        if root.exists():
            raise UsageError(f"--root {root}: not a directory (the root of a manager's tree is one)")
        raise UsageError(f"--root {root}: no such directory (bundle-install never creates the root)")
    for given in trust or []:  # named by the operator: a typo must not read as "no keys"
        if not given.exists():
            raise UsageError(
                f"--trust {given}: no such file or directory (a public key file or a directory of them)"
            )
    global G
    G = Globals(
        Options(
            root=root,
            state_dir=state_dir,
            trust=list(trust or []),
            allow_unsigned=allow_unsigned,
            accept_drift=accept_drift,
            force=force,
            max_bundle_bytes=_size(max_bundle_size),
            selinux=not no_selinux,
        ),
        json_out,
        debug,
    )
    if allow_unsigned:
        err.print("WARNING: --allow-unsigned: the bundle's signature is NOT checked. Development only.")


def _g() -> Globals:
    assert G is not None
    return G


REPORT_HINT_CODES = (3, 4)
"""Refusals (bundle rejected, precondition failed) name the command that makes a report."""


def _fail(e: JumpkitError, as_json: bool) -> NoReturn:
    hint = None
    if e.exit_code in REPORT_HINT_CODES:
        hint = f"for support: bundle-install --root {shlex.quote(str(_g().opts.root))} report"
    entry.report("bundle-install", e, code=e.exit_code, as_json=as_json, debug=_g().debug, hint=hint)


@contextmanager
def _progress(as_json: bool) -> Iterator[Callable[[str, int], Callable[[int], None]] | None]:
    if as_json or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:

        def factory(label: str, total: int) -> Callable[[int], None]:
            task = bar.add_task(label, total=total)
            return lambda n: bar.advance(task, n)

        yield factory


def _engine(as_json: bool, progress: Callable[[str, int], Callable[[int], None]] | None) -> Engine:
    from installer.engine import Engine

    def log(line: str) -> None:
        if not as_json:
            with contextlib.suppress(OSError):  # a closed terminal must not fail a rollback
                err.print(line, markup=False, highlight=False, soft_wrap=True)  # as written, 30 us

    return Engine(_g().opts, log=log, progress=progress)


def _run(as_json: bool, fn: Callable[[Engine], Any]) -> Any:
    as_json = as_json or _g().json
    with _progress(as_json) as progress:
        try:
            return fn(_engine(as_json, progress))
        except JumpkitError as e:
            _fail(e, as_json)


def _print_status(doc: StatusDoc, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc.to_json(), indent=2))
        return
    if doc.extra.get("nothing_to_do"):
        out.print(doc.summary)
        return
    out.print(f"status:  {doc.status}")
    out.print(f"summary: {doc.summary}")
    if doc.from_version:
        out.print(f"jump:    {doc.from_version} -> {doc.to_version}")
    if doc.step:
        out.print(f"step:    {doc.step}")
    if doc.outage_seconds is not None:
        out.print(f"outage:  {doc.outage_seconds:.3f}s")
    if last := doc.extra.get("last_attempt"):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["at"]))
        out.print(f"since:   a run of {last['bundle']} at {when} was {last['ended']}", markup=False)
        if last.get("next"):
            out.print(f"next:    {last['next']}", markup=False)
    for name, job in doc.extra.get("jobs", {}).items():
        detail = job.get("error") if job["state"] != "succeeded" else None
        out.print(
            f"job {name}: {job['state']} ({job['attempts']} attempt(s))" + (f": {detail}" if detail else "")
        )
    comp = doc.extra.get("components")
    if comp:
        out.print(
            f"components: {comp['state']} ({', '.join(comp['rpms'])})"
            + (
                f": {comp.get('error') or comp.get('detail')}"
                if comp.get("error") or comp.get("detail")
                else ""
            )
        )


@app.command()
def verify(bundle: BundleArg, json_out: JsonOpt = False) -> None:
    """Check a bundle's signature, manifest and every member's sha256; when --root holds a
    manager, also that the bundle is for its product and installed version (exit 4 if not).
    Changes nothing."""
    m = _run(json_out, lambda e: e.verify(bundle))
    if json_out or _g().json:
        print(json.dumps({"ok": True, "bundle": m.bundle_id, "files": len(m.files), "bytes": m.total_size()}))
    else:
        out.print(f"OK {m.bundle_id}: signature and {len(m.contents())} members verified")


@app.command()
def stage(bundle: BundleArg, json_out: JsonOpt = False) -> None:
    """Verify, run pre-flight checks and unpack into the staging area. Nothing stops."""
    path = _run(json_out, lambda e: e.stage(bundle))
    if json_out or _g().json:
        print(json.dumps({"ok": True, "staging": str(path)}))
    else:
        out.print(f"staged into {path}")


@app.command()
def apply(
    bundles: Annotated[
        list[Path] | None,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="Bundle file(s); omit for the staged one. Several bundles that form a chain "
            "(4.0.1->4.1.1 4.1.1->4.2.0) are applied as one transaction with one outage.",
        ),
    ] = None,
    detach_components: Annotated[
        bool,
        typer.Option(
            "--detach-components",
            help="Install the jump's component RPMs from a detached 'bundle-install components' that "
            "waits for the rpm database lock (the bundle RPM's %posttrans: rpm holds it until the "
            "transaction ends).",
        ),
    ] = False,
    wait_jobs: Annotated[
        bool,
        typer.Option(
            "--wait-jobs",
            help="Run the jump's post-upgrade jobs before returning (exit 8 if one fails every "
            "attempt; the upgrade stays committed) instead of from a detached 'bundle-install jobs'.",
        ),
    ] = False,
    repo: Annotated[
        str | None,
        typer.Option("--repo", help="Fetch the bundles through TUF from this repository first (with --to)."),
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="With --repo: the version to reach.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="With --repo: zip (default) or rpm.")] = "zip",
    record_refusal: Annotated[
        str | None,
        typer.Option(
            "--record-refusal",
            metavar="NEXT",
            help="Keep a refusal (exit 3 or 4: nothing changed) in status.json, with NEXT as the "
            "operator's next step, so that 'status' and 'report' show it: for callers whose output "
            "may be lost (the bundle RPM's %posttrans, where rpm and dnf exit 0 anyway).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Verify, stage, back up, stop, swap, start, health-check, commit; roll back on failure.

    With a chain of bundles: all are verified and staged first, the services stop once,
    each jump swaps and migrates in order, the services start once, the health checks run
    once; a failure anywhere rolls the whole chain back to the first from-version."""
    _g().opts.detach_components = detach_components
    _g().opts.detach_jobs = not wait_jobs
    _g().opts.record_refusal = record_refusal
    if (repo is None) != (to is None) or (repo is not None and bundles):
        err.print("bundle-install apply: give bundle files, or --repo URL --to VERSION")
        raise typer.Exit(2)
    if repo is not None and to is not None:
        doc = _run(json_out, lambda e: e.apply(e.fetch(repo, to, fmt)))
    else:
        doc = _run(json_out, lambda e: e.apply(bundles or []))
    _print_status(doc, json_out or _g().json)


@app.command()
def fetch(
    repo: Annotated[str, typer.Option("--repo", help="s3://BUCKET/PREFIX, file:///DIR or https://BASE.")],
    to: Annotated[str, typer.Option("--to", help="The version to reach from the installed one.")],
    fmt: Annotated[str, typer.Option("--format", help="zip (default) or rpm.")] = "zip",
    json_out: JsonOpt = False,
) -> None:
    """Download the bundle (or the chain of bundles) from the installed version to --to
    through TUF, with the root pinned at <root>/etc/jumpkit/tuf/root.json, into the state
    dir's downloads/, and verify each bundle's signature. Refuses (exit 3, nothing kept)
    rollback, freeze, mix-and-match, tampered or oversized targets and metadata signed
    below threshold. S3 credentials, region and endpoint (AWS_ENDPOINT_URL) come from the
    usual AWS environment."""
    if fmt not in ("zip", "rpm"):
        err.print(f"bundle-install fetch: --format {fmt!r}: zip or rpm")
        raise typer.Exit(2)
    paths = _run(json_out, lambda e: e.fetch(repo, to, fmt))
    root = _g().opts.root
    where = [] if root.resolve() == Path("/") else ["--root", str(root)]
    following = shlex.join(["bundle-install", *where, "apply", *map(str, paths)])
    if json_out or _g().json:
        print(json.dumps({"ok": True, "bundles": [str(p) for p in paths], "next": following}))
    else:
        for p in paths:
            out.print(f"fetched and verified {p}", markup=False)
        out.print(f"next: {following}", markup=False)


trust_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="What this manager trusts: the pinned TUF root."
)
app.add_typer(trust_app, name="trust")


@trust_app.command("pin-root")
def pin_root(
    source: Annotated[
        Path, typer.Argument(help="The repository's root.json (repo init writes KEYS/root.json).")
    ],
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace another TUF root pinned already.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Pin the TUF root that fetch and apply --repo trust, at <root>/etc/jumpkit/tuf/root.json:
    checked first (root metadata, signed by its own threshold of keys, not expired). Exit 3
    when it is not one, 4 when another root is pinned (--replace), 0 when it is pinned
    already."""
    from installer.fetch import pin_root as pin

    said = _run(json_out, lambda e: pin(e.root, source, replace=replace))
    if json_out or _g().json:
        print(json.dumps({"ok": True, "result": said}))
    else:
        out.print(said, markup=False)


@app.command()
def status(json_out: JsonOpt = False) -> None:
    """Show the state of the last or current run (status.json)."""
    _print_status(_run(json_out, lambda e: e.status()), json_out or _g().json)


@app.command()
def report(
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where to write the report (default: ./jumpkit-report-<product>-<time>.tar.gz)."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a support report: one tar.gz with status, journal, history, versions, the
    drift of the installed tree, config files, free space, kernel, glibc, distribution,
    service states and their last log lines, and a README.txt saying what each file is.
    Secrets are masked (values of keys named like password/secret/token/key, every URL's
    password). Reads only; send the file to support."""
    path = _run(json_out, lambda e: e.report(out_file))
    if json_out or _g().json:
        from installer.report import members

        print(json.dumps({"ok": True, "report": str(path), "files": list(members(path))}))
    else:
        out.print(f"support report written: {path}")


@app.command()
def components(json_out: JsonOpt = False) -> None:
    """Install the component RPMs of the last committed apply (waits for the rpm database lock)."""
    _print_status(_run(json_out, lambda e: e.components()), json_out or _g().json)


@app.command()
def jobs(
    names: Annotated[
        list[str] | None, typer.Argument(help="Jobs to run (again); default: every job not yet succeeded.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run the post-upgrade jobs of the last committed apply: each until it succeeds or has
    used its retries (exponential backoff). Re-triggers failed jobs; named jobs run even if
    they succeeded. Waits for a running apply to finish. Exit 5 if a job fails."""
    _print_status(_run(json_out, lambda e: e.jobs(names or [])), json_out or _g().json)


@app.command()
def cluster(
    action: Annotated[
        str,
        typer.Argument(
            help="role (is this host the leader?), pin-leader, unpin-leader, cluster-pre, node, "
            "cluster-post (run the jump's hooks of that kind) or member-health (wait for the "
            "product's cluster health gate); several, comma-separated (node,member-health), run "
            "in order in one start and stop at the first failure."
        ),
    ],
    bundle: BundleArg,
    host: Annotated[
        str | None, typer.Option("--host", help="This host's inventory name (JUMPKIT_HOST for commands).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """One step of a fleet rollout on this host, as 'bundle-build rollout' runs it through
    Ansible. The bundle's signature is checked first; hook scripts are checked against the
    manifest before they run. Exit 5 if a command, hook or the health gate fails."""
    from installer.cluster import ACTIONS

    actions = action.split(",")
    for a in actions:
        if a not in ACTIONS:
            err.print(f"bundle-install cluster: unknown action {a!r}; one of {', '.join(ACTIONS)}")
            raise typer.Exit(2)
    res = _run(json_out, lambda e: e.cluster(actions, bundle, host))  # type: ignore[arg-type]
    if json_out or _g().json:
        print(json.dumps({"ok": True, **res}, sort_keys=True))
        return
    for r in res.get("actions", [res]):
        if r["action"] == "role":
            out.print({True: "leader", False: "member", None: "no leader probe"}[r["leader"]])
        else:
            out.print(f"{r['action']}: ok" + (f" ({', '.join(r['hooks'])})" if r.get("hooks") else ""))


@app.command()
def resume(json_out: JsonOpt = False) -> None:
    """Finish an apply (or rollback) that was interrupted by a crash."""
    _print_status(_run(json_out, lambda e: e.resume()), json_out or _g().json)


@app.command()
def rollback(json_out: JsonOpt = False) -> None:
    """Return to the from-version: after a crash, or after a finished apply while its backup is kept."""
    _print_status(_run(json_out, lambda e: e.rollback()), json_out or _g().json)


@app.command()
def unstage(json_out: JsonOpt = False) -> None:
    """Remove staging and backups. After this a finished apply can no longer be rolled back."""
    msg = _run(json_out, lambda e: e.unstage())
    print(json.dumps({"ok": True, "message": msg}) if (json_out or _g().json) else msg)


PLAN_FILES_SHOWN = 50
"""File lines ``plan`` prints before summarising (a jump at the removal cap has 100,000)."""


@app.command()
def plan(
    bundles: Annotated[
        list[Path],
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="The bundle, or the bundles of a chain in order."
        ),
    ],
    json_out: JsonOpt = False,
) -> None:
    """Dry run: every step apply would take and what it would touch (files replaced, added
    and removed, configs and their policy, schema revisions, services), pre-flight (the
    migrations rehearsed on a copy of this manager's databases, as apply does), and an
    outage estimate: the stop and start timings earlier applies measured here and the
    rehearsals' statement times (an upper bound from the service timeouts when no apply
    was measured yet). Exit 4 when pre-flight would fail (apply would refuse), so that
    'plan && apply' stops there; exit 0 with "nothing to do" when the manager is at the
    target already.
    Changes nothing. Several bundles: the chain as one apply would run it."""
    report = _run(json_out, lambda e: e.plan(bundles))
    would_fail = not report.get("nothing_to_do") and not report["preflight"]["ok"]
    if json_out or _g().json:
        print(json.dumps(report, indent=2))
        if would_fail:
            raise typer.Exit(PreconditionError.exit_code)
        return
    if report.get("nothing_to_do"):
        out.print(report["summary"], markup=False)
        return
    out.print(
        f"{report['bundle']}: installed {report['installed']}, upgrades {report['from']} -> {report['to']}"
        + (f" in {len(report['chain'])} jumps, one outage" if len(report["chain"]) > 1 else "")
    )
    pf = report["preflight"]
    out.print("pre-flight: " + ("ok" if pf["ok"] else "WOULD FAIL"))
    for line in pf.get("passed", []) + pf.get("problems", []):
        out.print(f"  - {line}")
    for d in report["drift"]:
        out.print(f"  drift: {d}")
    for n in report["notes"]:
        out.print(f"  config: {n}")
    for sp in report["special_modes"]:
        out.print(
            f"  [bold red]SETUID/SETGID/STICKY[/] {escape(sp['path'])} mode {sp['mode']} ({sp['jump']}; "
            "allowed by the product spec)"
        )
    for i, s in enumerate(report["steps"], 1):
        out.print(f"{i:2}. {s['step']:<17} {s['detail']}")
    files = report["files"]
    for f in files[:PLAN_FILES_SHOWN]:
        out.print(
            f"    {f['jump']}: {f['action']:<7} {f['path']}" + (f"  ({f['note']})" if f["note"] else ""),
            markup=False,
        )
    if len(files) > PLAN_FILES_SHOWN:
        out.print(f"    ... and {len(files) - PLAN_FILES_SHOWN} more (--json lists every one)")
    from installer.sbom import ComponentChange

    for jump in report["components"]:
        out.print(f"components {jump['jump']}: {jump['summary']}", markup=False)
        for c in jump["changes"][:PLAN_FILES_SHOWN]:
            out.print(f"    {ComponentChange.model_validate(c).line}", markup=False)
    est = report["outage_estimate"]
    bound = "at most " if est["upper_bound"] else ""
    out.print(f"estimated outage: {bound}{est['seconds']}s ({'; '.join(est['basis'])})", markup=False)
    if would_fail:  # plan && apply must not go ahead: apply would refuse the same way
        err.print("bundle-install: pre-flight would fail: apply would refuse (exit 4); see above")
        raise typer.Exit(PreconditionError.exit_code)


@app.command()
def migrations(
    bundle: BundleArg,
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the offline SQL of the upgrade (alembic offline mode).")
    ] = False,
    dialect: Annotated[
        str | None,
        typer.Option(
            "--dialect", help="SQL dialect (postgresql, sqlite); default: the target's database URL."
        ),
    ] = None,
) -> None:
    """Show what the bundle's schema migrations would run, as SQL for a DBA to review."""
    if not sql:
        err.print("bundle-install migrations: pass --sql")
        raise typer.Exit(2)
    text = _run(False, lambda e: e.migrations_sql(bundle, dialect))
    sys.stdout.write(text)


GLOBAL_OPTIONS = {
    "--root": True, "--state-dir": True, "--trust": True, "--allow-unsigned": False,
    "--accept-drift": False, "--force": False, "--no-selinux": False, "--max-bundle-size": True,
    "--debug": False,
}  # fmt: skip
"""bundle-install's own options (True: takes a value), also accepted after the command:
``bundle-install apply B --root R`` as ``bundle-install --root R apply B``."""


def main() -> None:
    """Console-script entry point: SIGINT, SIGTERM and SIGHUP become requests to stop
    (installer.interrupts), and every failure ends in one line (installer.entry)."""
    interrupts.install()

    def run() -> None:  # everything after install() runs under the guard: a signal is one line
        from installer.selfupdate import hand_over

        sys.argv[1:] = entry.hoisted(sys.argv[1:], app, GLOBAL_OPTIONS)
        hand_over(sys.argv)  # a newer installer left on this manager by an earlier apply runs instead
        app()

    try:
        entry.run("bundle-install", run, interrupted_code=interrupts.Interrupted.exit_code)
    finally:
        interrupts.ignore()


if __name__ == "__main__":
    main()
