"""``bundle-build``: the release engineer's command line. It only presents; the work is in
:mod:`builder.build`."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from builder import __version__
from builder.present import JsonOpt, err
from builder.repo_cli import publish, repo_app
from builder.resources import DEFAULT_INSTALLER, foreign_installer
from builder.rollout_cli import rollout_app
from builder.site_cli import site_cmd
from builder.testjumps_cli import test_jumps_cmd
from installer import entry

if TYPE_CHECKING:
    from builder import release

# The work's modules (pydantic models, the build, rpm, the graph) are imported by the
# command that needs them: ``--version``, ``--help`` and completion then start in ~0.1 s
# instead of 0.75 s (typer and rich are what is left).

EXIT_CODES = (
    "Exit codes: 0 ok; 1 build failed (also test-jumps when a cell fails); 2 bad spec or usage; "
    "3 bad bundle (inspect, publish); 4 no upgrade path (plan, test-jumps), the repository cannot "
    "be read or written (publish, repo, site), a precondition on a host (rollout); 5 a rollout stopped "
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
    solid: Annotated[
        str,
        typer.Option(
            "--solid",
            metavar="auto|on|none",
            help="on: payload files, patches and config bases of at most 64 KiB travel together in "
            "zstd solid members (solid/NNN, 8 MiB of files each) instead of one ZIP entry each: no "
            "entry headers, compressed with their neighbours; the bundle becomes format 4. auto (the "
            "default): on for a release bundle whose installer (and a patch form's base) reads format 4; "
            "a development bundle (--no-installer) stays one entry per member, readable by older "
            "installers. none: one ZIP entry per member.",
        ),
    ] = "auto",
    sbom: Annotated[
        str,
        typer.Option(
            "--sbom",
            metavar="auto|on|none",
            help="on: ship the to-release's CycloneDX SBOM (sbom/<product>-<to>.cdx.json) and the "
            "jump's component changes in the signed manifest (format 5; 'bundle-build plan' and "
            "'inspect' print the changes). auto (the default): on where the bundle's installer (and a "
            "patch form's base) reads format 5, as --solid. none: neither.",
        ),
    ] = "auto",
    installer_base: Annotated[
        str,
        typer.Option(
            "--installer-base",
            metavar="PATH|URL|auto|none",
            help="Also write <bundle>.installer-patch.zip, whose installer is a zstd patch against the "
            "installer a manager at the from-version keeps: the one in the from-version's release "
            "bundle (a bundle ZIP or a frozen bundle-install, by path or http(s) URL; auto: "
            "<product>-*-to-<from>.zip in --out, else among the targets of --repo). A few hundred "
            "bytes when jumpkit did not change, "
            "instead of ~23 MB; it applies only on a manager that keeps that base (others are refused "
            "in pre-flight and the RPM's %pre, naming the full bundle). Format 3.",
        ),
    ] = "none",
    repo: Annotated[
        str | None,
        typer.Option(
            "--repo",
            metavar="URL",
            help="The TUF repository this release is published to (s3://BUCKET/PREFIX, file:///DIR or "
            "https://...): --installer-base auto also looks among its targets for the from-version's "
            "full release bundle (downloaded once into the build cache, checked against the targets "
            "metadata).",
        ),
    ] = None,
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
    for name, value in (("--solid", solid), ("--sbom", sbom)):
        if value not in ("auto", "on", "none"):
            err.print(f"bundle-build: {name} {value!r}: one of auto, on, none")
            raise typer.Exit(2)
    if key is None and not unsigned:
        err.print("bundle-build: no signing key: pass --key FILE (see 'bundle-build keygen') or --unsigned")
        raise typer.Exit(2)
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from builder import release
    from builder.frozen import choose_installer
    from builder.spec import load_product

    prod = load_product(specs, product)
    chain = release.chain_of(prod, frm, to)
    if chain != [(frm, to)] and not json_out:
        err.print(
            f"bundle-build: no direct jump {frm} -> {to}; building the chain of {len(chain)} bundles: "
            + ", ".join(f"{a} -> {b}" for a, b in chain)
            + " (apply them together: bundle-install apply B1 B2 ...)"
        )
    note = None if json_out else lambda why: err.print(f"bundle-build: {why}")
    options = release.BuildOptions(
        out, key=None if unsigned else key, formats=fmt, level=level, checksum=checksum,
        rehearse=not no_rehearse, installer=choose_installer(installer, none=no_installer, note=note),
        delta=delta == "auto", solid={"on": True, "none": False}.get(solid), rpm_compression=rpm_compression,
        sbom={"on": True, "none": False}.get(sbom),
        rpm_sign_key=rpm_sign_key, installer_base=installer_base, repo=repo,
    )  # fmt: skip
    show = not json_out and sys.stderr.isatty()
    columns = ("building", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True, disable=not show) as bar:
        task = bar.add_task("build", total=None)
        built = release.build(
            prod, chain, options, progress=lambda n: bar.advance(task, n),
            on_built=None if json_out else lambda b: print("\n".join(_summary(b, out))),
        )  # fmt: skip
    if json_out:
        docs = [b.to_json() for b in built]
        print(json.dumps(docs[0] if len(docs) == 1 else {"ok": True, "chain": docs}))
    # The process ends here: the manifests still referenced hold no cycles, so keep the
    # interpreter's final collection from walking them (~0.1 s for 24k files).
    gc.freeze()


def _summary(built: release.Built, out: Path) -> list[str]:
    """The human summary of one built jump."""
    r, m, rpm = built.result, built.result.manifest, built.rpm
    lines = []
    if built.keeps_zip:
        lines.append(f"{r.path}  {r.size} bytes" + (f"  sha256 {r.sha256}" if r.sha256 else ""))
    elif rpm is not None:
        size = rpm.path.stat().st_size
        lines.append(f"{rpm.path}  {size} bytes (it carries {r.path.name}; no ZIP is left in {out})")
    lines.append(
        f"  {len(m.files)} files, {len(m.removed)} removed, {'signed' if built.signed else 'UNSIGNED'}, "
        + (f"installer {m.installer.version}, " if m.installer else "DEVELOPMENT bundle (no installer), ")
        + f"{r.seconds:.2f}s"
    )
    patched = built.delta_stats()
    if patched["files"]:
        lines.append(
            f"  {patched['files']} file(s) as patches: {patched['patch_bytes']} bytes instead of "
            f"{patched['whole_deflated_bytes']} deflated whole (the manager needs the exact old "
            "files; --delta none ships them whole)"
        )
    if m.solids:
        carried = sum(len(s.members) for s in m.solids)
        lines.append(
            f"  {carried} small member(s) in {len(m.solids)} solid member(s): "
            f"{sum(s.raw_size for s in m.solids)} bytes in {sum(s.size for s in m.solids)} "
            f"(format {m.format}; --solid none keeps one archive entry each)"
        )
    if m.sbom is not None:
        from installer.sbom import summary

        lines.append(f"  {m.sbom}: {summary(m.changes)} since {m.from_version}")
    if rpm is not None:
        signed = "GPG-signed" if rpm.signed else "unsigned (pass --rpm-sign-key for gpgcheck)"
        lines.append(f"{rpm.path if built.keeps_zip else '  RPM:'}  {signed}")
    patch = built.to_json()["installer_patch"]
    if patch is not None and patch["bundle"] is None and "why_not" in patch:
        lines.append(f"  no installer-patch form: {patch['why_not']}")
    elif patch is not None:
        where = patch["bundle"] or (patch["rpm"] or {}).get("path")
        lines.append(
            f"{where}  {patch['size']} bytes: the installer as a {patch['patch_bytes']}-byte patch against "
            f"bundle-install {patch['base']['version']} (sha256 {patch['base']['sha256'][:12]}); only for "
            "managers that keep that one"
        )
    return lines


app.command("test-jumps")(test_jumps_cmd)
app.command("site")(site_cmd)
app.command()(publish)
app.add_typer(repo_app, name="repo")
app.add_typer(rollout_app, name="rollout")


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

    problems = lint_product(specs, product)
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
    version policy and its required stops, and what each changes in the manager's
    components (Python distributions, RPMs, versioned native libraries, Ansible
    collections: '~ django 5.1.3 -> 5.1.4', '+ name 1.2.0', '- name 1.0'). When there is no
    chain, one line says why (a downgrade, no jump leaving a version, a required stop no
    jump reaches) and lists the nearest versions that can be reached. Exit 4 when there is
    no chain. Builds nothing."""
    from rich.console import Console

    from builder.sbom import chain_changes
    from builder.spec import load_product
    from installer.errors import NoPath
    from installer.graph import plan_chain
    from installer.sbom import summary

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
    reasons = {(x.from_version, x.to_version): x.reason for x in graph.policy.exceptions}
    stops = [b for _, b in chain if b in graph.required_stops]
    changes = chain_changes(prod, chain)
    if json_out:
        print(json.dumps({
            "ok": True, "product": prod.name, "from": frm, "to": to, "required_stops": stops,
            "chain": [{"from": a, "to": b, "bundle": f"{prod.name}-{a}-to-{b}.zip",
                       "exception": reasons.get((a, b)),
                       "changes": None if (c := changes[(a, b)]) is None else [x.model_dump() for x in c]}
                      for a, b in chain],
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
        found = changes[(a, b)]
        if found is None:
            out_.print("     components: a release of this jump has no directory under the specs")
        else:
            out_.print(f"     components: {summary(found)}")
            for change in found:
                out_.print(f"       {change.line}")


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

    priv, pub, kid = make_key(out, name, overwrite=force)
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

    info = inspect_bundle(bundle, list(trust or []))
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
    prod = load_product(specs, product)
    lay_out(prod, version, root, overrides=overrides, trust=list(trust or []))
    print(f"{root}: {version} laid out")
    if (hint := start_hint(prod, root)) is not None:
        print(f"start its services: {hint}")


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up as on Ctrl-C
    if sys.argv[1:] == ["--version"]:  # typer would first convert all 20 options (0.2 s)
        entry.run("bundle-build", _version, interrupted_code=1)
        return
    sys.argv[1:] = entry.hoisted(sys.argv[1:], app, GLOBAL_OPTIONS)
    entry.run("bundle-build", app, interrupted_code=1)


GLOBAL_OPTIONS = {"--debug": False}
"""Options of bundle-build itself that a subcommand also takes after its name."""


def _version() -> None:
    print(f"bundle-build {__version__}")
    if (clash := foreign_installer()) is not None:
        err.print(f"bundle-build: {clash}")


if __name__ == "__main__":
    main()
