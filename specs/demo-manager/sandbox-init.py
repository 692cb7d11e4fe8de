#!/usr/bin/env python3
"""Fresh-install data for the demo manager: its SQLite database at the installed
release's schema head (through the same alembic path the installer uses), with sample
rows. Run by `bundle-build sandbox` with the sandbox root as argv[1] and JUMPKIT_RELEASE
(the release's directory) in the environment."""

import os
import sqlite3
import sys
from pathlib import Path

from installer.migrate import create_at_head

root = Path(sys.argv[1])
db = root / "var/lib/demo-manager/manager.db"
db.parent.mkdir(parents=True, exist_ok=True)
create_at_head(Path(os.environ["JUMPKIT_RELEASE"]) / "migrations/main", f"sqlite:///{db}")
con = sqlite3.connect(db)
cols = [r[1] for r in con.execute("PRAGMA table_info(items)")]
name = "title" if "title" in cols else "name"
con.executemany(f"INSERT INTO items (id, {name}) VALUES (?, ?)", [(1, "alpha"), (2, "beta"), (3, "gamma")])
con.commit()
con.close()
