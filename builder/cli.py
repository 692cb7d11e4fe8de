"""``bundle-build``: the release engineer's command line. It only presents; the work is in
:mod:`builder.build`."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from builder import __version__
from builder.errors import BuildError, UnknownJumpError
from builder.present import JsonOpt, err
from builder.present import fail as _fail
from builder.resources import DEFAULT_INSTALLER, foreign_installer, packaged_installer
from builder.rollout_cli import rollout_app
from installer import guard
from installer.errors import JumpkitError, UsageError

if TYPE_CHECKING:
    from builder.frozen import FrozenInstaller

# The work's modules (pydantic models, the build, rpm, the graph) are imported by the
# command that needs them: ``--version``, ``--help`` and completion then start in ~0.1 s
# instead of 0.75 s (typer and rich are what is left).

EXIT_CODES = (
    "Exit codes: 0 ok; 1 build failed (also test-jumps when a cell fails); 2 bad spec or usage; "
    "3 bad bundle (inspect, publish); 4 no upgrade path (plan, test-jumps), the repository cannot "
    "be read or written (publish, repo), a precondition on a host (rollout); 5 a rollout stopped "
    "(a host failed; the summary says where each host is)."
)

app = typer.Typer(
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,
    invoke_without_command=True,
    help="Build signed, reproducible version-jump bundles from jump specs.\n\n"
    "bundle-build --from 4.0.1 --to 4.1.1 writes dist/<product>-4.0.1-to-4.1.1.zip.\n\n"
    "Reproducible: the same specs, key and SOURCE_DATE_EPOCH (or the jump's date) give a "
    "byte-identical bundle.\n\n" + EXIT_CODES,
)


@app.callback()
def build(
    ctx: typer.Context,
    frm: Annotated[str | None, typer.Option("--from", help="Version the bundle upgrades from.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Version the bundle upgrades to.")] = None,
    product: Annotated[
        str | None, typer.Option("--product", help="Product under --specs (default: the only one).")
    ] = None,
    specs: Annotated[Path, typer.Option("--specs", help="Specs directory.")] = Path("specs"),
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("dist"),
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            envvar="JUMPKIT_SIGNING_KEY",
            help="ed25519 private key (PEM) to sign the manifest. Env: JUMPKIT_SIGNING_KEY.",
        ),
    ] = None,
    unsigned: Annotated[
        bool,
        typer.Option(
            "--unsigned",
            help="Build without a signature (development only; installers need --allow-unsigned).",
        ),
    ] = False,
    level: Annotated[
        int,
        typer.Option(
            "--level", min=0, max=9, help="Deflate level; incompressible files are stored whatever the level."
        ),
    ] = 6,
    checksum: Annotated[
        bool,
        typer.Option("--checksum", help="Also print the bundle's sha256 (one more hash pass)."),
    ] = False,
    no_rehearse: Annotated[
        bool,
        typer.Option("--no-rehearse", help="Skip the upgrade/downgrade/upgrade rehearsal of migrations."),
    ] = False,
    installer: Annotated[
        Path | None,
        typer.Option(
            "--installer",
            help="Frozen bundle-install to embed as bin/bundle-install "
            f"(default: {DEFAULT_INSTALLER} if it exists; build it with scripts/freeze-installer).",
        ),
    ] = None,
    no_installer: Annotated[
        bool,
        typer.Option(
            "--no-installer",
            envvar="JUMPKIT_NO_INSTALLER",
            help="Embed no installer: a DEVELOPMENT bundle (inspect says so). Env: JUMPKIT_NO_INSTALLER=1.",
        ),
    ] = False,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="zip, rpm (a bundle RPM for 'yum install': needs rpmbuild and an installer) or all.",
        ),
    ] = "zip",
    rpm_compression: Annotated[
        str, typer.Option("--rpm-compression", help="RPM payload: zstd (default), xz (rpm < 4.14) or gzip.")
    ] = "zstd",
    rpm_sign_key: Annotated[
        str | None,
        typer.Option(
            "--rpm-sign-key",
            "--gpg-key",
            envvar="JUMPKIT_RPM_SIGN_KEY",
            help="GPG key (id or e-mail) to sign the RPM with rpmsign (for gpgcheck and rpm -K). "
            "Env: JUMPKIT_RPM_SIGN_KEY.",
        ),
    ] = None,
    delta: Annotated[
        str,
        typer.Option(
            "--delta",
            help="auto: ship each changed file as a binary patch of its from-release version "
            "(zstd --patch-from, or bsdiff for native code) where that is at most 80% of the file "
            "deflated whole; the bundle becomes format 2 and applies only to managers holding the "
            "exact old files. none: whole files only (format 1, applies over drift with --accept-drift).",
        ),
    ] = "auto",
    json_out: JsonOpt = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    """Build the bundle of one jump (when no sub-command is given)."""
    if version:
        _version()
        raise typer.Exit()
    if ctx.invoked_subcommand is not None:
        return
    if frm is None or to is None:
        err.print(ctx.get_help())
        err.print("\nbundle-build: --from and --to are required to build")
        raise typer.Exit(2)
    if fmt not in ("zip", "rpm", "all"):
        err.print(f"bundle-build: --format {fmt!r}: one of zip, rpm, all")
        raise typer.Exit(2)
    if delta not in ("auto", "none"):
        err.print(f"bundle-build: --delta {delta!r}: one of auto, none")
        raise typer.Exit(2)
    if key is None and not unsigned:
        err.print("bundle-build: no signing key: pass --key FILE (see 'bundle-build keygen') or --unsigned")
        raise typer.Exit(2)
    from builder.spec import load_product
    from installer.errors import NoPath
    from installer.graph import plan_chain

    try:
        prod = load_product(specs, product)
        chain = [(frm, to)]
        if (frm, to) not in prod.jump_files():
            try:
                chain = plan_chain(prod.graph(), frm, to)
            except NoPath as e:
                defined = ", ".join(f"{a} -> {b}" for a, b in prod.graph().jumps) or "none"
                raise UnknownJumpError(
                    f"{prod.name} has no jump {frm} -> {to} and no chain of jumps ({e.message}); "
                    f"defined: {defined}"
                ) from e
            if not json_out:
                err.print(
                    f"bundle-build: no direct jump {frm} -> {to}; "
                    f"building the chain of {len(chain)} bundles: "
                    + ", ".join(f"{a} -> {b}" for a, b in chain)
                    + " (apply them together: bundle-install apply B1 B2 ...)"
                )
        frozen = _installer(installer, no_installer, json_out)
        if fmt != "zip" and frozen is None:
            raise BuildError(
                "an RPM runs the bundle's installer in %posttrans: pass --installer (or freeze one)"
            )
    except JumpkitError as e:
        _fail(e, json_out, debug)
    docs = []
    for a, b in chain:
        docs.append(
            _build_one(
                specs, product, a, b, out, key=None if unsigned else key, level=level, checksum=checksum,
                rehearse=not no_rehearse, installer=frozen, fmt=fmt, rpm_compression=rpm_compression,
                rpm_sign_key=rpm_sign_key, json_out=json_out, debug=debug, delta=delta == "auto",
            )
        )  # fmt: skip
    if json_out:
        print(json.dumps(docs[0] if len(docs) == 1 else {"ok": True, "chain": docs}))
    # The process ends here: the manifests still referenced hold no cycles, so keep the
    # interpreter's final collection from walking them (~0.1 s for 24k files).
    gc.freeze()


def _build_one(
    specs: Path,
    product: str | None,
    frm: str,
    to: str,
    out: Path,
    *,
    key: Path | None,
    level: int,
    checksum: bool,
    rehearse: bool,
    installer: FrozenInstaller | None,
    fmt: str,
    rpm_compression: str,
    rpm_sign_key: str | None,
    json_out: bool,
    debug: bool,
    delta: bool = True,
) -> dict[str, Any]:
    """Build one jump's bundle (and RPM); print the human summary; return the JSON one."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from builder.build import build_bundle
    from builder.rpm import build_rpm
    from builder.spec import load_product

    unsigned = key is None
    frozen = installer
    show = not json_out and sys.stderr.isatty()
    try:
        with Progress(
            "building",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=True,
            disable=not show,
        ) as bar:
            task = bar.add_task("build", total=None)
            result = build_bundle(
                specs,
                product,
                frm,
                to,
                out,
                key=key,
                level=level,
                checksum=checksum,
                rehearse=rehearse,
                installer=frozen,
                progress=lambda n: bar.advance(task, n),
                delta=delta,
            )
        rpm = None
        if fmt in ("rpm", "all"):
            prod = load_product(specs, product)
            rpm = build_rpm(
                result.path,
                result.manifest,
                prod.spec.package,
                prod.spec.summary,
                out,
                compression=rpm_compression,
                sign_key=rpm_sign_key,
            )
            if fmt == "rpm":
                result.path.unlink()
    except JumpkitError as e:
        _fail(e, json_out, debug)
    m = result.manifest
    patched = {
        "files": len(m.deltas()),
        "patch_bytes": sum(f.delta.size for f in m.deltas() if f.delta),
        "whole_deflated_bytes": result.delta_whole_bytes,
        "whole_bytes": sum(f.size for f in m.deltas()),
    }
    zip_left = fmt != "rpm"  # --format rpm: the ZIP travels inside the RPM only
    doc = {
        "ok": True,
        "bundle": str(result.path) if zip_left else None,
        "sha256": result.sha256,
        "size": result.size,
        "files": len(m.files),
        "removed": len(m.removed),
        "signed": not unsigned,
        "installer": m.installer.version if m.installer else None,
        "development": m.development,
        "seconds": round(result.seconds, 3),
        "format": m.format,
        "delta": patched,
        "rpm": None
        if rpm is None
        else {
            "path": str(rpm.path),
            "name": rpm.name,
            "version": rpm.version,
            "release": rpm.release,
            "signed": rpm.signed,
        },
    }
    if not json_out:
        if zip_left:
            print(
                f"{result.path}  {result.size} bytes" + (f"  sha256 {result.sha256}" if result.sha256 else "")
            )
        elif rpm is not None:
            size = rpm.path.stat().st_size
            print(f"{rpm.path}  {size} bytes (it carries {result.path.name}; no ZIP is left in {out})")
        print(
            f"  {len(m.files)} files, {len(m.removed)} removed, {'signed' if not unsigned else 'UNSIGNED'}, "
            + (f"installer {m.installer.version}, " if m.installer else "DEVELOPMENT bundle (no installer), ")
            + f"{result.seconds:.2f}s"
        )
        if patched["files"]:
            print(
                f"  {patched['files']} file(s) as patches: {patched['patch_bytes']} bytes instead of "
                f"{patched['whole_deflated_bytes']} deflated whole (format {m.format}: the manager needs "
                "the exact old files; --delta none ships them whole)"
            )
        if rpm is not None:
            print(
                f"{rpm.path if zip_left else '  RPM:'}  "
                f"{'GPG-signed' if rpm.signed else 'unsigned (pass --rpm-sign-key for gpgcheck)'}"
            )
    return doc


def _installer(path: Path | None, none: bool, quiet: bool) -> FrozenInstaller | None:
    """The installer to embed: --installer, else the one this install carries (a platform
    wheel's), else a checkout's dist/bundle-install when it exists."""
    from builder.frozen import probe_installer

    if none:
        return None
    if path is None:
        path = packaged_installer() or (DEFAULT_INSTALLER if DEFAULT_INSTALLER.is_file() else None)
        if path is None:
            if not quiet:
                err.print(
                    f"bundle-build: no frozen installer (this install carries none, and there is no "
                    f"{DEFAULT_INSTALLER}; scripts/freeze-installer builds it): "
                    "building a DEVELOPMENT bundle without an installer"
                )
            return None
    return probe_installer(path)


@app.command("test-jumps")
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
    try:
        prod = load_product(specs, product)
        if (why := tj.backend_problem(prod, backend, fmt)) is not None:
            raise UsageError(why)
        todo = tj.cases(prod, frm, to, everything, fmt)
        frozen = _installer(installer_path, False, True)
        if frozen is None:
            raise BuildError("test-jumps tests what ships: it needs the frozen installer "
                             "(scripts/freeze-installer, or --installer)")  # fmt: skip
    except JumpkitError as e:  # NoPath too: exit 4, as plan's
        _fail(e, json_out, False)
    t0 = time.monotonic()
    live = not json_out and sys.stdout.isatty()
    with tempfile.TemporaryDirectory(prefix="jk-test-jumps-") as tmp:
        runner = tj.Runner(prod, specs, frozen, Path(tmp), fmt)
        try:
            runner.build(
                {j for c in todo for j in c.steps}, lambda what: None if json_out else err.print(what)
            )
        except JumpkitError as e:
            _fail(e, json_out, False)
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


@app.command("lint")
def lint_cmd(
    product: Annotated[
        str | None, typer.Option("--product", help="Product under --specs (default: the only one).")
    ] = None,
    specs: Annotated[
        Path, typer.Option("--specs", help="Specs directory (or one product's directory).")
    ] = Path("specs"),
    json_out: JsonOpt = False,
) -> None:
    """Check a product's specs and every jump of it, each problem on its file:line.

    Errors (a build of that jump refuses them too): unknown keys and values, with "did
    you mean"; versions YAML reads as numbers (to: 1.10 is 1.1); rules: without policy:
    rewrite; hook, job and component files that do not exist; configs with no template in
    the to-release; an include pattern that matches nothing in the to-release; files that
    differ between the two releases that no include carries and no exclude leaves out.
    Warnings: rewrite with no rules; exclude, modes and remove entries that match nothing.

    Exit 0 with warnings only, 2 when there is an error. Builds nothing."""
    from builder.lint import lint_product

    try:
        problems = lint_product(specs, product)
    except JumpkitError as e:
        _fail(e, json_out, False)
    errors = sum(1 for p in problems if p.severity == "error")
    warnings = len(problems) - errors
    if json_out:
        print(json.dumps({
            "ok": errors == 0, "errors": errors, "warnings": warnings,
            "problems": [{"file": str(p.file), "line": p.line, "severity": p.severity, "message": p.message}
                         for p in problems],
        }))  # fmt: skip
    else:
        for p in problems:
            print(p.render())
        print(f"{errors} error(s), {warnings} warning(s)" if problems else "no problems found")
    if errors:
        raise typer.Exit(2)


@app.command("plan")
def plan_cmd(
    frm: Annotated[str, typer.Option("--from", help="The installed version.")],
    to: Annotated[str, typer.Option("--to", help="The version to reach.")],
    product: Annotated[
        str | None, typer.Option("--product", help="Product under --specs (default: the only one).")
    ] = None,
    specs: Annotated[Path, typer.Option("--specs", help="Specs directory.")] = Path("specs"),
    json_out: JsonOpt = False,
) -> None:
    """The chain of jumps from --from to --to: the fewest jumps that honour the product's
    version policy and its required stops. When there is none, one line says why (a
    downgrade, no jump leaving a version, a required stop no jump reaches) and lists the
    nearest versions that can be reached. Exit 4 when there is no chain. Builds nothing."""
    from rich.console import Console

    from builder.spec import load_product
    from installer.errors import NoPath
    from installer.graph import plan_chain

    try:
        prod = load_product(specs, product)
        graph = prod.graph()
        chain = plan_chain(graph, frm, to)
    except NoPath as e:
        near = ", ".join(e.reachable) or "none"
        if json_out:
            print(
                json.dumps({"ok": False, "exit": e.exit_code, "error": e.message, "reachable": e.reachable})
            )
        else:
            err.print(
                f"bundle-build: no upgrade path {frm} -> {to}: {e.message}; reachable from {frm}: {near}"
            )
        raise typer.Exit(e.exit_code) from e
    except JumpkitError as e:
        _fail(e, json_out, False)
    reasons = {(x.from_version, x.to_version): x.reason for x in graph.policy.exceptions}
    stops = [b for _, b in chain if b in graph.required_stops]
    if json_out:
        print(json.dumps({
            "ok": True, "product": prod.name, "from": frm, "to": to, "required_stops": stops,
            "chain": [{"from": a, "to": b, "bundle": f"{prod.name}-{a}-to-{b}.zip",
                       "exception": reasons.get((a, b))} for a, b in chain],
        }))  # fmt: skip
        return
    out_ = Console(highlight=False, soft_wrap=True)
    out_.print(
        f"{prod.name} {frm} -> {to}: {len(chain)} jump{'s' if len(chain) > 1 else ''}"
        + (f" (required stop{'s' if len(stops) > 1 else ''} {', '.join(stops)})" if stops else "")
    )
    for i, (a, b) in enumerate(chain, 1):
        why = reasons.get((a, b))
        out_.print(f"  {i}. {a} -> {b}" + (f"   policy exception: {why}" if why else ""))


repo_app = typer.Typer(
    pretty_exceptions_enable=False,
    help="A TUF repository of bundles on s3://BUCKET/PREFIX, file://DIR (air gap) or https:// "
    "(read-only). S3 endpoint, region and credentials come from the usual AWS environment "
    "(AWS_ENDPOINT_URL for MinIO, Ceph RGW or a test server).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(repo_app, name="repo")
app.add_typer(rollout_app, name="rollout")
RepoOpt = Annotated[str, typer.Option("--repo", help="Repository URL: s3://BUCKET/PREFIX or file:///DIR.")]
KeysOpt = Annotated[Path, typer.Option("--keys", help="Directory of the repository's signing keys.")]


def _role_ints(items: list[str] | None, what: str) -> dict[str, int]:
    out = {}
    for item in items or []:
        role, _, n = item.partition("=")
        if role not in ("root", "targets", "snapshot", "timestamp") or not n.isdigit() or int(n) < 1:
            err.print(f"bundle-build: {what} {item!r}: want ROLE=N (root, targets, snapshot, timestamp)")
            raise typer.Exit(2)
        out[role] = int(n)
    return out


@repo_app.command("init")
def repo_init(
    repo: RepoOpt,
    keys: KeysOpt,
    threshold: Annotated[
        list[str] | None,
        typer.Option("--threshold", help="ROLE=N signatures required (default 1 each); N keys are made."),
    ] = None,
    expires: Annotated[
        list[str] | None,
        typer.Option(
            "--expires",
            help="ROLE=DAYS validity of each signature "
            "(defaults root=365 targets=90 snapshot=7 timestamp=1).",
        ),
    ] = None,
    create_bucket: Annotated[
        bool, typer.Option("--create-bucket", help="Create the s3:// bucket when it does not exist.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create the signing keys (ed25519) and version 1 of root, targets, snapshot and
    timestamp. KEYS/root.json is what managers pin at <root>/etc/jumpkit/tuf/root.json
    (bundle-install trust pin-root). The repository is checked before any key is made: an
    s3:// bucket must exist (or pass --create-bucket); a rerun after an init that was cut
    off continues with the keys it left."""
    from builder.tufrepo import Repo
    from installer.store import open_store

    try:
        r = Repo.init(
            open_store(repo), keys, _role_ints(threshold, "--threshold"), _role_ints(expires, "--expires"),
            create_bucket=create_bucket,
        )  # fmt: skip
    except JumpkitError as e:
        _fail(e, json_out, False)
    doc = {
        "ok": True,
        "repo": repo,
        "keys": str(keys),
        "root": str(keys / "root.json"),
        "expiry_days": r.expiry,
    }
    print(json.dumps(doc) if json_out else f"{repo}: initialised; pin {keys / 'root.json'} on managers")


@repo_app.command("refresh")
def repo_refresh(repo: RepoOpt, keys: KeysOpt, json_out: JsonOpt = False) -> None:
    """Re-sign the timestamp (run from cron well within its expiry: an expired timestamp is
    how managers detect a frozen repository)."""
    from builder.tufrepo import Keys, Repo
    from installer.store import open_store

    try:
        v = Repo(open_store(repo), Keys.load(keys, ["timestamp"])).refresh()
    except JumpkitError as e:
        _fail(e, json_out, False)
    print(json.dumps({"ok": True, "timestamp_version": v}) if json_out else f"timestamp version {v}")


@repo_app.command("rotate")
def repo_rotate(
    repo: RepoOpt,
    keys: KeysOpt,
    role: Annotated[str, typer.Option("--role", help="targets, snapshot or timestamp.")],
    json_out: JsonOpt = False,
) -> None:
    """Replace a role's key: new root version (signed by the root key) listing the new key,
    the role re-signed with it; the old key file is kept as <role>.key.retired."""
    from builder.tufrepo import Keys, Repo
    from installer.store import open_store

    try:
        keyid = Repo(open_store(repo), Keys.load(keys)).rotate(role)
    except JumpkitError as e:
        _fail(e, json_out, False)
    print(
        json.dumps({"ok": True, "role": role, "keyid": keyid}) if json_out else f"{role} key is now {keyid}"
    )


@repo_app.command("export")
def repo_export(
    repo: RepoOpt,
    to: Annotated[Path, typer.Option("--to", help="Directory to write (a file:// repository).")],
    json_out: JsonOpt = False,
) -> None:
    """Copy the current metadata and every target into a directory that can be carried to
    an offline site and served as file:///DIR."""
    from builder.tufrepo import Keys, Repo
    from installer.store import open_store

    try:
        n = Repo(open_store(repo), Keys(to, {})).export(to)
    except JumpkitError as e:
        _fail(e, json_out, False)
    print(json.dumps({"ok": True, "files": n, "dir": str(to)}) if json_out else f"{n} files into {to}")


@app.command()
def publish(
    bundles: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="Bundle ZIPs and RPMs.")],
    repo: RepoOpt,
    keys: KeysOpt,
    trust: Annotated[
        list[Path] | None, typer.Option("--trust", help="Check each bundle's signature with this public key.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Upload bundles as TUF targets (custom fields: product, from, to, format, sha256,
    version file) and re-sign targets, snapshot and timestamp."""
    from builder.inspect import inspect_bundle
    from builder.tufrepo import Keys, Repo
    from installer.signing import sha256_file
    from installer.store import open_store

    try:
        items = []
        for b in bundles:
            info = inspect_bundle(b, list(trust or []))
            m = info["manifest"]
            if trust and not info["signature"].get("verified_by"):
                raise BuildError(f"{b}: not signed by a trusted key")
            items.append((b, {"product": m["product"], "from": m["from_version"], "to": m["to_version"],
                              "format": "rpm" if info.get("rpm") else "zip", "sha256": sha256_file(b)[0],
                              "version_file": m["version_file"]}))  # fmt: skip
        names = Repo(open_store(repo), Keys.load(keys, ["targets", "snapshot", "timestamp"])).publish(items)
    except JumpkitError as e:
        _fail(e, json_out, False)
    print(
        json.dumps({"ok": True, "published": names})
        if json_out
        else "\n".join(f"published {n}" for n in names)
    )


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Directory for the key pair.")] = Path("keys"),
    name: Annotated[str, typer.Option("--name", help="Base name: <name>.key and <name>.pub.")] = "signing",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing key.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write an ed25519 key pair: <name>.key (mode 0600, keep secret) and <name>.pub (install
    on managers under /etc/jumpkit/trusted-keys/)."""
    from builder.keys import keygen as make_key

    try:
        priv, pub, kid = make_key(out, name, overwrite=force)
    except JumpkitError as e:
        _fail(e, json_out, False)
    if json_out:
        print(json.dumps({"ok": True, "private": str(priv), "public": str(pub), "keyid": kid}))
    else:
        print(f"private key {priv} (0600)\npublic key  {pub}\nkey id      {kid}")


@app.command()
def inspect(
    bundle: Path,
    trust: Annotated[
        list[Path] | None, typer.Option("--trust", help="Verify the signature against these public keys.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a bundle's manifest: jump, files, configs and policies, services, checks, signature."""
    from builder.inspect import describe, inspect_bundle

    try:
        info = inspect_bundle(bundle, list(trust or []))
    except JumpkitError as e:
        _fail(e, json_out, False)
    if json_out:
        print(json.dumps(info, indent=2))
    else:
        print("\n".join(describe(info)))


@app.command()
def sandbox(
    version: Annotated[str, typer.Option("--version", help="Release to install.")],
    root: Annotated[Path, typer.Option("--root", help="Empty directory to install into.")],
    product: Annotated[str | None, typer.Option("--product", help="Product under --specs.")] = None,
    specs: Annotated[Path, typer.Option("--specs", help="Specs directory.")] = Path("specs"),
    trust: Annotated[
        list[Path] | None, typer.Option("--trust", help="Public key to install in the root's trust store.")
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Operator edit after install: section.key=value in the product's INI configs."
        ),
    ] = None,
) -> None:
    """Lay out a release as a fresh install under a sandbox root (demo and tests): files,
    rendered configs, data, trust store and a supervisord config. Never on a real manager."""
    from builder.sandbox import lay_out, start_hint
    from builder.spec import load_product

    overrides = {}
    for item in setting or []:
        k, sep, v = item.partition("=")
        if not sep:
            err.print(f"bundle-build: --set wants section.key=value, got {item!r}")
            raise typer.Exit(2)
        overrides[k] = v
    try:
        prod = load_product(specs, product)
        lay_out(prod, version, root, overrides=overrides, trust=list(trust or []))
    except JumpkitError as e:
        _fail(e, False, False)
    print(f"{root}: {version} laid out")
    if (hint := start_hint(prod, root)) is not None:
        print(f"start its services: {hint}")


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up as on Ctrl-C
    if sys.argv[1:] == ["--version"]:  # typer would first convert all 20 options (0.2 s)
        guard.run("bundle-build", _version, interrupted_code=1)
        return
    sys.argv[1:] = guard.hoisted(sys.argv[1:], app, GLOBAL_OPTIONS)
    guard.run("bundle-build", app, interrupted_code=1)


GLOBAL_OPTIONS = {"--debug": False}
"""Options of bundle-build itself that a subcommand also takes after its name."""


def _version() -> None:
    print(f"bundle-build {__version__}")
    if (clash := foreign_installer()) is not None:
        err.print(f"bundle-build: {clash}")


if __name__ == "__main__":
    main()
