from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import db_state, install, make_sandbox, sqlite_url, tree_hash


@pytest.fixture(scope="package")
def expected(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], port: int, bundle: Path
) -> dict[str, object]:
    """Tree hashes and database states of a clean 4.0.1 and of a clean apply to 4.1.1,
    and how long that apply took (the window the random kills aim at)."""
    sb = make_sandbox("4.0.1", keys["pub"], port)
    try:
        old, old_db = tree_hash(sb.root), db_state(sqlite_url(sb.root))
        t0 = time.monotonic()
        p = install("--root", sb.root, "apply", bundle)
        took = time.monotonic() - t0
        assert p.returncode == 0, p.stderr
        return {
            "old": old,
            "old_db": old_db,
            "new": tree_hash(sb.root),
            "new_db": db_state(sqlite_url(sb.root)),
            "apply_seconds": took,
        }
    finally:
        sb.destroy()
