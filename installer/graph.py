"""Upgrade paths: the version policy (MSR's rules by default), required stops, and the
planner that finds the fewest jumps between two versions.

The builder validates jumps against the policy and plans chains; the installer reads the
same graph from a bundle's manifest to tell an operator which chain they need.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from installer.errors import NoPath, VersionError
from installer.version import Version


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PolicyException(_Model):
    """A jump allowed although it breaks a rule, and why."""

    from_version: str = Field(alias="from")
    """The jump's from-version."""
    to_version: str = Field(alias="to")
    """The jump's to-version."""
    reason: str = Field(min_length=1)
    """Why the jump is allowed anyway (shown by plan)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


class Policy(_Model):
    """Which jumps are allowed. The defaults are Mirantis MSR's rules: patch versions may
    be skipped, minor versions may not, a major upgrade goes to x+1.0.0 only, and nothing
    goes down."""

    skip_patch: bool = True
    """4.0.1 -> 4.0.5, and 4.0.1 -> 4.1.3 (the patch level of the target is free)."""
    skip_minor: bool = False
    """4.0.x -> 4.2.y. Off: a minor jump goes to the next minor only."""
    major_to_zero: bool = True
    """A major jump lands on x+1.0.0 exactly (off: x+1.y.z allowed)."""
    skip_major: bool = False
    """3.x -> 5.y."""
    downgrade: bool = False
    """A jump to a lower version (off: refused)."""
    exceptions: tuple[PolicyException, ...] = ()
    """Jumps allowed although they break a rule above, each with its reason."""


def violations(policy: Policy, frm: str, to: str) -> list[str]:
    """Why the jump ``frm -> to`` breaks ``policy`` (empty: allowed, or an exception)."""
    if any(ex.from_version == frm and ex.to_version == to for ex in policy.exceptions):
        return []
    return _rules_broken(policy, frm, to)


def _rules_broken(policy: Policy, frm: str, to: str) -> list[str]:
    a, b = Version.parse(frm), Version.parse(to)
    out: list[str] = []
    if b <= a:
        if not policy.downgrade or b == a:
            out.append(f"{frm} -> {to} is a downgrade" if b < a else f"{frm} -> {to} goes nowhere")
        return out
    if b.major > a.major:
        if b.major > a.major + 1 and not policy.skip_major:
            out.append(f"{frm} -> {to} skips major version {a.major + 1}")
        if policy.major_to_zero and (b.minor, b.patch) != (0, 0):
            out.append(f"a major upgrade goes to {a.major + 1}.0.0, not {to}")
    elif b.minor > a.minor:
        if b.minor > a.minor + 1 and not policy.skip_minor:
            out.append(f"{frm} -> {to} skips minor version {a.major}.{a.minor + 1}")
    elif b.patch > a.patch + 1 and not policy.skip_patch:
        out.append(f"{frm} -> {to} skips patch versions")
    return out


MAX_JUMPS = 10_000
MAX_STOPS = 1_000
"""Caps on the graph a manifest carries: planning runs while the lock is held. At the caps
a plan takes well under a second (tests/test_caps.py measures it)."""


class Graph(_Model):
    """The product's jumps, its required stops and its policy: what a chain may use."""

    jumps: tuple[tuple[str, str], ...] = ()
    required_stops: tuple[str, ...] = ()
    policy: Policy = Policy()

    @model_validator(mode="after")
    def _versions_parse(self) -> Graph:
        if len(self.jumps) > MAX_JUMPS or len(self.required_stops) > MAX_STOPS:
            raise ValueError(
                f"a graph holds at most {MAX_JUMPS} jumps and {MAX_STOPS} required stops "
                f"(this one: {len(self.jumps)}, {len(self.required_stops)})"
            )
        for v in [*(x for j in self.jumps for x in j), *self.required_stops]:
            try:
                Version.parse(v)
            except VersionError as e:
                raise ValueError(e.message) from e
        return self

    def edges(self) -> dict[str, list[str]]:
        """from-version -> to-versions of the jumps the policy allows, sorted."""
        out: dict[str, list[str]] = {}
        excepted = {(ex.from_version, ex.to_version) for ex in self.policy.exceptions}
        for frm, to in self.jumps:
            if (frm, to) in excepted or not _rules_broken(self.policy, frm, to):
                out.setdefault(frm, []).append(to)
        for tos in out.values():
            tos.sort(key=Version.parse)
        return out

    def versions(self) -> list[str]:
        """Every version a jump starts or ends at, ascending."""
        return sorted({v for j in self.jumps for v in j}, key=Version.parse)


def _shortest(
    edges: dict[str, list[str]], frm: str, to: str, above: Callable[[str], bool] = lambda _: False
) -> list[str] | None:
    """Breadth-first from ``frm`` to ``to``, never entering a version for which ``above``
    holds (past ``to`` when jumps only go up: the legs between consecutive stops then
    search disjoint parts of the graph, so a plan is one pass over it, not one per stop)."""
    prev: dict[str, str] = {}
    seen = {frm}
    queue = deque([frm])
    while queue:
        v = queue.popleft()
        if v == to:
            path = [v]
            while path[-1] != frm:
                path.append(prev[path[-1]])
            return path[::-1]
        for w in edges.get(v, []):
            if w not in seen and not above(w):
                seen.add(w)
                prev[w] = v
                queue.append(w)
    return None


def reachable(graph: Graph, frm: str) -> list[str]:
    """Every version reachable from ``frm`` by allowed jumps, ascending."""
    edges = graph.edges()
    seen = {frm}
    stack = [frm]
    while stack:
        for w in edges.get(stack.pop(), []):
            if w not in seen:
                seen.add(w)
                stack.append(w)
    seen.discard(frm)
    return sorted(seen, key=Version.parse)


def plan_chain(graph: Graph, frm: str, to: str) -> list[tuple[str, str]]:
    """The fewest allowed jumps from ``frm`` to ``to`` that pass every required stop in
    between. Versions only go up along a chain, so a chain visits the stops in order and
    the shortest chain is the shortest legs between consecutive stops.

    Raises:
        NoPath: a downgrade, an unknown version, a stop with no jump, or no chain at all;
            the message says which and ``reachable`` the versions that can be reached.
        VersionError: a version does not parse.
    """
    a, b = Version.parse(frm), Version.parse(to)
    near = _nearest(reachable(graph, frm), b)
    if b < a:
        raise NoPath(f"{frm} -> {to} is a downgrade; jumpkit never goes down", reachable=near)
    if a == b:
        raise NoPath(f"already at {to}")
    edges = graph.edges()
    if frm not in edges:
        known = frm in graph.versions()
        raise NoPath(
            f"no jump leaves {frm}" + ("" if known else f" ({frm} is not a version of any jump)"),
            reachable=near,
        )
    stops = sorted((s for s in graph.required_stops if a < Version.parse(s) < b), key=Version.parse)
    legs = [frm, *stops, to]
    chain: list[str] = [frm]
    keys = {v: Version.parse(v) for v in graph.versions()}
    upward = all(keys[w] > keys[v] for v, ws in edges.items() for w in ws)
    for x, y in itertools.pairwise(legs):
        ky = Version.parse(y)
        path = _shortest(edges, x, y, lambda w, ky=ky: upward and keys[w] > ky)  # type: ignore[misc]
        if path is None:
            if y in stops:
                why = f"{y} is a required stop and no chain of jumps reaches it from {x}"
            elif x in stops and x not in edges:
                why = f"{x} is a required stop and no jump leaves it"
            else:
                why = f"no chain of jumps leads from {x} to {y}"
            raise NoPath(why, reachable=near)
        chain += path[1:]
    return list(itertools.pairwise(chain))


def _nearest(versions: Iterable[str], target: Version, n: int = 3) -> list[str]:
    """The ``n`` versions closest below (then above) ``target``, ascending."""
    vs = sorted(versions, key=Version.parse)
    below = [v for v in vs if Version.parse(v) <= target][-n:]
    above = [v for v in vs if Version.parse(v) > target][: max(0, n - len(below))]
    return below + above
