"""Schema migrations on SQLite (the embedded default) and on a real PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from installer.migrate import upgrade
from tests import postgres
from tests.helpers import REPO, SPECS, Sandbox, build, db_state, get, install, sqlite_url, tree_hash

FAIL_0004 = """
import os
if os.environ.get("DEMO_FAIL_0004"):
    def upgrade():
        if os.environ["DEMO_FAIL_0004"] == "live":
            import time
            time.sleep(0.001)  # a migration that waits is not rehearsed: it fails in the window
        op.execute("UPDATE items SET owner = 'half-done'")
        raise RuntimeError("migration 0004 failed halfway (test fixture)")
"""

SLOW_0003 = """
import os
import time
_real_upgrade_0003 = upgrade
_real_downgrade_0003 = downgrade


def upgrade():
    _real_upgrade_0003()
    time.sleep(float(os.environ.get("DEMO_SLOW_0003", "0")))


def downgrade():
    if os.environ.get("DEMO_FAIL_DOWNGRADE_0003"):
        raise RuntimeError("downgrade of 0003 failed (test fixture)")
    _real_downgrade_0003()
"""


def fixture_specs(tmp: Path, *, postgres_url_env: bool = False) -> Path:
    """The demo specs with test hooks in 4.1.1's migrations: DEMO_FAIL_0004 makes 0004
    raise after a first statement (``live``: only in the window, as it is not rehearsed),
    DEMO_SLOW_0003 makes 0003 slow."""
    specs = tmp / "specs"
    shutil.copytree(SPECS, specs, symlinks=True)
    versions = specs / "demo-manager/releases/4.1.1/migrations/main/versions"
    p = versions / "0004_items_title.py"
    p.write_text(p.read_text() + FAIL_0004)
    p = versions / "0003_items_owner.py"
    p.write_text(p.read_text() + SLOW_0003)
    if postgres_url_env:
        prod = specs / "demo-manager/product.yaml"
        text = prod.read_text()
        text = text.replace(
            "url: {file: etc/demo-manager/manager.ini, key: database.path}\n    url_kind: sqlite-path",
            "url: {env: DEMO_DB_URL}",
        )
        text = text.replace("  backend: supervisord", "  backend: none")
        prod.write_text(text)
    return specs


def build_bundle(specs: Path, keys: dict[str, Path], out: Path) -> Path:
    p = build("--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", out)
    assert p.returncode == 0, p.stderr
    return out / "demo-manager-4.0.1-to-4.1.1.zip"


def status(root: Path) -> dict[str, object]:
    return dict(json.loads(install("--root", root, "status", "--json").stdout))


# --- SQLite ------------------------------------------------------------------------------


@pytest.fixture
def sqlite_case(
    tmp_path: Path, keys: dict[str, Path], sandbox: Callable[..., Sandbox]
) -> tuple[Sandbox, Path]:
    specs = fixture_specs(tmp_path)
    bundle = build_bundle(specs, keys, tmp_path / "dist")
    return sandbox(specs=specs), bundle


def test_sqlite_apply_reaches_to_revision_with_data(sqlite_case: tuple[Sandbox, Path]) -> None:
    sb, bundle = sqlite_case
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    state = db_state(sqlite_url(sb.root))
    assert state["alembic_version"] == (["version_num"], [("0004",)])
    cols, rows = state["items"]  # type: ignore[misc]
    assert cols == ["id", "title", "legacy_flag", "owner"]
    assert rows == [
        ("1", "alpha", "0", "migrated-alpha"),
        ("2", "beta", "0", "migrated-beta"),
        ("3", "gamma", "0", "migrated-gamma"),
    ]
    assert sb.wait_version("4.1.1") == "4.1.1"
    assert "migrated-alpha" in (get(sb.url + "/items") or "")
    assert "rehearsed 2 revision(s) on a copy" in p.stderr and "replaying its rehearsal" in p.stderr, p.stderr
    assert "migrating it live" not in p.stderr
    journal = (sb.root / "var/lib/jumpkit/demo-manager/journal.jsonl").read_text()
    assert '"revision":"0003"' in journal and '"revision":"0004"' in journal
    assert (
        sb.root / "var/lib/jumpkit/demo-manager/backup/demo-manager-4.0.1-to-4.1.1/db/main/sqlite.db"
    ).exists()


def test_sqlite_row_written_after_the_rehearsal_is_migrated_live(sqlite_case: tuple[Sandbox, Path]) -> None:
    """The service writes a row between the backup (the rehearsal's copy) and the stop: the
    window's replay finds 4 rows where the rehearsal backfilled 3, steps aside before
    changing anything, and the live upgrade migrates the new row like the others."""
    from tests.crash.test_locks_space import start_apply, wait_stopped

    sb, bundle = sqlite_case
    proc = start_apply(sb, bundle, "begin:stop-services=stop")
    wait_stopped(proc)
    with contextlib.closing(sqlite3.connect(sb.root / "var/lib/demo-manager/manager.db")) as con, con:
        con.execute("INSERT INTO items (name) VALUES ('delta')")
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "not as rehearsed" in err and "changed 4 row(s), not 3" in err and "migrating it live" in err, err
    _, rows = db_state(sqlite_url(sb.root))["items"]  # type: ignore[misc]
    assert rows[-1] == ("4", "delta", "0", "migrated-delta")


def test_a_migration_failing_on_this_managers_data_stops_nothing(sqlite_case: tuple[Sandbox, Path]) -> None:
    """The rehearsal on a copy of this manager's database fails: the apply is refused before
    the outage (exit 4) with the revision, its file and the error, the service is never
    stopped, and ``plan`` says the same under pre-flight."""
    sb, bundle = sqlite_case
    before, before_db = tree_hash(sb.root), db_state(sqlite_url(sb.root))
    pid = sb.service_pid()
    why = (
        "database main: revision 0004 (migrations/main/versions/0004_items_title.py) failed:"
        " RuntimeError: migration 0004 failed halfway (test fixture); it fails on a copy of this"
        " manager's data, so nothing was stopped"
    )
    p = install("--root", sb.root, "plan", bundle, env={"DEMO_FAIL_0004": "1"})
    assert p.returncode == 4, p.stderr  # plan && apply stops here
    assert "pre-flight: WOULD FAIL" in p.stdout and why in p.stdout, p.stdout
    p = install("--root", sb.root, "apply", bundle, env={"DEMO_FAIL_0004": "1"})
    assert p.returncode == 4, p.stderr
    assert why in p.stderr.splitlines()[-1], p.stderr
    assert "stopping" not in p.stderr, p.stderr
    assert sb.service_pid() == pid
    assert db_state(sqlite_url(sb.root)) == before_db
    assert tree_hash(sb.root) == before


def test_sqlite_migration_failing_halfway_rolls_back(sqlite_case: tuple[Sandbox, Path]) -> None:
    """A failure the rehearsal could not foresee (0004 is not rehearsed: it waits)."""
    sb, bundle = sqlite_case
    before, before_db = tree_hash(sb.root), db_state(sqlite_url(sb.root))
    p = install("--root", sb.root, "apply", bundle, env={"DEMO_FAIL_0004": "live"})
    assert p.returncode == 5, p.stderr
    assert "migration 0004 failed halfway" in p.stderr
    assert db_state(sqlite_url(sb.root)) == before_db
    assert tree_hash(sb.root) == before
    assert sb.wait_version("4.0.1") == "4.0.1"


def test_sqlite_failed_downgrade_falls_back_to_the_backup(sqlite_case: tuple[Sandbox, Path]) -> None:
    sb, bundle = sqlite_case
    before, before_db = tree_hash(sb.root), db_state(sqlite_url(sb.root))
    p = install(
        "--root", sb.root, "apply", bundle, env={"DEMO_FAIL_0004": "live", "DEMO_FAIL_DOWNGRADE_0003": "1"}
    )
    assert p.returncode == 5, p.stderr
    assert "downgrade failed" in p.stderr and "restoring the backup" in p.stderr, p.stderr
    assert db_state(sqlite_url(sb.root)) == before_db and tree_hash(sb.root) == before
    assert sb.wait_version("4.0.1") == "4.0.1"


def test_sqlite_sigkill_during_long_migration_then_resume_and_rollback(
    sqlite_case: tuple[Sandbox, Path],
) -> None:
    sb, bundle = sqlite_case
    before, before_db = tree_hash(sb.root), db_state(sqlite_url(sb.root))
    env = {"DEMO_SLOW_0003": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "installer.cli", "--root", str(sb.root), "apply", str(bundle)],
        env={**os.environ, **env},
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    journal = sb.root / "var/lib/jumpkit/demo-manager/journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and '"step":"migrate"' in journal.read_text():
            break
        time.sleep(0.02)
    time.sleep(0.5)  # inside 0003's sleep
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert '"event":"done","step":"migrate"' not in journal.read_text().replace(" ", "")
    p = install("--root", sb.root, "resume")
    assert p.returncode == 0, p.stderr
    assert db_state(sqlite_url(sb.root))["alembic_version"] == (["version_num"], [("0004",)])
    assert sb.wait_version("4.1.1") == "4.1.1"
    p = install("--root", sb.root, "rollback")
    assert p.returncode == 0, p.stderr
    assert db_state(sqlite_url(sb.root)) == before_db
    assert tree_hash(sb.root) == before


def test_sigterm_during_migration_rolls_back(sqlite_case: tuple[Sandbox, Path]) -> None:
    """systemd, yum or an operator sending SIGTERM mid-apply gets a clean rollback (exit 5)."""
    sb, bundle = sqlite_case
    before, before_db = tree_hash(sb.root), db_state(sqlite_url(sb.root))
    proc = subprocess.Popen(
        [sys.executable, "-m", "installer.cli", "--root", str(sb.root), "apply", str(bundle)],
        env={**os.environ, "DEMO_SLOW_0003": "3"},
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    journal = sb.root / "var/lib/jumpkit/demo-manager/journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        journal.exists() and '"step":"migrate"' in journal.read_text()
    ):
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 5, stderr
    assert db_state(sqlite_url(sb.root)) == before_db and tree_hash(sb.root) == before
    assert sb.wait_version("4.0.1") == "4.0.1"


def test_sqlite_schema_drift_refused(sqlite_case: tuple[Sandbox, Path]) -> None:
    import sqlite3

    sb, bundle = sqlite_case
    con = sqlite3.connect(sb.root / "var/lib/demo-manager/manager.db")
    con.execute("UPDATE alembic_version SET version_num = '0001'")
    con.commit()
    con.close()
    before, before_db = tree_hash(sb.root), db_state(sqlite_url(sb.root))
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 4
    assert "is at revision 0001; the bundle migrates 0002 -> 0004 (schema drift)" in p.stderr
    assert tree_hash(sb.root) == before and db_state(sqlite_url(sb.root)) == before_db


def test_offline_sql_for_review(bundle: Path, tmp_path: Path, keys: dict[str, Path]) -> None:
    p = install(
        "--root", tmp_path, "--trust", keys["pub"], "migrations", "--sql", "--dialect", "postgresql", bundle
    )
    assert p.returncode == 0, p.stderr
    assert "ALTER TABLE items ADD COLUMN owner VARCHAR(100) DEFAULT 'admin' NOT NULL;" in p.stdout
    assert "ALTER TABLE items RENAME name TO title;" in p.stdout


def test_plan_shows_revisions(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox()
    report = json.loads(install("--root", sb.root, "plan", bundle, "--json").stdout)
    assert report["databases"][0]["revisions"] == ["0003", "0004"]
    assert report["databases"][0]["rehearsal_seconds"] == 0.5


def test_rehearsal_time_leaves_out_waits_of_the_build_host(tmp_path: Path) -> None:
    """The rehearsal's figure is signed into the manifest: a wait (a slow disk, a loaded
    machine; here a migration that sleeps 0.7 s) must not move it to another bucket."""
    from builder.migrations import estimate_bucket

    scripts = tmp_path / "scripts"
    shutil.copytree(SPECS / "demo-manager/releases/4.1.1/migrations/main", scripts)
    (scripts / "versions/0005_wait.py").write_text(
        "import time\n\nrevision = '0005'\ndown_revision = '0004'\nbranch_labels = None\n"
        "depends_on = None\n\n\ndef upgrade():\n    time.sleep(0.7)\n\n\n"
        "def downgrade():\n    pass\n"
    )
    p = subprocess.run(
        [sys.executable, "-m", "builder.rehearse", str(scripts), "0002", "0005"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["ok"], result
    assert estimate_bucket(result["seconds"]) == 0.5, result  # wall time would say 1.0


def test_rehearsal_time_is_bucketed_for_reproducible_builds() -> None:
    from builder.migrations import estimate_bucket

    assert [estimate_bucket(x) for x in (0.0, 0.04, 0.5, 0.6, 1.5, 4.0, 9.0, 11.0, 120.0)] == [
        0.5,
        0.5,
        0.5,
        1.0,
        2.0,
        5.0,
        10.0,
        20.0,
        200.0,
    ]


# --- builder: graph and rehearsal ----------------------------------------------------------


def test_build_refuses_branching_revisions(tmp_path: Path, keys: dict[str, Path]) -> None:
    specs = fixture_specs(tmp_path)
    versions = specs / "demo-manager/releases/4.1.1/migrations/main/versions"
    (versions / "0004b_branch.py").write_text(
        'revision = "0004b"\ndown_revision = "0003"\n\n'
        "def upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n"
    )
    p = build(
        "--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", tmp_path / "o"
    )
    assert p.returncode == 2
    assert "several heads" in p.stderr and "0004b" in p.stderr


def test_rehearsal_refuses_imports_the_installer_lacks(tmp_path: Path, keys: dict[str, Path]) -> None:
    specs = fixture_specs(tmp_path)
    m = specs / "demo-manager/releases/4.1.1/migrations/main/versions/0004_items_title.py"
    m.write_text("import yaml  # not shipped by the installer\n" + m.read_text())
    p = build(
        "--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", tmp_path / "o"
    )
    assert p.returncode == 1
    assert "imports 'yaml'" in p.stderr and "rehearsal of main" in p.stderr


def test_a_migration_importing_what_is_not_installed_names_its_file(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """#35 item 10: alembic loads revisions in the builder's own process; a module that is
    not installed was 'internal error: ModuleNotFoundError' (exit 1)."""
    specs = fixture_specs(tmp_path)
    m = specs / "demo-manager/releases/4.1.1/migrations/main/versions/0004_items_title.py"
    m.write_text("import jumpkit_no_such_module  # not installed anywhere\n" + m.read_text())
    p = build(
        "--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", tmp_path / "o"
    )
    assert p.returncode == 2, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert "migration 0004_items_title.py imports 'jumpkit_no_such_module'" in line and "alembic" in line, (
        line
    )
    assert "internal error" not in p.stderr


def test_rehearsal_catches_a_broken_downgrade(tmp_path: Path, keys: dict[str, Path]) -> None:
    specs = fixture_specs(tmp_path)
    m = specs / "demo-manager/releases/4.1.1/migrations/main/versions/0003_items_owner.py"
    m.write_text(m.read_text().replace('        batch.drop_column("owner")', "        pass"))
    p = build(
        "--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", tmp_path / "o"
    )
    assert p.returncode == 1
    assert "rehearsal of main" in p.stderr


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_admin() -> Iterator[str]:
    with postgres.cluster() as url:
        yield url


@pytest.fixture
def pg_case(tmp_path: Path, keys: dict[str, Path], pg_admin: str) -> tuple[Path, Path, str]:
    specs = fixture_specs(tmp_path, postgres_url_env=True)
    bundle = build_bundle(specs, keys, tmp_path / "dist")
    url = postgres.create_database(pg_admin)
    work = tmp_path / "scripts"
    shutil.copytree(specs / "demo-manager/releases/4.0.1/migrations/main", work)
    upgrade(work, url, "0002")
    from sqlalchemy import create_engine, pool, text

    from installer.migrate import with_driver

    with create_engine(with_driver(url), poolclass=pool.NullPool).begin() as c:
        c.execute(text("INSERT INTO items (id, name) VALUES (1, 'alpha'), (2, 'beta')"))
    root = tmp_path / "root"
    p = build("sandbox", "--specs", specs, "--version", "4.0.1", "--root", root, "--trust", keys["pub"])
    assert p.returncode == 0, p.stderr
    return root, bundle, url


def test_pg_apply_and_rollback_through_the_frozen_installer(
    pg_case: tuple[Path, Path, str], frozen: Path
) -> None:
    """The binary's own PostgreSQL driver (pg8000, frozen in) against a real server."""
    root, bundle, url = pg_case
    before, before_db = tree_hash(root), db_state(url)
    env = {**os.environ, "DEMO_DB_URL": url}
    p = subprocess.run([frozen, "--root", root, "apply", bundle], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert db_state(url)["alembic_version"] == (["version_num"], [("0004",)])
    p = subprocess.run([frozen, "--root", root, "rollback"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert db_state(url) == before_db and tree_hash(root) == before


def test_pg_apply_with_pg_dump_backup_and_rollback(pg_case: tuple[Path, Path, str]) -> None:
    root, bundle, url = pg_case
    before, before_db = tree_hash(root), db_state(url)
    p = install("--root", root, "apply", bundle, env={"DEMO_DB_URL": url})
    assert p.returncode == 0, p.stderr
    assert "backup pg_dump" in p.stderr
    state = db_state(url)
    assert state["alembic_version"] == (["version_num"], [("0004",)])
    assert state["items"][1] == [("1", "alpha", "0", "migrated-alpha"), ("2", "beta", "0", "migrated-beta")]  # type: ignore[index]
    assert (root / "var/lib/jumpkit/demo-manager/backup/demo-manager-4.0.1-to-4.1.1/db/main/pg.dump").exists()
    # the password never reaches a log, the journal or status
    leaks = [
        p.stderr,
        (root / "var/lib/jumpkit/demo-manager/journal.jsonl").read_text(),
        (root / "var/lib/jumpkit/demo-manager/status.json").read_text(),
    ]
    assert not any(postgres.PASSWORD in text for text in leaks)
    p = install("--root", root, "rollback", env={"DEMO_DB_URL": url})
    assert p.returncode == 0, p.stderr
    assert db_state(url) == before_db and tree_hash(root) == before


def test_pg_migration_failing_halfway_rolls_back(pg_case: tuple[Path, Path, str]) -> None:
    root, bundle, url = pg_case
    before, before_db = tree_hash(root), db_state(url)
    p = install("--root", root, "apply", bundle, env={"DEMO_DB_URL": url, "DEMO_FAIL_0004": "1"})
    assert p.returncode == 5, p.stderr
    assert postgres.PASSWORD not in p.stderr
    assert db_state(url) == before_db and tree_hash(root) == before


def test_pg_failed_downgrade_falls_back_to_pg_restore(pg_case: tuple[Path, Path, str]) -> None:
    root, bundle, url = pg_case
    before_db = db_state(url)
    env = {"DEMO_DB_URL": url, "DEMO_FAIL_0004": "1", "DEMO_FAIL_DOWNGRADE_0003": "1"}
    p = install("--root", root, "apply", bundle, env=env)
    assert p.returncode == 5, p.stderr
    assert "restoring the backup" in p.stderr
    assert db_state(url) == before_db


def test_pg_sigkill_between_revisions_then_resume(pg_case: tuple[Path, Path, str]) -> None:
    root, bundle, url = pg_case
    before_db = db_state(url)
    p = install(
        "--root", root, "apply", bundle, env={"DEMO_DB_URL": url, "JUMPKIT_FAILPOINT": "migrate:revision@1"}
    )
    assert p.returncode == -9
    p = install("--root", root, "resume", env={"DEMO_DB_URL": url})
    assert p.returncode == 0, p.stderr
    assert db_state(url)["alembic_version"] == (["version_num"], [("0004",)])
    p = install("--root", root, "rollback", env={"DEMO_DB_URL": url})
    assert p.returncode == 0, p.stderr
    assert db_state(url) == before_db


def test_pg_sigkill_during_long_migration_then_resume(pg_case: tuple[Path, Path, str]) -> None:
    root, bundle, url = pg_case
    before_db = db_state(url)
    env = {**os.environ, "DEMO_DB_URL": url, "DEMO_SLOW_0003": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "installer.cli", "--root", str(root), "apply", str(bundle)],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    journal = root / "var/lib/jumpkit/demo-manager/journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        journal.exists() and '"step":"migrate"' in journal.read_text()
    ):
        time.sleep(0.02)
    time.sleep(0.5)  # inside 0003's sleep, its transaction open
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    p = install("--root", root, "resume", env={"DEMO_DB_URL": url})
    assert p.returncode == 0, p.stderr
    assert db_state(url)["alembic_version"] == (["version_num"], [("0004",)])
    p = install("--root", root, "rollback", env={"DEMO_DB_URL": url})
    assert p.returncode == 0, p.stderr
    assert db_state(url) == before_db


def test_pg_schema_drift_refused(pg_case: tuple[Path, Path, str]) -> None:
    root, bundle, url = pg_case
    from sqlalchemy import create_engine, pool, text

    from installer.migrate import with_driver

    with create_engine(with_driver(url), poolclass=pool.NullPool).begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '0003'"))
    before, before_db = tree_hash(root), db_state(url)
    p = install("--root", root, "apply", bundle, env={"DEMO_DB_URL": url})
    assert p.returncode == 4
    assert "is at revision 0003" in p.stderr and postgres.PASSWORD not in p.stderr
    assert tree_hash(root) == before and db_state(url) == before_db


def test_migrations_loaded_before_the_outage_upgrade_the_same_and_create_nothing(tmp_path: Path) -> None:
    """migrate.prepare (run before the stop) loads the revision files; the upgrade through
    it reaches the same revision with the same schema as the cold path, and prepare never
    creates a SQLite file (a jump may introduce the database)."""
    from installer.migrate import current_revision, prepare

    src = SPECS / "demo-manager/releases/4.1.1/migrations/main"
    schemas = {}
    for mode in ("cold", "warm"):
        scripts = tmp_path / mode / "m"
        shutil.copytree(src, scripts)
        db = tmp_path / mode / "x.db"
        url = f"sqlite:///{db}"
        warm = prepare(scripts, url) if mode == "warm" else None
        assert not db.exists(), "prepare created the database file"
        assert (warm is not None) == (mode == "warm")
        seen: list[Any] = []
        upgrade(scripts, url, "0004", lambda rev, up, seen=seen: seen.append(rev), warm)
        assert current_revision(url) == "0004" and seen == ["0001", "0002", "0003", "0004"], seen
        with contextlib.closing(sqlite3.connect(db)) as conn:
            schemas[mode] = sorted(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall())
    assert schemas["cold"] == schemas["warm"]
    assert prepare(tmp_path / "nowhere", f"sqlite:///{tmp_path}/y.db") is None  # the upgrade reports it


def test_a_jump_that_keeps_the_schema_touches_no_database_in_the_window(
    sandbox: Callable[..., Sandbox], keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo jump with 4.0.1's migrations on both sides (0002 -> 0002): the database is
    backed up before the stop but not loaded, rehearsed or read in the window, and the
    migrate step's records ride with the next step's write (no fsync of their own)."""
    from installer import migrate
    from installer.engine import Engine
    from installer.options import Options
    from tests.helpers import journal_writes

    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs, symlinks=True)
    mig = specs / "demo-manager/releases"
    shutil.rmtree(mig / "4.1.1/migrations")
    shutil.copytree(mig / "4.0.1/migrations", mig / "4.1.1/migrations")
    out = tmp_path / "dist"
    p = build(
        "--specs",
        specs,
        "--from",
        "4.0.1",
        "--to",
        "4.1.1",
        "--key",
        keys["key"],
        "--out",
        out,
        "--no-installer",
    )
    assert p.returncode == 0, p.stderr
    sb = sandbox(specs=specs)
    before = db_state(sqlite_url(sb.root))
    writes = journal_writes(monkeypatch)

    def no_read(*a: Any, **k: Any) -> None:
        raise AssertionError("the revision was read in the window")

    logged: list[str] = []
    engine = Engine(Options(root=sb.root), log=logged.append)
    monkeypatch.setattr("installer.steps.current_revision", no_read)
    monkeypatch.setattr(migrate, "prepare", no_read)
    doc = engine.apply([out / "demo-manager-4.0.1-to-4.1.1.zip"])
    assert doc.status == "finished"
    assert "database main: stays at 0002, no revision to run" in logged, logged
    assert not any("rehears" in line for line in logged)
    assert db_state(sqlite_url(sb.root)) == before
    assert ["Done:swap-files", "Begin:migrate", "Done:migrate", "Begin:swap-configs"] in writes, writes
