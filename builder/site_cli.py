"""``bundle-build site``: its command line; the work is in :mod:`builder.site` (what the
pages say) and :mod:`builder.sitewrite` (the pages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from builder.present import JsonOpt, err


def site_cmd(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the site into (replaced whole).")],
    product: Annotated[
        str | None, typer.Option("--product", help="Product under --specs (default: the only one).")
    ] = None,
    specs: Annotated[Path, typer.Option("--specs", help="Specs directory.")] = Path("specs"),
    dist: Annotated[
        Path, typer.Option("--dist", help="Built bundles (ZIP and RPM) to list and copy into the site.")
    ] = Path("dist"),
    repo: Annotated[
        str | None,
        typer.Option(
            "--repo",
            help="TUF repository (s3://, file://, https://) whose targets the download links point "
            "to: ../targets/<sha256>.<name>, as 'publish --site' places the site beside them.",
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url", help="Public URL of the repository, for links from a site served elsewhere."
        ),
    ] = None,
    results: Annotated[
        Path | None,
        typer.Option("--results", help="'bundle-build test-jumps --json' output: each jump's matrix."),
    ] = None,
    trust: Annotated[
        list[Path] | None,
        typer.Option(
            "--trust", metavar="KEY", help="List only bundles signed by this public key (repeatable)."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the product's upgrade-path site: static HTML, CSS and a little JavaScript,
    no server, no network (it works from file://, a bucket or a CDN).

    index.html: pick the installed and the target version and see the path (required
    stops, the jumps in order), and for each jump its bundles (file name, size, sha256,
    download link, the command that checks it), the estimated outage and a link to its
    page; the jump graph as SVG (versions, jumps, required stops, policy exceptions, jumps
    the policy forbids); every jump with its bundles, component changes and test result.
    jumps/<from>-to-<to>.html: release notes (the jump spec's notes), bundles, what changes
    in the components (from each release's SBOM), and the test-jumps matrix of --results.
    sbom/: each release's CycloneDX SBOM. bundles/: the bundles of --dist, unless --repo
    has them.

    Every path is planned by the same planner as 'bundle-build plan'. --out is written
    beside and renamed into place; a directory that is not an earlier site is refused.
    Exit 2 for bad specs, --out or --results; 1 or 4 when the repository cannot be read
    (as publish)."""
    from builder import site, sitewrite
    from builder.spec import load_product

    prod = load_product(specs, product)
    model = site.gather(
        prod, dist=dist, repo=repo, base_url=base_url, results=results, trust=list(trust or [])
    )
    files = sitewrite.write(model, out)
    for p in model.problems:
        err.print(f"bundle-build: site: {p}")
    bundles = sum(len(j.downloads) for j in model.jumps.values())
    if json_out:
        doc = {"ok": True, "out": str(out), "files": files, "versions": model.versions,
               "jumps": len(model.jumps), "bundles": bundles, "problems": model.problems}  # fmt: skip
        print(json.dumps(doc))
        return
    print(f"{out}/index.html: {prod.name}, {len(model.versions)} versions, {len(model.jumps)} jumps, "
          f"{bundles} bundle file(s), {len(files)} files")  # fmt: skip
    for f in files:
        print(f"  {f}")
