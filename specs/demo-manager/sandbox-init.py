#!/usr/bin/env python3
"""Fresh-install data for the demo manager: its SQLite database (schema of 3.4.2/4.0.1).
Run by `bundle-build sandbox` with the sandbox root as argv[1]."""

import os
import sqlite3
import sys

root = sys.argv[1]
data = os.path.join(root, "var/lib/demo-manager")
os.makedirs(data, exist_ok=True)
con = sqlite3.connect(os.path.join(data, "manager.db"))
con.executescript(
    """
    CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
    INSERT OR IGNORE INTO items (id, name) VALUES (1, 'alpha'), (2, 'beta'), (3, 'gamma');
    """
)
con.commit()
con.close()
