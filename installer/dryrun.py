"""``bundle-install plan``: what an apply of a bundle or a chain would do, computed from
verified manifests against the root as it stands; nothing under the root changes (config
defaults are unpacked into a temp dir to resolve their policies)."""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from installer.archive import Bundle, extract
from installer.errors import PreconditionError
from installer.format import BASE_PREFIX, Delta, Manifest
from installer.metadata import narrowings
from installer.migrate import unpack_migrations
from installer.preflight import read_installed_version
from installer.rehearsal import Rehearsed, rehearse_jumps
from installer.runspec import RENAME_SECONDS
from installer.sbom import summary
from installer.state import StateDir
from installer.swapplan import Plan, View, compute_plan, placed_paths
from installer.txunits import chain_id, unit_layout

Preflight = Callable[[Manifest, int], list[str]]


def report(
    opened: Sequence[tuple[Bundle, Manifest]], root: Path, state: StateDir, preflight: Preflight
) -> dict[str, Any]:
    """The dry-run report of ``opened`` (verified bundles of a chain, in order).

    Raises:
        UnsafePathError: a path leads out of the root.
    """
    manifests = [m for _, m in opened]
    head, tail = manifests[0], manifests[-1]
    out: dict[str, Any] = {
        "bundle": chain_id(manifests),
        "chain": [m.bundle_id for m in manifests],
        "from": head.from_version,
        "to": tail.to_version,
        "installed": read_installed_version(root, head),
    }
    with tempfile.TemporaryDirectory(prefix="jumpkit-plan-") as tmp:
        plans, out["preflight"] = _plans(opened, root, Path(tmp), preflight)
        rehearsed = _rehearse(manifests, root, Path(tmp), out["preflight"])
    pairs = list(zip(manifests, plans, strict=True))
    out["drift"] = [d for _, plan in pairs for d in plan.drift]
    out["notes"] = [n for _, plan in pairs for n in plan.notes]
    out["steps"] = _steps(pairs, state)
    out["files"] = _files(pairs, root)
    out["special_modes"] = [
        {"jump": f"{m.from_version} -> {m.to_version}", "path": f.path, "mode": f"{f.mode:04o}"}
        for m in manifests
        for f in m.files
        if f.path in m.special_modes
    ]
    out["components"] = [  # what each jump changes in the components (format 5)
        {"jump": f"{m.from_version} -> {m.to_version}", "summary": summary(m.changes),
         "changes": [c.model_dump() for c in m.changes]}
        for m in manifests if m.sbom is not None
    ]  # fmt: skip
    out["services"] = [s.name for s in tail.services.services]
    out["databases"] = [
        {
            "jump": f"{m.from_version} -> {m.to_version}",
            "name": db.name,
            "from": db.from_revision,
            "to": db.to_revision,
            "revisions": list(db.revisions),
            "rehearsal_seconds": db.rehearsal_seconds,
        }
        for m in manifests
        for db in m.databases
    ]
    out["outage_estimate"] = estimate(pairs, rehearsed, measured_services(state))
    out["outage_estimate_seconds"] = out["outage_estimate"]["seconds"]
    return out


def _plans(
    opened: Sequence[tuple[Bundle, Manifest]],
    root: Path,
    tmp: Path,
    preflight: Preflight,
) -> tuple[list[Plan], dict[str, Any]]:
    """Each jump's swap plan against the root as the earlier jumps would leave it (config
    defaults and bases unpacked into ``tmp``), and the first jump's pre-flight result."""
    manifests = [m for _, m in opened]
    view = View(root)
    plans: list[Plan] = []
    checked: dict[str, Any] = {}
    for n, (bundle, m) in enumerate(opened):
        staging = tmp / str(n)
        wanted: dict[str, Path] = {}
        for f in m.files:  # each config's default, and the from-version's where shipped
            if f.kind == "config":
                wanted[f.member] = staging / "defaults" / f.path
                if f.base is not None:
                    wanted[BASE_PREFIX + f.path] = staging / "base" / f.path
        extract(bundle, m, wanted)
        unpack_migrations(bundle, m, staging)
        if n == 0:
            try:
                passed = preflight(m, sum(x.total_size() for x in manifests[1:]))
                checked = {"ok": True, "passed": passed}
            except PreconditionError as e:
                checked = {"ok": False, "problems": e.details or [e.message]}
        plans.append(compute_plan(m, root, staging, accept_drift=True, view=view))
        plans[-1].notes += narrowings(placed_paths(m, plans[-1], view))
        view.advance(m, plans[-1], staging)
    return plans, checked


def _steps(pairs: Sequence[tuple[Manifest, Plan]], state: StateDir) -> list[dict[str, str]]:
    """The apply's steps in order, each with what it would do."""
    steps = []
    for m, _ in pairs:
        steps.append({"step": "verify", "detail": f"{m.bundle_id}: signature + {len(m.contents())} members"})
        steps.append(
            {"step": "stage", "detail": f"{m.total_size()} bytes into {state.staging_dir(m.bundle_id)}"}
        )
    for name, _, jump in unit_layout(len(pairs)):
        m, plan = pairs[jump]
        steps.append({"step": name, "detail": describe(name.partition("#")[0], m, plan)})
    steps.append({"step": "commit", "detail": "journal commit; backup kept until unstage or the next apply"})
    return steps


def _files(pairs: Sequence[tuple[Manifest, Plan]], root: Path) -> list[dict[str, Any]]:
    """Every path the chain adds, replaces or removes, jump by jump."""
    placed: dict[str, bool] = {}  # what earlier jumps of the chain leave (True) or remove
    files = []
    for m, plan in pairs:
        deltas = {f.path: f.delta for f in m.files if f.delta is not None}
        for op in plan.ops:
            existed = placed.get(op.path, (root / op.path).exists() or (root / op.path).is_symlink())
            action = op.action if op.action == "remove" else ("replace" if existed else "add")
            d = deltas.get(op.path)
            files.append(
                {"jump": f"{m.from_version} -> {m.to_version}", "path": op.path, "action": action,
                 "group": op.group, "note": op.note or _patch_note(d),
                 "delta": None if d is None else {"method": d.method, "patch_bytes": d.size, "base": d.base}}
            )  # fmt: skip
        for op in plan.ops:
            placed[op.path] = op.action == "place"
    return files


HISTORY_RUNS = 5
"""Finished applies whose stop, start and health timings ``plan`` takes the median of."""

SERVICE_STEPS = ("stop-services", "start-services", "health")


def measured_services(state: StateDir) -> list[float]:
    """Seconds the services' stop, start and health checks took in each of the last
    :data:`HISTORY_RUNS` finished applies on this manager (history.jsonl), oldest first."""
    try:
        lines = state.history_path.read_text().splitlines()
    except OSError:
        return []
    seen: list[float] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash: the others still count
        phases = rec.get("outage_phases") if isinstance(rec, dict) else None
        if rec.get("result") == "finished" and isinstance(phases, dict) and phases:
            steps = [v for k, v in phases.items() if str(k).partition("#")[0] in SERVICE_STEPS]
            seen.append(sum(float(v) for v in steps))
    return seen[-HISTORY_RUNS:]


def estimate(
    pairs: Sequence[tuple[Manifest, Plan]], rehearsed: Rehearsed, measured: list[float]
) -> dict[str, Any]:
    """The outage an apply of ``pairs`` should take: one stop and one start of the services
    (the median of what earlier applies on this manager measured; else their timeouts,
    capped at 2 s each, as an upper bound), each migration at its replay time when it was
    rehearsed on this manager's data (else at the build's rehearsal time), ~20 us a rename."""
    head, tail = pairs[0][0], pairs[-1][0]
    basis: list[str] = []
    if measured:
        services = statistics.median(measured)
        basis.append(
            f"stop, start and health as measured in the last {len(measured)} apply(s) on this manager"
        )
    else:
        services = head.services.restart_bound(tail.services)
        basis.append(
            "no apply measured on this manager yet: stop and start at their timeouts, capped at 2 s each"
        )
    migrations = 0.0
    for m, _ in pairs:
        for db in m.databases:
            rec = rehearsed.recordings.get((m.bundle_id, db.name))
            migrations += rec.sql_seconds if rec is not None else db.rehearsal_seconds
    moving = sum(db.from_revision != db.to_revision for m, _ in pairs for db in m.databases)
    if moving:
        basis.append(
            "migrations as rehearsed on a copy of this manager's data"
            if len(rehearsed.recordings) == moving
            else "migrations at the build's rehearsal time where not rehearsed here"
        )
    renames = RENAME_SECONDS * sum(len(plan.ops) for _, plan in pairs)
    return {
        "seconds": round(services + migrations + renames, 2),
        "upper_bound": not measured,
        "basis": basis,
    }


def _rehearse(manifests: Sequence[Manifest], root: Path, tmp: Path, pf: dict[str, Any]) -> Rehearsed:
    """The migrations rehearsed on a copy of this manager's databases, as apply does before
    its stop: a failure is a pre-flight problem, what was done a passed line."""
    lines: list[str] = []
    try:
        return rehearse_jumps([(m, tmp / str(n)) for n, m in enumerate(manifests)], root, lines.append)
    except PreconditionError as e:
        pf["ok"] = False
        pf.setdefault("problems", []).append(e.message)
        return Rehearsed()
    finally:
        pf.setdefault("passed", []).extend(lines)


def _patch_note(d: Delta | None) -> str:
    if d is None:
        return ""
    return f"{d.method} patch{f' against {d.base}' if d.base else ''}, {d.size} bytes"


def describe(name: str, manifest: Manifest, plan: Plan) -> str:
    """One line on what step ``name`` (without its ``#n``) does for this jump."""
    svcs = [s.name for s in manifest.services.services]
    if name == "stop-services":
        return f"stop {', '.join(reversed(svcs)) or 'nothing'} ({manifest.services.backend})"
    if name == "start-services":
        return f"start {', '.join(svcs) or 'nothing'}"
    if name.startswith("swap-"):
        ops = plan.group(name.removeprefix("swap-"))
        placed = sum(o.action == "place" for o in ops)
        return f"{placed} placed, {len(ops) - placed} removed"
    if name.startswith("hooks-"):
        hooks = [h.name for h in manifest.hooks if h.when == name.removeprefix("hooks-")]
        return ", ".join(hooks) or "none"
    if name == "backup-db":
        return ", ".join(db.name for db in manifest.databases) or "none"
    if name == "migrate":
        return (
            "; ".join(
                f"{db.name}: {db.from_revision} -> {db.to_revision} ({', '.join(db.revisions)}; "
                f"rehearsed {db.rehearsal_seconds:.2f}s)"
                for db in manifest.databases
            )
            or "none"
        )
    if name == "health":
        return ", ".join(c.name for c in manifest.services.health) or "none"
    return ""
