"""Rehearse-and-replay of SQLite upgrades (installer/replay.py): a replay ends exactly where
a live upgrade ends, steps aside at the first value the database answers differently,
and a migration that touches anything but its database is never replayed."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from installer import replay as rp
from installer.migrate import Warm, connect_ahead, current_revision, prepare, settle, upgrade
from tests.helpers import SPECS

DEMO = SPECS / "demo-manager/releases/4.1.1/migrations/main"
ROWS = [("alpha",), ("beta",), ("gamma",)]


def dump(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.iterdump())


def demo_db(tmp: Path, name: str, rev: str = "0002") -> tuple[Path, Path]:
    """A copy of the demo's scripts and a database at ``rev`` holding ROWS."""
    scripts = tmp / name / "m"
    shutil.copytree(DEMO, scripts)
    db = tmp / name / "x.db"
    upgrade(scripts, f"sqlite:///{db}", rev)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany("INSERT INTO items (name) VALUES (?)", ROWS)
    return scripts, db


def copy_of(db: Path) -> Path:
    """A scratch copy of ``db`` beside it, as the pre-flight rehearsal makes one."""
    dest = db.parent / "scratch" / "copy.db"
    dest.parent.mkdir()
    rp.scratch_copy(db, dest)
    return dest


def rehearsed(scripts: Path, db: Path, from_rev: str | None, to_rev: str) -> tuple[Warm, rp.Recording]:
    warm = prepare(scripts, f"sqlite:///{db}")
    assert warm is not None
    return warm, rp.rehearse(warm, scripts, copy_of(db), from_rev, to_rev)


def live(tmp: Path, setup: Any = None) -> list[str]:
    """The demo upgraded 0002 -> 0004 the ordinary way (after ``setup(db)``)."""
    scripts, db = demo_db(tmp, f"live{len(list(tmp.glob('live*')))}")
    if setup is not None:
        setup(db)
    upgrade(scripts, f"sqlite:///{db}", "0004")
    return dump(db)


def names(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [n for (n,) in conn.execute("SELECT name FROM items ORDER BY id")]


def write(db: Path, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql)


def test_a_replay_ends_where_a_live_upgrade_ends(tmp_path: Path) -> None:
    scripts, db = demo_db(tmp_path, "replay")
    warm, rec = rehearsed(scripts, db, "0002", "0004")
    assert rec.revisions == ["0003", "0004"] and rec.statements > 10
    before = dump(db)
    assert dump(db.parent / "scratch" / "copy.db") == live(tmp_path) != before  # the copy moved, not db
    seen: list[Any] = []
    assert rp.replay(warm.engine, rec, lambda rev, up: seen.append((rev, up))) is None
    settle(warm)
    assert seen == [("0003", True), ("0004", True)]
    assert dump(db) == live(tmp_path)


def test_a_row_written_since_the_backup_makes_it_migrate_live(tmp_path: Path) -> None:
    """The backfill's row count differs: 0003's transaction is rolled back untouched, and
    the live upgrade from there migrates the new row too."""
    scripts, db = demo_db(tmp_path, "replay")
    warm, rec = rehearsed(scripts, db, "0002", "0004")
    write(db, "INSERT INTO items (name) VALUES ('delta')")
    before = dump(db)
    diff = rp.replay(warm.engine, rec, lambda rev, up: None)
    assert diff is not None and "changed 4 row(s), not 3" in diff, diff
    assert dump(db) == before
    upgrade(scripts, f"sqlite:///{db}", "0004", None, warm)
    settle(warm)
    assert dump(db) == live(tmp_path, lambda d: write(d, "INSERT INTO items (name) VALUES ('delta')"))


def test_the_connection_opened_before_the_stop_serves_the_window(tmp_path: Path) -> None:
    """:func:`connect_ahead` opens the window's connection before the stop: the replay
    opens none of its own, yet sees what the service wrote after it was opened (a SQLite
    connection keeps no data between transactions), and :func:`settle` closes it."""
    from sqlalchemy import event

    scripts, db = demo_db(tmp_path, "ahead")
    warm, rec = rehearsed(scripts, db, "0002", "0004")
    connect_ahead(warm)
    assert warm.engine.pool.checkedin() == 1
    opened: list[object] = []
    event.listen(warm.engine, "connect", lambda *a: opened.append(a))
    write(db, "INSERT INTO items (name) VALUES ('delta')")  # the service, after the connect
    diff = rp.replay(warm.engine, rec, lambda rev, up: None)
    assert diff is not None and "changed 4 row(s), not 3" in diff, diff
    assert opened == [], "the window opened a connection of its own"
    settle(warm)
    assert warm.engine.pool.checkedin() == 0


def test_a_schema_changed_since_the_backup_rolls_the_replay_back(tmp_path: Path) -> None:
    """An index added after the backup shows in 0004's reflection: the replay (one
    transaction for both revisions) is rolled back whole, and the live upgrade goes on from
    0002 (keeping the index)."""
    scripts, db = demo_db(tmp_path, "replay")
    warm, rec = rehearsed(scripts, db, "0002", "0004")
    write(db, "CREATE INDEX ix_legacy ON items (legacy_flag)")
    seen: list[str] = []
    diff = rp.replay(warm.engine, rec, lambda rev, up: seen.append(rev))
    assert diff is not None and "returned other rows" in diff, diff
    assert seen == ["0003"], seen
    assert current_revision(f"sqlite:///{db}") == "0002"
    upgrade(scripts, f"sqlite:///{db}", "0004", None, warm)
    settle(warm)
    assert dump(db) == live(tmp_path, lambda d: write(d, "CREATE INDEX ix_legacy ON items (legacy_flag)"))


def test_an_error_from_reached_rolls_the_replay_back(tmp_path: Path) -> None:
    """A failpoint or a signal at a revision: the open transaction (both revisions) is
    rolled back and the error goes up; no lock is left on the database."""
    scripts, db = demo_db(tmp_path, "replay")
    warm, rec = rehearsed(scripts, db, "0002", "0004")

    def reached(rev: Any, up: bool) -> None:
        if rev == "0004":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rp.replay(warm.engine, rec, reached)
    settle(warm)
    assert current_revision(f"sqlite:///{db}") == "0002"
    write(db, "INSERT INTO settings (key, value) VALUES ('k', 'v')")  # not locked


def migration(scripts: Path, body: str, *, down: str = "0002", rev: str = "0003") -> None:
    for p in (scripts / "versions").glob("000[34]*.py"):
        p.unlink()
    (scripts / "versions" / f"{rev}_case.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade():\n{body}\n\ndef downgrade():\n    pass\n"
    )


ROW_BY_ROW = """
    bind = op.get_bind()
    for id_, name in bind.execute(sa.text("SELECT id, name FROM items ORDER BY id")).fetchall():
        bind.execute(sa.text("UPDATE items SET name = :n WHERE id = :i"), {"n": name.upper(), "i": id_})
"""


def test_a_python_data_migration_replays_only_with_the_rows_it_read(tmp_path: Path) -> None:
    scripts, db = demo_db(tmp_path, "same")
    migration(scripts, ROW_BY_ROW)
    warm, rec = rehearsed(scripts, db, "0002", "0003")
    assert rp.replay(warm.engine, rec, lambda rev, up: None) is None
    settle(warm)
    assert names(db) == ["ALPHA", "BETA", "GAMMA"]

    scripts, db = demo_db(tmp_path, "changed")
    migration(scripts, ROW_BY_ROW)
    warm, rec = rehearsed(scripts, db, "0002", "0003")
    write(db, "UPDATE items SET name = 'zeta' WHERE name = 'beta'")  # same count, another value
    diff = rp.replay(warm.engine, rec, lambda rev, up: None)
    assert diff is not None and "returned other rows" in diff
    upgrade(scripts, f"sqlite:///{db}", "0003", None, warm)
    settle(warm)
    assert names(db) == ["ALPHA", "ZETA", "GAMMA"]


def test_the_revisions_replay_in_one_transaction(tmp_path: Path) -> None:
    """The demo's two revisions: one BEGIN and one COMMIT around both, the same end as a
    live upgrade (test_a_replay_ends_where_a_live_upgrade_ends), each revision still
    reached in order."""
    scripts, db = demo_db(tmp_path, "one")
    warm, rec = rehearsed(scripts, db, "0002", "0004")
    revisions = [i for i, e in enumerate(rec.entries) if isinstance(e, rp.Reached)]
    assert len(revisions) == 2
    between = rec.entries[revisions[0] : revisions[1]]
    assert not any(isinstance(e, rp.Commit) for e in between)
    assert not any(isinstance(e, rp.Statement) and e.sql.strip().upper() == "BEGIN" for e in between)
    assert isinstance(rec.entries[revisions[1] + 1], rp.Commit)
    settle(warm)


@pytest.mark.parametrize("statement", ["PRAGMA foreign_keys=OFF", "PRAGMA main.user_version(7)"])
def test_a_statement_that_acts_otherwise_in_a_transaction_keeps_one_per_revision(
    tmp_path: Path, statement: str
) -> None:
    """A revision that sets a PRAGMA: not joined to the one before it, so it
    runs as alembic ran it, and the replay ends where a live upgrade ends."""
    scripts, db = demo_db(tmp_path, "apart")
    (scripts / "versions" / "0005_apart.py").write_text(
        "from alembic import op\n\nrevision = '0005'\ndown_revision = '0004'\n"
        "branch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade():\n    op.execute({statement!r})\n\n\ndef downgrade():\n    pass\n"
    )
    warm, rec = rehearsed(scripts, db, "0002", "0005")
    assert sum(isinstance(e, rp.Commit) for e in rec.entries) == 3
    assert rp.replay(warm.engine, rec, lambda rev, up: None) is None
    settle(warm)
    assert current_revision(f"sqlite:///{db}") == "0005"


def test_one_transaction_leaves_what_it_cannot_join() -> None:
    begin, sel = rp.Statement("BEGIN", (), False), rp.Statement("SELECT 1", (), False)
    joined = [begin, sel, rp.Reached("1"), rp.Commit(), begin, sel, rp.Reached("2"), rp.Commit()]
    assert rp.one_transaction(joined) == [begin, sel, rp.Reached("1"), sel, rp.Reached("2"), rp.Commit()]
    for entries in (
        [sel, rp.Commit(), begin, sel, rp.Commit()],  # nothing opened the first transaction
        [begin, sel, rp.Commit(), begin, sel],  # the last one never ends
        [begin, sel, rp.Commit(), begin, sel, rp.Rollback()],  # the joined one rolls back
        [begin, rp.Statement("DETACH db2", (), False), rp.Commit(), begin, sel, rp.Commit()],
        [
            begin,
            sel,
            rp.Commit(),
            begin,
            rp.Statement("pragma main.journal_mode=wal", (), False),
            rp.Commit(),
        ],
    ):
        assert rp.one_transaction(entries) == entries
    reflect = rp.Statement('PRAGMA main.table_info("items")', (), False)
    assert rp.one_transaction([begin, sel, rp.Commit(), begin, reflect, rp.Commit()]) == [
        begin,
        sel,
        reflect,
        rp.Commit(),
    ]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("    open({outside!r}).read()", "opened"),
        ("    open({outside!r} + '.new', 'w').write('x')", "opened"),
        ("    import subprocess\n    subprocess.run(['touch', {outside!r} + '.ran'])", "subprocess.Popen"),
        (
            "    import sqlite3\n    sqlite3.connect({outside!r} + '.db').close()",
            "another database connection",
        ),
        ("    import os\n    os.listdir('/')", "listed"),
        ("    import time\n    time.sleep(0)\n    time.sleep(0.01)", "sleeps"),
        (
            "    try:\n        op.execute('DROP INDEX no_such_index')\n    except Exception:\n        pass",
            "a statement failed",
        ),
        ("    raise RuntimeError('broken on this data')", "RuntimeError: broken on this data"),
    ],
    ids=[
        "reads-a-file",
        "writes-a-file",
        "runs-a-process",
        "opens-a-database",
        "lists",
        "sleeps",
        "swallows",
        "fails",
    ],
)
def test_a_migration_that_touches_anything_but_its_database_is_not_replayed(
    tmp_path: Path, body: str, why: str
) -> None:
    """...and the rehearsal stops before it acts: nothing outside is written twice."""
    outside = tmp_path / "outside.txt"
    outside.write_text("data")
    scripts, db = demo_db(tmp_path, "x")
    migration(scripts, body.format(outside=str(outside)))
    with pytest.raises(rp.NotReplayable, match=why) as e:
        rehearsed(scripts, db, "0002", "0003")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.txt", "x"]
    # only a migration failing on its own is one that would fail live (refused before the stop)
    assert isinstance(e.value, rp.MigrationFails) == (why == "RuntimeError: broken on this data"), e.value


def test_a_migration_may_read_files_beside_its_scripts(tmp_path: Path) -> None:
    scripts, db = demo_db(tmp_path, "x")
    (scripts / "versions" / "seed.txt").write_text("from-the-bundle")
    migration(
        scripts,
        "    import pathlib\n"
        "    value = (pathlib.Path(__file__).parent / 'seed.txt').read_text()\n"
        "    insert = sa.text('INSERT INTO settings (key, value) VALUES (:k, :v)')\n"
        "    op.execute(insert.bindparams(k='seed', v=value))",
    )
    warm, rec = rehearsed(scripts, db, "0002", "0003")
    assert rp.replay(warm.engine, rec, lambda rev, up: None) is None
    settle(warm)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT value FROM settings").fetchall() == [("from-the-bundle",)]


def test_a_migration_failing_on_the_data_names_revision_file_and_statement(tmp_path: Path) -> None:
    """What the pre-flight refusal says: the revision that failed, its file, the statement
    the data refused and the database's error; the revisions before it ran through."""
    scripts, db = demo_db(tmp_path, "x")
    write(db, "CREATE TABLE entries (amount REAL)")
    write(db, "INSERT INTO entries VALUES (NULL)")
    migration(scripts, "    op.execute('UPDATE items SET name = name')", rev="0003")
    (scripts / "versions" / "0004_cents.py").write_text(
        "from alembic import op\n\nrevision = '0004'\ndown_revision = '0003'\n\n\ndef upgrade():\n"
        "    op.execute('CREATE TABLE entries2 (amount_cents INTEGER NOT NULL)')\n"
        "    op.execute('INSERT INTO entries2 SELECT amount * 100 FROM entries')\n\n\n"
        "def downgrade():\n    pass\n"
    )
    with pytest.raises(rp.MigrationFails) as e:
        rehearsed(scripts, db, "0002", "0004")
    f = e.value
    assert (f.revision, f.path) == ("0004", "x/m/versions/0004_cents.py"), str(f)
    assert f.statement == "INSERT INTO entries2 SELECT amount * 100 FROM entries", f.statement
    assert f.error == "NOT NULL constraint failed: entries2.amount_cents", f.error


def test_what_is_not_rehearsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripts, db = demo_db(tmp_path, "x")
    with pytest.raises(rp.NotReplayable, match="it is at 0002, not 0001"):
        rehearsed(scripts, db, "0001", "0004")
    shutil.rmtree(db.parent / "scratch")
    monkeypatch.setattr(rp, "REHEARSE_MAX_BYTES", 1024)
    with pytest.raises(rp.NotReplayable, match="larger than"):
        rehearsed(scripts, db, "0002", "0004")
    shutil.rmtree(db.parent / "scratch")
    monkeypatch.setattr(rp, "REHEARSE_MAX_BYTES", 2**30)
    monkeypatch.setattr(rp, "ROWS_MAX", 2)
    migration(scripts, ROW_BY_ROW)
    with pytest.raises(rp.NotReplayable, match="more than 2 rows"):
        rehearsed(scripts, db, "0002", "0003")


def test_after_a_difference_the_live_upgrade_gets_a_fresh_connection(tmp_path: Path) -> None:
    """A replayed statement may have set connection state (a PRAGMA): the connection is
    dropped, not returned to the pool the live upgrade draws from."""
    scripts, db = demo_db(tmp_path, "x")
    migration(scripts, '    op.execute("PRAGMA cache_size = 123")' + ROW_BY_ROW)
    warm, rec = rehearsed(scripts, db, "0002", "0003")
    write(db, "UPDATE items SET name = 'zeta' WHERE name = 'beta'")
    assert rp.replay(warm.engine, rec, lambda rev, up: None) is not None
    with warm.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() != 123
    settle(warm)
