"""Carrying a release's config changes into a config the operator edited (``rewrite``).

Three texts: the from-version's default (the base, shipped in the bundle as
``base/<path>``), the operator's file, and the to-version's default. The rewrite rules
run first on the base and on the operator's file, so a value the rules convert (``tcp://``
to ``http://``) is the same change on both sides; then a 3-way line merge (breezy's
``merge3``, as ``diff3``) keeps every line the operator changed and takes every line the
release changed where the operator did not: a key the new default adds (``workers = 4``),
a header comment that names the version. Where both changed the same lines the merge
gives up: the operator's file with the rules applied is placed (what ``rewrite`` did
before), the new default goes beside it as ``<path>.jumpkit-new`` and the plan says how
many of the release's changes were not carried.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import merge3


@dataclass(frozen=True, slots=True)
class Merged:
    """The outcome of :func:`merge`: the text to place and what was not carried."""

    text: str
    carried: int
    """Regions of the release's changes taken into the operator's file."""
    conflicts: int
    """Regions both sides changed: none of the release's changes there were carried."""
    dropped: int = 0
    """With a conflict, every change of the release not carried (the whole merge gives up:
    those that touch no edited line too)."""


def merge(base: str, ours: str, theirs: str) -> Merged:
    """``ours`` with the changes from ``base`` to ``theirs`` that do not touch lines
    ``ours`` changed; with a conflict, ``ours`` unchanged (and the count of conflicts).

    Lines one side only inserts beside lines the other side changed (a key the release
    adds right after the port the operator set) are no conflict here, unlike diff3's."""
    m = merge3.Merge3(base.splitlines(True), ours.splitlines(True), theirs.splitlines(True))
    out: list[str] = []
    carried = conflicts = 0
    for region in m.merge_regions():
        what, r = region[0], tuple(region[1:]) + (0,) * 6  # conflicts carry six bounds
        if what == "unchanged":
            out += m.base[r[0] : r[1]]
        elif what in ("a", "same"):
            out += m.a[r[0] : r[1]]
        elif what == "b":
            out += m.b[r[0] : r[1]]
            carried += 1
        else:  # conflict: base[zs:ze], ours[as:ae], theirs[bs:be]
            joined = _insertions(list(m.base[r[0] : r[1]]), list(m.a[r[2] : r[3]]), list(m.b[r[4] : r[5]]))
            if joined is None:
                conflicts += 1
            else:
                out += joined
                carried += 1
    if conflicts:
        return Merged(ours, 0, conflicts, dropped=conflicts + carried)
    return Merged("".join(out), carried, 0)


def differing_regions(a: str, b: str) -> int:
    """How many regions of lines differ between ``a`` and ``b``."""
    sm = difflib.SequenceMatcher(None, a.splitlines(True), b.splitlines(True), autojunk=False)
    return sum(tag != "equal" for tag, *_ in sm.get_opcodes())


Chunk = tuple[int, int, list[str]]
"""Base lines [i1, i2) replaced by these lines (i1 == i2: inserted before base line i1)."""


def _chunks(base: list[str], side: list[str]) -> list[Chunk]:
    out: list[Chunk] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, base, side, autojunk=False).get_opcodes():
        if tag == "replace" and i2 - i1 == j2 - j1:  # line for line: each its own change
            out += [(i1 + k, i1 + k + 1, [side[j1 + k]]) for k in range(i2 - i1)]
        elif tag != "equal":
            out.append((i1, i2, side[j1:j2]))
    return out


def _insertions(base: list[str], ours: list[str], theirs: list[str]) -> list[str] | None:
    """A region diff3 calls a conflict, merged line by line with no context: it conflicts
    only where both sides change the same base line or insert different lines at the same
    place (a key the release adds right after the port the operator set merges). None: a
    real conflict."""
    a, b = _chunks(base, ours), _chunks(base, theirs)
    for i1, i2, lines in a:
        for j1, j2, other in b:
            same = (i1, i2, lines) == (j1, j2, other)
            overlap = (
                max(i1, j1) < min(i2, j2)
                or (i1 == i2 == j1 == j2)
                or (i1 == i2 and j1 < i1 < j2)
                or (j1 == j2 and i1 < j1 < i2)
            )
            if overlap and not same:
                return None
    out: list[str] = []
    pos = 0
    for start, end, added in sorted({(c[0], c[1], tuple(c[2])) for c in a + b}, key=lambda c: (c[0], c[1])):
        out += base[pos:start] + list(added)
        pos = end
    return out + base[pos:]
