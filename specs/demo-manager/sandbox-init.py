#!/usr/bin/env python3
"""Fresh-install data for the demo manager: its SQLite database at the installed
release's schema head (through the same alembic path the installer uses), with sample
rows. Run by `bundle-build sandbox` with the sandbox root as argv[1]."""

import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from installer.migrate import upgrade

root = Path(sys.argv[1])
version = (root / "opt/demo-manager/VERSION").read_text().strip()
scripts = Path(__file__).resolve().parent / "releases" / version / "migrations/main"
db = root / "var/lib/demo-manager/manager.db"
db.parent.mkdir(parents=True, exist_ok=True)
with tempfile.TemporaryDirectory() as tmp:
    work = Path(tmp) / "scripts"
    shutil.copytree(scripts, work)
    upgrade(work, f"sqlite:///{db}", "heads")
con = sqlite3.connect(db)
cols = [r[1] for r in con.execute("PRAGMA table_info(items)")]
name = "title" if "title" in cols else "name"
con.executemany(f"INSERT INTO items (id, {name}) VALUES (?, ?)", [(1, "alpha"), (2, "beta"), (3, "gamma")])
con.commit()
con.close()
