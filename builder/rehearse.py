"""Build-time rehearsal of a jump's migrations on a scratch SQLite database:
upgrade -> downgrade -> upgrade, with the schema compared after the round trip, and an
import guard that fails any migration importing what the frozen installer does not ship.

Runs in a subprocess (``python -m builder.rehearse SCRIPT_DIR FROM TO``) so that the guard
and the migrations cannot touch the builder's own process; prints one JSON line.
"""

from __future__ import annotations

import builtins
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from installer.migrate import MIGRATION_MODULES, downgrade, upgrade


def _guard(script_dir: Path) -> None:
    real_import = builtins.__import__
    prefix = str(script_dir.resolve())

    def guarded(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        importer = (globals or {}).get("__file__") or ""
        if (
            level == 0
            and str(importer).startswith(prefix)
            and name.partition(".")[0] not in MIGRATION_MODULES
        ):
            raise ImportError(
                f"migration {Path(importer).name} imports {name!r}; migrations may import only alembic, "
                "sqlalchemy and the standard-library modules in installer.migrate.MIGRATION_STDLIB "
                "(what the frozen installer ships)"
            )
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = guarded


def schema(url: str) -> dict[str, Any]:
    """Tables, columns (name, type, nullable, default), primary keys, indexes, foreign keys."""
    from sqlalchemy import create_engine, inspect

    insp = inspect(create_engine(url))
    out: dict[str, Any] = {}
    for t in sorted(insp.get_table_names()):
        out[t] = {
            # by name: a downgrade that re-adds a dropped column cannot put it back in its
            # old position without a table rebuild, and no query by name can tell
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in insp.get_columns(t)
            ),
            "pk": insp.get_pk_constraint(t).get("constrained_columns"),
            "indexes": sorted((i["name"] or "", tuple(i["column_names"])) for i in insp.get_indexes(t)),
            "fks": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"]) for f in insp.get_foreign_keys(t)
            ),
        }
    return out


def rehearse(script_dir: Path, from_rev: str | None, to_rev: str) -> dict[str, Any]:
    """Run the round trip; returns {"ok", "seconds", "error"}."""
    with tempfile.TemporaryDirectory(prefix="jumpkit-rehearse-") as tmp:
        work = Path(tmp) / "scripts"
        shutil.copytree(script_dir, work)
        url = f"sqlite:///{tmp}/scratch.db"
        _guard(work)
        try:
            if from_rev:
                upgrade(work, url, from_rev)
            before = schema(url)
            # CPU time, not wall time: the figure goes into the signed manifest as a bucket
            # (builder.migrations.estimate_bucket), and a wall clock counts the build host's
            # load. A 10 ms rehearsal once took over 0.5 s in CI (a slow fsync beside the other
            # test worker): the next bucket, other bytes from the same inputs.
            t0 = time.process_time()
            upgrade(work, url, to_rev)
            seconds = time.process_time() - t0
            after = schema(url)
            downgrade(work, url, from_rev)
            if schema(url) != before:
                return {"ok": False, "error": f"downgrade to {from_rev} does not restore the schema"}
            upgrade(work, url, to_rev)
            if schema(url) != after:
                return {"ok": False, "error": "the schema after upgrade -> downgrade -> upgrade differs"}
        except Exception as e:
            cause = e.__cause__ if isinstance(e.__cause__, ImportError) else e
            return {
                "ok": False,
                "error": str(cause) if isinstance(cause, ImportError) else getattr(e, "message", str(e)),
            }
        return {"ok": True, "seconds": round(seconds, 4)}


if __name__ == "__main__":
    frm = sys.argv[2] if sys.argv[2] != "-" else None
    print(json.dumps(rehearse(Path(sys.argv[1]), frm, sys.argv[3])))
