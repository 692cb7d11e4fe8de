"""What the upgrade-path site says (``bundle-build site``), gathered from the specs, the
built bundles, a TUF repository's targets and a ``test-jumps --json`` run; the pages are
written by :mod:`builder.sitewrite`.

Every path between two versions is planned here, by the planner ``plan`` and the
installer use (:func:`installer.graph.plan_chain`), and handed to the page as data: the
page's script only looks answers up, so the site can never disagree with the tools.

Bundles come from a directory of built bundles (``--dist``) and from the repository's
targets (``--repo``): a bundle in the directory is read (signature checked with
``--trust``), and its manifest gives the format, the file count and the outage estimate;
a target gives the download link, from the site's place beside the repository (``publish
--site`` uploads it to ``<repo>/site/``) or under ``--base-url``. A bundle found only in
the directory is copied into the site (``bundles/``), so every link resolves.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import BuildError, SpecError
from builder.sbom import chain_changes
from builder.spec import Product, parses
from installer.errors import JumpkitError, NoPath, UsageError
from installer.format import Manifest
from installer.graph import Graph, plan_chain, violations
from installer.runspec import RENAME_SECONDS, RESTART_CAP
from installer.sbom import ComponentChange, summary
from installer.signing import sha256_file
from installer.version import Version

MAX_RESULTS = 16 * 1024 * 1024


@dataclass
class Download:
    """One bundle file of a jump."""

    kind: str  # zip or rpm
    name: str
    size: int
    sha256: str
    href: str
    """Relative to the site's root, or absolute (``--base-url``)."""
    source: Path | None = None
    """A local file the site copies to ``href`` (None: the link points elsewhere)."""

    @property
    def verify(self) -> str:
        """The command an operator runs before applying it."""
        if self.kind == "rpm":
            return f"rpm -K {self.name}"
        return f"bundle-install verify {self.name}"


@dataclass
class JumpInfo:
    """One jump of the product, as its page shows it."""

    frm: str
    to: str
    notes: str | None = None
    exception: str | None = None
    broken: list[str] = field(default_factory=list)
    """Why the policy forbids it (a jump file the planner never uses)."""
    changes: tuple[ComponentChange, ...] | None = None
    downloads: list[Download] = field(default_factory=list)
    outage: float | None = None
    outage_basis: str | None = None
    format: int | None = None
    files: int | None = None
    cases: list[dict[str, Any]] = field(default_factory=list)
    """test-jumps cases of this jump (alone or in a chain through it)."""

    @property
    def key(self) -> str:
        return f"{self.frm}->{self.to}"

    @property
    def slug(self) -> str:
        return f"{self.frm}-to-{self.to}"

    @property
    def summary(self) -> str:
        return "components unknown" if self.changes is None else summary(self.changes)

    @property
    def tested(self) -> str | None:
        """``passed`` when every test-jumps case through the jump passed, ``failed`` when
        one failed, None when none ran."""
        if not self.cases:
            return None
        return "passed" if all(v == "pass" for c in self.cases for v in c["cells"].values()) else "failed"


@dataclass
class SiteModel:
    """Everything the pages show."""

    product: Product
    versions: list[str]
    jumps: dict[tuple[str, str], JumpInfo]
    paths: dict[str, dict[str, dict[str, Any]]]
    releases: list[str]
    """Versions with a release tree (their SBOM is on the site)."""
    cells: list[str] = field(default_factory=list)
    results_seconds: float | None = None
    problems: list[str] = field(default_factory=list)
    """What could not be used (a bundle that does not read), one line each."""


def gather(
    product: Product,
    *,
    dist: Path | None,
    repo: str | None = None,
    base_url: str | None = None,
    results: Path | None = None,
    trust: list[Path] | None = None,
) -> SiteModel:
    """The site's model.

    Raises:
        SpecError: the product's specs are invalid. UsageError: ``results`` is not a
            test-jumps JSON document. BuildError, StoreError: the repository cannot be read
            (as ``publish`` says it).
    """
    graph = product.graph()
    releases = _release_versions(product)
    versions = sorted({v for j in graph.jumps for v in j} | set(releases), key=Version.parse)
    jumps = {j: _jump(product, graph, j) for j in graph.jumps}
    for j, changes in chain_changes(product, list(graph.jumps)).items():
        jumps[j].changes = changes
    model = SiteModel(product, versions, jumps, _paths(graph, versions), releases)
    if dist is not None and dist.is_dir():
        _local_bundles(model, dist, trust or [])
    if repo is not None:
        _repo_targets(model, repo, base_url)
    if results is not None:
        _results(model, results)
    return model


def _release_versions(product: Product) -> list[str]:
    top = product.dir / product.spec.releases
    found = [p.name for p in top.iterdir() if p.is_dir()] if top.is_dir() else []
    return sorted((v for v in found if parses(v)), key=Version.parse)


def _jump(product: Product, graph: Graph, j: tuple[str, str]) -> JumpInfo:
    info = JumpInfo(*j)
    info.exception = next(
        (x.reason for x in graph.policy.exceptions if (x.from_version, x.to_version) == j), None
    )
    info.broken = violations(graph.policy, *j)
    if not info.broken:  # lint names a broken jump file; the site still shows the others
        with contextlib.suppress(SpecError):
            info.notes = product.jump(*j).notes
    return info


def _paths(graph: Graph, versions: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """For every installed version and every other version: the chain, or why there is none."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for a in versions:
        row = out.setdefault(a, {})
        for b in versions:
            if a == b:
                continue
            try:
                chain = plan_chain(graph, a, b)
            except NoPath as e:
                row[b] = {"error": e.message, "reachable": list(e.reachable)}
                continue
            stops = [y for _, y in chain[:-1] if y in graph.required_stops]
            row[b] = {
                "chain": [f"{x}->{y}" for x, y in chain],
                "stops": stops,
                "direct": [] if len(chain) == 1 else violations(graph.policy, a, b),
            }
    return out


def _local_bundles(model: SiteModel, dist: Path, trust: list[Path]) -> None:
    from builder.inspect import inspect_bundle

    name = model.product.name
    for path in sorted(dist.iterdir()):
        if not path.is_file() or not path.name.startswith(f"{name}-") or path.suffix not in (".zip", ".rpm"):
            continue
        try:
            info = inspect_bundle(path, trust)
        except JumpkitError as e:
            model.problems.append(f"{path.name}: not used: {e.message}")
            continue
        m = Manifest.model_validate(info["manifest"], strict=False)
        jump = model.jumps.get((m.from_version, m.to_version))
        if m.product != name or jump is None or (m.installer is not None and m.installer.base is not None):
            continue  # another product's, an undefined jump's, or an installer-patch form
        if trust and not info["signature"].get("verified_by"):
            model.problems.append(f"{path.name}: not used: not signed by a trusted key")
            continue
        kind = "rpm" if info.get("rpm") else "zip"
        sha, size = sha256_file(path)
        jump.downloads.append(Download(kind, path.name, size, sha, f"bundles/{path.name}", path))
        jump.format, jump.files = m.format, len(m.files)
        jump.outage, jump.outage_basis = outage(m)


def outage(m: Manifest) -> tuple[float, str]:
    """The outage a manager with no applies measured should expect, at most (what
    ``bundle-install plan`` says before it has measured): the services' stop and start at
    their capped timeouts, each migration at the build's rehearsal time, each rename."""
    seconds = m.services.restart_bound(m.services)
    seconds += sum(db.rehearsal_seconds for db in m.databases)
    seconds += RENAME_SECONDS * (len(m.files) + len(m.removed))
    basis = (
        f"stop and start at their timeouts capped at {RESTART_CAP:g} s each, migrations as "
        "rehearsed at the build"
    )
    return round(seconds, 2), basis


def _repo_targets(model: SiteModel, repo: str, base_url: str | None) -> None:
    """Links to the repository's targets of this product (replacing local copies)."""
    from builder.tufrepo import Keys, Repo
    from installer.store import open_store

    try:  # the vendor's own repository: the page links what its targets say, unverified
        targets = Repo(open_store(repo), Keys(Path("."), {})).current()[1].signed.targets
    except (OSError, ValueError, KeyError) as e:  # jumpkit's own errors say it as publish does
        raise BuildError(f"cannot read the repository {repo}: {e}") from e
    base = (base_url.rstrip("/") + "/") if base_url else "../"
    for name, t in sorted(targets.items()):
        custom = t.unrecognized_fields.get("custom") or {}
        jump = model.jumps.get((str(custom.get("from")), str(custom.get("to"))))
        if custom.get("product") != model.product.name or jump is None:
            continue
        sha = t.hashes["sha256"]
        href = f"{base}targets/{sha}.{name}"
        kind = "rpm" if custom.get("format") == "rpm" else "zip"
        jump.downloads = [d for d in jump.downloads if d.name != name]
        jump.downloads.append(Download(kind, name, t.length, sha, href))
        jump.downloads.sort(key=lambda d: (d.kind != "zip", d.name))


def _results(model: SiteModel, path: Path) -> None:
    """``bundle-build test-jumps --json`` output: each case's cells, on the jumps it crosses."""
    try:
        if path.stat().st_size > MAX_RESULTS:
            raise ValueError(f"larger than {MAX_RESULTS} bytes")
        doc = json.loads(path.read_text())
        cells, cases = list(doc["cells"]), list(doc["cases"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--results {path}: not the JSON of 'bundle-build test-jumps --json': {e}") from e
    model.cells = [str(c) for c in cells]
    model.results_seconds = doc.get("seconds") if isinstance(doc.get("seconds"), (int, float)) else None
    graph = model.product.graph()
    for given in cases:
        if not isinstance(given, dict) or not isinstance(given.get("case"), str):
            continue
        marks = given["cells"] if isinstance(given.get("cells"), dict) else {}
        case = {
            "case": given["case"],
            "cells": {str(k): str(v) for k, v in marks.items()},
            "failure": str(given["failure"]) if given.get("failure") else None,
            "seconds": given["seconds"] if isinstance(given.get("seconds"), (int, float)) else None,
        }
        ends = re.match(r"^(\S+) -> (\S+)", case["case"])
        if ends is None:
            continue
        try:
            chain = (
                [ends.groups()] if tuple(ends.groups()) in model.jumps else plan_chain(graph, *ends.groups())
            )
        except JumpkitError:
            continue
        for j in chain:
            if (info := model.jumps.get((j[0], j[1]))) is not None:
                info.cases.append(case)
