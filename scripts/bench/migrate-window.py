"""Benchmark: what the migrate step costs inside the outage window, with the migrations
loaded before the stop (`migrate.prepare`, run by the backup step) against alembic's own
`command.upgrade` (which reads every revision file to build its map, in the window), in the
same run. A product with N revisions upgrades its last two; N = the demo's 4 and a
long-lived product's 300. Medians of interleaved runs; never fails on time.

    uv run python scripts/bench/migrate-window.py [--repeat 7] [--revisions 4,300]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from installer import migrate


def scripts(d: Path, n: int) -> Path:
    """N linear revisions; the last two create a table each."""
    (d / "versions").mkdir(parents=True)
    prev = None
    for i in range(1, n + 1):
        rev = f"{i:04d}"
        body = f"    op.execute('CREATE TABLE t{i} (x INTEGER)')\n" if i > n - 2 else "    pass\n"
        (d / "versions" / f"{rev}_r.py").write_text(
            f"revision = {rev!r}\ndown_revision = {prev!r}\nbranch_labels = None\ndepends_on = None\n"
            f"from alembic import op\n\n\ndef upgrade():\n{body}\n\ndef downgrade():\n    pass\n"
        )
        prev = rev
    return d


def once(tmp: Path, n: int, warm: bool) -> float:
    run = Path(tempfile.mkdtemp(dir=tmp))
    url = f"sqlite:///{run}/db.sqlite"
    migrate.upgrade(scripts(run / "old", n), url, f"{n - 2:04d}")
    new = scripts(run / "new", n)  # fresh files: nothing cached from the first load
    loaded = migrate.prepare(new, url) if warm else None
    t0 = time.perf_counter()
    migrate.upgrade(new, url, f"{n:04d}", None, loaded)
    took = time.perf_counter() - t0
    shutil.rmtree(run)
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--revisions", default="4,300")
    a = ap.parse_args()
    migrate.preload()
    with tempfile.TemporaryDirectory(prefix="jk-bench-migrate-") as t:
        for n in map(int, a.revisions.split(",")):
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(a.repeat):  # interleaved
                for warm in (False, True):
                    times[warm].append(once(Path(t), n, warm))
            cold, warm = (statistics.median(times[w]) * 1000 for w in (False, True))
            print(
                f"{n:>4} revisions, upgrading the last 2: in the window {warm:.1f} ms with them loaded "
                f"before the stop, {cold:.1f} ms with alembic's command.upgrade: {warm / cold:.2f}x "
                f"(medians of {a.repeat})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
