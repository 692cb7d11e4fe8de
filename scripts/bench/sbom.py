"""Benchmark: reading a release's components and writing its SBOM (issue 39), on the real
release pairs of scripts/bench/delta.py (``stack``: Django, ansible-core, cryptography and
numpy wheels unpacked as one tree; ``vendored``: the Ansible community package, ~24,000
files and ~100 collections), downloaded once into .cache/bench/delta/.

Prints for each pair: the components found per kind, the jump's changes (changed, added,
removed, and the first lines as ``plan`` prints them), and the time to read both trees'
components, to write and validate the to-release's CycloneDX document, and to diff them,
against walking the same two trees (the baseline every build pays already). Never fails
on absolute time.

    uv run python scripts/bench/sbom.py [--repeat 3] [--pairs stack,vendored] [--json]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, parser
from delta import PAIRS, _tree

sys.path.insert(0, str(REPO))
from builder.sbom import diff, document, scan
from builder.trees import walk_tree
from installer.sbom import summary


def _median(fn: object, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(name: str, repeat: int) -> dict[str, object]:
    old, new = _tree(PAIRS[name], 0), _tree(PAIRS[name], 1)
    walk_s, trees = _median(lambda: (walk_tree(old), walk_tree(new)), repeat)
    a, b = trees  # type: ignore[misc]
    scan_s, found = _median(lambda: (scan(a), scan(b)), repeat)
    before, after = found  # type: ignore[misc]
    doc_s, doc = _median(lambda: document("app", "2.0.0", after, 0), repeat)
    diff_s, changes = _median(lambda: diff(before, after), repeat)
    return {
        "pair": name,
        "files": len(b),
        "components": dict(Counter(c.kind for c in after)),
        "changes": summary(changes),  # type: ignore[arg-type]
        "first_lines": [c.line for c in changes][:8],  # type: ignore[attr-defined]
        "sbom_bytes": len(doc),  # type: ignore[arg-type]
        "walk_s": round(walk_s, 3),
        "scan_s": round(scan_s, 3),
        "document_s": round(doc_s, 3),
        "diff_s": round(diff_s, 4),
        "ratio_to_walk": round((scan_s + doc_s + diff_s) / walk_s, 2),
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--pairs", default="stack,vendored")
    args = p.parse_args()
    rows = [measure(name, args.repeat) for name in args.pairs.split(",")]
    if args.json:
        print(json.dumps(rows))
        return
    for r in rows:
        print(f"{r['pair']}: {r['files']} files; components {r['components']}; changes: {r['changes']}")
        for line in r["first_lines"]:  # type: ignore[attr-defined]
            print(f"    {line}")
        print(f"  read both trees' components {r['scan_s']}s, SBOM document (validated, {r['sbom_bytes']} "
              f"bytes) {r['document_s']}s, diff {r['diff_s']}s; walking both trees {r['walk_s']}s: "
              f"{r['ratio_to_walk']}x the walk")  # fmt: skip


if __name__ == "__main__":
    main()
