"""Counts the reliability tests report at the end of a run (crash points exercised,
hostile cases refused): printed by conftest's terminal summary, so CI logs show them."""

from __future__ import annotations

from collections import Counter

COUNTS: Counter[str] = Counter()


def count(what: str, n: int = 1) -> None:
    COUNTS[what] += n
