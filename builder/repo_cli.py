"""``bundle-build repo ...`` and ``bundle-build publish``: a TUF repository of bundles;
the work is in :mod:`builder.tufrepo`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from builder.errors import BuildError
from builder.present import JsonOpt, err
from installer.errors import UsageError

repo_app = typer.Typer(
    pretty_exceptions_enable=False,
    help="A TUF repository of bundles on s3://BUCKET/PREFIX, file://DIR (air gap) or https:// "
    "(read-only). S3 endpoint, region and credentials come from the usual AWS environment "
    "(AWS_ENDPOINT_URL for MinIO, Ceph RGW or a test server).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
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

    r = Repo.init(
        open_store(repo), keys, _role_ints(threshold, "--threshold"), _role_ints(expires, "--expires"),
        create_bucket=create_bucket,
    )  # fmt: skip
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

    v = Repo(open_store(repo), Keys.load(keys, ["timestamp"])).refresh()
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

    keyid = Repo(open_store(repo), Keys.load(keys)).rotate(role)
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

    n = Repo(open_store(repo), Keys(to, {})).export(to)
    print(json.dumps({"ok": True, "files": n, "dir": str(to)}) if json_out else f"{n} files into {to}")


def publish(
    repo: RepoOpt,
    keys: KeysOpt,
    bundles: Annotated[
        list[Path] | None, typer.Argument(exists=True, dir_okay=False, help="Bundle ZIPs and RPMs.")
    ] = None,
    trust: Annotated[
        list[Path] | None, typer.Option("--trust", help="Check each bundle's signature with this public key.")
    ] = None,
    site: Annotated[
        Path | None,
        typer.Option(
            "--site",
            exists=True,
            file_okay=False,
            help="An upgrade-path site ('bundle-build site --repo URL') to upload to <repo>/site/, "
            "after the bundles.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Upload bundles as TUF targets (custom fields: product, from, to, format, sha256,
    version file) and re-sign targets, snapshot and timestamp; with --site, then upload
    the site's files to <repo>/site/ (plain files beside the metadata and targets, not TUF
    targets: the page is for people, the installer trusts only the metadata)."""
    from builder.inspect import inspect_bundle
    from builder.tufrepo import Keys, Repo
    from installer.signing import sha256_file
    from installer.store import open_store

    bundles = bundles or []
    if not bundles and site is None:
        raise UsageError("publish: name bundles, or a --site to upload")

    items = []
    for b in bundles:
        info = inspect_bundle(b, list(trust or []))
        m = info["manifest"]
        if trust and not info["signature"].get("verified_by"):
            raise BuildError(f"{b}: not signed by a trusted key")
        installer = m["installer"] or {}
        items.append((b, {"product": m["product"], "from": m["from_version"], "to": m["to_version"],
                          "format": "rpm" if info.get("rpm") else "zip", "sha256": sha256_file(b)[0],
                          "version_file": m["version_file"], "installer": installer.get("sha256"),
                          "installer_base": (installer.get("base") or {}).get("sha256")}))  # fmt: skip
    names = (
        Repo(open_store(repo), Keys.load(keys, ["targets", "snapshot", "timestamp"])).publish(items)
        if items
        else []
    )
    pages = upload_site(repo, site) if site is not None else []
    if json_out:
        print(json.dumps({"ok": True, "published": names, "site": pages}))
        return
    lines = [f"published {n}" for n in names]
    if site is not None:
        lines.append(f"site: {len(pages)} files to {repo.rstrip('/')}/site/")
    print("\n".join(lines))


def upload_site(repo: str, site: Path) -> list[str]:
    """Every file of ``site`` (written by ``bundle-build site``) to ``site/`` of the store."""
    from builder.sitewrite import MARKER
    from installer.store import open_store

    if not (site / MARKER).is_file():
        raise UsageError(f"--site {site} is not a site bundle-build wrote")
    store = open_store(repo)
    out = []
    for path in sorted(p for p in site.rglob("*") if p.is_file() and p.name != MARKER):
        rel = path.relative_to(site).as_posix()
        store.write(f"site/{rel}", path)
        out.append(f"site/{rel}")
    return out
