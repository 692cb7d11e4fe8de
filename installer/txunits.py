"""A transaction over one jump or a chain of jumps: the units the journal records, in
order. A chain stops the services once, swaps and migrates each jump in order, starts the
services once and runs the health checks once."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from installer.errors import PreconditionError
from installer.format import Manifest
from installer.steps import Context, Step, apply_steps, outage_frame, per_jump_steps


@dataclass(frozen=True)
class Unit:
    """One journaled step of the transaction, with the jump (context) it acts for."""

    name: str
    step: Step
    ctx: Context


def unit_layout(jumps: int) -> list[tuple[str, Step, int]]:
    """(journal name, step, 0-based jump) of a transaction over ``jumps`` jumps. One jump:
    the apply steps under their own names (the journal of a single apply is unchanged). A
    chain: database backups (of the starting version) and the stop with the first jump,
    each jump's steps named ``<step>#<n>``, then the start and the health checks of the
    last jump."""
    if jumps == 1:
        return [(s.name, s, 0) for s in apply_steps()]
    before, after = outage_frame()
    layout: list[tuple[str, Step, int]] = [(s.name, s, 0) for s in before]
    for n in range(jumps):
        layout += [(f"{s.name}#{n + 1}", s, n) for s in per_jump_steps()]
    return [*layout, *((s.name, s, jumps - 1) for s in after)]


def transaction_units(ctxs: Sequence[Context]) -> list[Unit]:
    """The units of a transaction over ``ctxs`` (one context per jump), as
    :func:`unit_layout` orders them."""
    return [Unit(name, step, ctxs[jump]) for name, step, jump in unit_layout(len(ctxs))]


def chain_id(manifests: Sequence[Manifest]) -> str:
    """The bundle id, or ``<product>-<first from>-to-<last to>`` for a chain."""
    if len(manifests) == 1:
        return manifests[0].bundle_id
    return f"{manifests[0].product}-{manifests[0].from_version}-to-{manifests[-1].to_version}"


def check_chain(manifests: Sequence[Manifest]) -> None:
    """Bundles given together must be one product's consecutive jumps, in order.

    Raises:
        PreconditionError: another product, a gap, an overlap or a repeated jump.
    """
    for prev, nxt in itertools.pairwise(manifests):
        if nxt.product != prev.product:
            raise PreconditionError(f"bundles of two products in one chain: {prev.product}, {nxt.product}")
        if nxt.from_version != prev.to_version:
            raise PreconditionError(
                f"bundles do not form a chain: {prev.bundle_id} is followed by {nxt.bundle_id} "
                f"(give them in order, each starting where the previous one ends)"
            )


def failpoint_names(jumps: int) -> set[str]:
    """Every failpoint an apply of ``jumps`` jumps passes (:mod:`installer.failpoints`), but
    those named after a service or a cluster action."""
    out = {"commit", "committed", "finished", "stage:member", "stage:patch", "migrate:revision"}
    out |= {"swap:files", "swap:configs"}
    for name, _, _ in unit_layout(jumps):
        out |= {f"{where}:{name}" for where in ("begin", "run", "done", "undo", "after-undo")}
    return out
