"""Schema migrations: the adapter between the installer and alembic/SQLAlchemy.

jumpkit supplies the alembic ``env.py`` (written into the staged script dir), so every
bundle migrates the same way: one transaction per migration (SQLite included: DDL runs
inside BEGIN ... COMMIT), each revision reported as it is reached, the URL passed in
memory and never logged with its password.

Migrations run inside the frozen installer, so they may import only
:data:`MIGRATION_MODULES`: ``alembic``, ``sqlalchemy`` and a fixed list of standard-library
modules, all frozen into ``bundle-install`` (the builder's rehearsal refuses any other).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from installer.beneath import resolve
from installer.errors import JumpkitError, MigrationError, PreconditionError
from installer.format import Database, Manifest
from installer.health import resolve_lookup

if TYPE_CHECKING:
    from installer.archive import Bundle

MIGRATION_STDLIB = (
    "__future__",
    "abc",
    "base64",
    "binascii",
    "bisect",
    "calendar",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "graphlib",
    "hashlib",
    "heapq",
    "hmac",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "math",
    "operator",
    "os",
    "pathlib",
    "random",
    "re",
    "secrets",
    "string",
    "struct",
    "sys",
    "textwrap",
    "time",
    "types",
    "typing",
    "uuid",
    "warnings",
    "zlib",
    "zoneinfo",
)
MIGRATION_MODULES = frozenset(MIGRATION_STDLIB) | {"alembic", "sqlalchemy"}
"""Top-level modules a migration may import: exactly what the frozen installer ships for it."""

ENV_PY = '''"""alembic env.py supplied by jumpkit (do not edit: the installer rewrites it)."""
from alembic import context

config = context.config
url = config.attributes["url"]


def _on_apply(ctx, step, heads, run_args):
    callback = config.attributes.get("on_revision")
    if callback is not None:
        callback(step.up_revision_id if step.is_upgrade else step.down_revision_ids, step.is_upgrade)


if context.is_offline_mode():
    context.configure(url=url, literal_binds=True, transaction_per_migration=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()
else:
    # made by the installer (installer/migrate.py: own_transactions), before the outage when it can
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True,
                          render_as_batch=True, on_version_apply=_on_apply)
        with context.begin_transaction():
            context.run_migrations()
'''


def own_transactions(engine: Any) -> Any:
    """``engine``, with SQLite's DDL inside BEGIN ... COMMIT (pysqlite would commit before
    each DDL statement): one transaction per migration there too."""
    if engine.dialect.name == "sqlite":
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

    return engine


PG_DRIVER = "pg8000"
"""The PostgreSQL driver the installer ships (pure Python: nothing native to unpack)."""


def with_driver(url: str) -> str:
    """``url`` with the PostgreSQL driver the installer ships, whatever driver it names
    (``postgresql://`` would mean psycopg2, which is not there)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except ArgumentError:
        return url
    if u.get_backend_name() == "postgresql" and u.get_driver_name() != PG_DRIVER:
        return u.set(drivername=f"postgresql+{PG_DRIVER}").render_as_string(hide_password=False)
    return url


def database_url(db: Database, root: Path) -> str:
    """The URL of ``db`` on this target, from its lookup.

    Raises:
        PreconditionError: the lookup finds nothing.
    """
    value = resolve_lookup(db.url, root)
    if not value:
        where = f"${db.url.env}" if db.url.env else f"{db.url.file} [{db.url.key}]"
        raise PreconditionError(f"database {db.name}: no URL in {where}")
    if db.url_kind == "sqlite-path":
        return f"sqlite:///{sqlite_beneath(db.name, value, root)}"
    return value


def sqlite_beneath(name: str, value: str, root: Path) -> Path:
    """Where the SQLite file ``value`` of a ``sqlite-path`` lookup is: beneath the root
    (an absolute path is the root's: with ``--root /`` it is the same path), symlinks
    followed only while they stay inside, so no backup, migration or restore opens a file
    outside the product's tree.

    Raises:
        PreconditionError: the path climbs out of the root (``..``).
        RootLinkError: a symlink on its way leads out of the root.
    """
    rel = value.lstrip("/")
    if not rel or ".." in rel.split("/"):
        raise PreconditionError(f"database {name}: the SQLite path {value!r} is not a file beneath the root")
    canonical, _ = resolve(root, rel, follow_last=True)
    return root / canonical


def safe_url(url: str) -> str:
    """The URL with its password masked, for logs and errors."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database URL>"


def _config(
    script_dir: Path,
    url: str,
    on_revision: Callable[[Any, bool], None] | None = None,
    output: io.StringIO | None = None,
    *,
    pooled: bool = False,
) -> Any:
    """alembic's config for ``script_dir`` (env.py written there). Online, with the engine
    env.py migrates through (creating it never connects): one connection kept by a pool
    when ``pooled`` (:class:`Warm`), else one per connect."""
    from alembic.config import Config

    (script_dir / "env.py").write_text(ENV_PY)
    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", str(script_dir))
    cfg.attributes["url"] = with_driver(url)
    cfg.attributes["on_revision"] = on_revision
    if output is None:
        from sqlalchemy import create_engine, pool

        kw = {} if pooled else {"poolclass": pool.NullPool}
        cfg.attributes["engine"] = own_transactions(create_engine(with_driver(url), **kw))
    return cfg


def preload() -> None:
    """Import alembic's command machinery now, before the outage (it costs ~0.2 s)."""
    import alembic.command
    import alembic.config
    import alembic.script  # noqa: F401


def current_revision(url: str, *, missing_ok: bool = False, warm: Warm | None = None) -> str | None:
    """The revision in ``alembic_version`` (None for an empty database, and for a SQLite
    file that does not exist when ``missing_ok``: a jump that introduces the database).
    Never creates a SQLite file (connecting would). Through ``warm``'s engine when given.

    Raises:
        MigrationError: cannot connect or read; a SQLite file that does not exist.
    """
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, pool
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    u = make_url(url)
    file = (
        u.database if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:") else None
    )
    if file is not None and not os.path.isfile(file):  # connecting would create it
        if missing_ok:
            return None
        raise MigrationError(f"the database file {file} does not exist")
    try:
        engine = warm.engine if warm is not None else create_engine(with_driver(url), poolclass=pool.NullPool)
        with engine.connect() as conn:
            heads = MigrationContext.configure(conn).get_current_heads()
    except SQLAlchemyError as e:
        raise MigrationError(f"cannot read the schema revision of {safe_url(url)}: {type(e).__name__}") from e
    if len(heads) > 1:
        raise MigrationError(f"{safe_url(url)} has several heads: {', '.join(heads)}")
    return heads[0] if heads else None


def revision_path(script_dir: Path, from_rev: str | None, to_rev: str) -> list[str]:
    """The revisions an upgrade from ``from_rev`` to ``to_rev`` runs, oldest first.

    Raises:
        MigrationError: the revisions do not form one linear path (names branches/merges).
    """
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory(str(script_dir))
    try:
        revs = list(script.iterate_revisions(to_rev, from_rev or "base"))
    except CommandError as e:
        raise MigrationError(f"no revision path {from_rev or 'base'} -> {to_rev}: {e}") from e
    problems = []
    for rev in revs:
        if isinstance(rev.down_revision, (tuple, list)) and len(rev.down_revision) > 1:
            problems.append(f"{rev.revision} merges {', '.join(rev.down_revision)}")
        if len(rev.nextrev) > 1:
            problems.append(f"{rev.revision} branches into {', '.join(sorted(rev.nextrev))}")
    heads = script.get_heads()
    if len(heads) > 1:
        problems.append(f"several heads: {', '.join(sorted(heads))}")
    if problems:
        raise MigrationError("revisions are not one linear path: " + "; ".join(problems))
    return [r.revision for r in reversed(revs)]


@dataclass
class Warm:
    """A database's migrations loaded before the outage (:func:`prepare`), and the engine
    that reads the revision and runs them in the window over one connection (opened by
    the revision check, kept by the pool for the upgrade, closed by :func:`settle`)."""

    cfg: Any
    script: Any
    engine: Any


def prepare(script_dir: Path, url: str) -> Warm | None:
    """Load what an upgrade needs before the outage: write env.py, read the revision files
    (alembic imports each one), import the dialect and batch mode. The window then holds
    the migrations' own work. Never connects (a SQLite file must not appear before the
    jump creates it). None when loading fails: :func:`upgrade` then loads them itself, in
    the window, and reports the error there."""
    try:
        import alembic.operations.batch  # noqa: F401 (render_as_batch)
        from alembic.script import ScriptDirectory

        cfg = _config(script_dir, url, pooled=True)
        script = ScriptDirectory.from_config(cfg)
        script.revision_map.heads  # noqa: B018 (builds the map: imports every revision file)
        return Warm(cfg, script, cfg.attributes["engine"])
    except Exception:  # any error is reported by the upgrade itself
        return None


def rehearsal_warm(warm: Warm, url: str, engine: Any) -> Warm:
    """``warm``'s loaded scripts, migrating ``url`` through ``engine`` instead (a
    rehearsal on a copy, :mod:`installer.replay`)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", warm.cfg.get_main_option("script_location"))
    cfg.attributes.update(url=url, engine=own_transactions(engine), on_revision=None)
    return Warm(cfg, warm.script, engine)


def connect_ahead(warm: Warm | None) -> None:
    """Open, before the outage, the connection the window migrates over, and leave it in
    ``warm``'s pool: SQLAlchemy's first connect (the dialect's set-up with it) took 0.38 ms
    of the window and its close 0.37 ms (medians of 8 demo applies), now before the stop
    and after the start (:func:`settle`). Only for a database that exists before the jump
    (a SQLite file must not appear before the jump creates it). An idle connection holds
    no lock. Any error is left to the window's own connect, which reports it."""
    if warm is None:
        return
    with contextlib.suppress(Exception):
        warm.engine.raw_connection().close()


def settle(warm: Warm | None) -> None:
    """Close the connection ``warm``'s engine keeps (after the upgrade, or when a step
    fails): the migrated database must be left to the services alone."""
    if warm is not None:
        warm.engine.dispose()


def upgrade(
    script_dir: Path,
    url: str,
    to_rev: str,
    on_revision: Callable[[Any, bool], None] | None = None,
    warm: Warm | None = None,
) -> None:
    """Upgrade to ``to_rev``, one transaction per migration (through ``warm``'s loaded
    scripts when given: what alembic's ``command.upgrade`` does, minus loading them).

    Raises:
        MigrationError: a migration failed (its own transaction is rolled back).
    """
    if warm is None:
        _run("upgrade", script_dir, url, to_rev, on_revision)
        return
    from alembic.runtime.environment import EnvironmentContext

    script = warm.script
    warm.cfg.attributes["on_revision"] = on_revision

    def steps(rev: Any, context: Any) -> Any:
        return script._upgrade_revs(to_rev, rev)

    def go() -> None:
        with EnvironmentContext(warm.cfg, script, fn=steps, as_sql=False, destination_rev=to_rev):
            script.run_env()

    _translated("upgrade", to_rev, url, go)


def create_at_head(script_dir: Path, url: str) -> None:
    """Create (or bring up) the database at ``url`` at the head of ``script_dir``'s
    revisions, through the same alembic path an apply takes: what a product's sandbox
    init script calls for a fresh install's database (``specs/REFERENCE.md``, SandboxSpec).
    The scripts are read from a temp copy (alembic's env.py is written beside them), so a
    release tree is left as it is.

    Raises:
        MigrationError: a migration failed.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="jumpkit-init-") as tmp:
        work = Path(tmp) / "scripts"
        shutil.copytree(script_dir, work)
        _run("upgrade", work, url, "heads", None)


def downgrade(script_dir: Path, url: str, to_rev: str | None) -> None:
    """Downgrade to ``to_rev`` (None: base).

    Raises:
        MigrationError: a downgrade failed.
    """
    _run("downgrade", script_dir, url, to_rev or "base", None)


def _run(
    what: str, script_dir: Path, url: str, rev: str, on_revision: Callable[[Any, bool], None] | None
) -> None:
    from alembic import command

    cfg = _config(script_dir, url, on_revision)
    _translated(what, rev, url, lambda: getattr(command, what)(cfg, rev))


def _translated(what: str, rev: str, url: str, go: Callable[[], None]) -> None:
    try:
        go()
    except JumpkitError:
        raise
    except Exception as e:  # alembic and migrations raise anything; translate at the boundary
        msg = str(e).replace(url, safe_url(url)).splitlines()[0][:300] if str(e) else ""
        raise MigrationError(f"{what} to {rev} failed: {type(e).__name__}: {msg}") from e


def offline_sql(script_dir: Path, url: str, from_rev: str | None, to_rev: str) -> str:
    """The SQL an upgrade would run, for a DBA to review (alembic offline mode).

    Raises:
        MigrationError: alembic cannot render it.
    """
    from alembic import command

    out = io.StringIO()
    cfg = _config(script_dir, url, None, out)
    try:
        command.upgrade(cfg, f"{from_rev or 'base'}:{to_rev}", sql=True)
    except Exception as e:
        raise MigrationError(f"cannot render offline SQL: {e}") from e
    return out.getvalue()


# --- backups ---------------------------------------------------------------------------


def backup_size(url: str) -> int:
    """An upper bound of what :func:`backup` writes: the SQLite file, or PostgreSQL's
    ``pg_database_size`` (a custom-format dump is compressed, so smaller); 0 if unknown.

    Raises:
        MigrationError: cannot connect.
    """
    from sqlalchemy import create_engine, pool, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database:
        return sum(os.path.getsize(p) for p in (u.database, u.database + "-wal") if os.path.exists(p))
    if u.get_backend_name() == "postgresql" and shutil.which("pg_dump"):
        try:
            engine = create_engine(with_driver(url), poolclass=pool.NullPool)
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
        except SQLAlchemyError as e:
            raise MigrationError(f"cannot size {safe_url(url)}: {type(e).__name__}") from e
    return 0


def backup(url: str, dest: Path) -> dict[str, str]:
    """Back up a database into ``dest`` before the outage, where the backend allows it.

    SQLite: the online backup API. PostgreSQL: ``pg_dump -Fc`` when it is installed;
    otherwise none (transactional DDL makes each migration atomic; the plan says so).

    Raises:
        MigrationError: the backup failed.
    """
    from sqlalchemy.engine import make_url

    u = make_url(url)
    dest.mkdir(parents=True, exist_ok=True)
    if u.get_backend_name() == "sqlite" and u.database:
        target = dest / "sqlite.db"
        _sqlite_copy(f"file:{u.database}?mode=ro", str(target), f"SQLite backup of {u.database}")
        return {"kind": "sqlite", "path": str(target)}
    if u.get_backend_name() == "postgresql":
        pg_dump = shutil.which("pg_dump")
        if pg_dump is None:
            return {"kind": "none", "reason": "pg_dump not installed; relying on transactional DDL"}
        target = dest / "pg.dump"
        p = subprocess.run(
            [pg_dump, "-Fc", "-f", str(target), *_pg_args(url)],
            env=_pg_env(url),
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            raise MigrationError(f"pg_dump failed: {p.stderr.strip()[-300:]}")
        return {"kind": "pg_dump", "path": str(target)}
    return {"kind": "none", "reason": f"no backup method for {u.get_backend_name()}"}


def restore(url: str, info: dict[str, str]) -> None:
    """Put a backup from :func:`backup` back.

    Raises:
        MigrationError: no usable backup, or the restore failed.
    """
    from sqlalchemy.engine import make_url

    kind = info.get("kind")
    if kind == "sqlite":
        db = make_url(url).database
        assert db is not None
        _sqlite_copy(f"file:{info['path']}?mode=ro", db, "SQLite restore")
        return
    if kind == "pg_dump":
        pg_restore = shutil.which("pg_restore") or "pg_restore"
        p = subprocess.run(
            [pg_restore, "--clean", "--if-exists", "--single-transaction", *_pg_args(url), info["path"]],
            env=_pg_env(url),
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            raise MigrationError(f"pg_restore failed: {p.stderr.strip()[-300:]}")
        return
    raise MigrationError(f"no backup to restore ({info.get('reason', kind)})")


def _sqlite_copy(src_uri: str, dst: str, what: str) -> None:
    """Copy a whole SQLite database with the online backup API (consistent while in use)."""
    try:
        src = sqlite3.connect(src_uri, uri=True)
        out = sqlite3.connect(dst)
        with out:
            src.backup(out)
        src.close()
        out.close()
    except sqlite3.Error as e:
        raise MigrationError(f"{what} failed: {e}") from e


def _pg_args(url: str) -> Sequence[str]:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    args = ["-d", str(u.database)]
    if u.host:
        args += ["-h", u.host]
    if u.port:
        args += ["-p", str(u.port)]
    if u.username:
        args += ["-U", u.username]
    return args


def _pg_env(url: str) -> dict[str, str]:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    return env


def bundle_sql(bundle: Bundle, manifest: Manifest, root: Path, dialect: str | None) -> str:
    """The offline SQL of a verified bundle's migrations, each database's scripts unpacked
    (hash-checked) to a temp dir; ``dialect`` overrides the URL found under ``root``.

    Raises:
        BundleRejectedError: a member's bytes do not match. MigrationError: alembic failed.
    """
    import tempfile

    out = []
    with tempfile.TemporaryDirectory(prefix="jumpkit-sql-") as tmp:
        unpack_migrations(bundle, manifest, Path(tmp))
        for db in manifest.databases:
            url = f"{dialect}://" if dialect else "sqlite://"
            if not dialect:
                with contextlib.suppress(JumpkitError):
                    url = database_url(db, root)
            out.append(f"-- database {db.name}: {db.from_revision} -> {db.to_revision}\n")
            out.append(offline_sql(Path(tmp) / db.script_dir, url, db.from_revision, db.to_revision))
    return "".join(out)


def unpack_migrations(bundle: Bundle, manifest: Manifest, dest: Path) -> None:
    """Unpack a verified bundle's ``migrations/`` members into ``dest`` (each hash-checked
    as it streams), as staging lays them out.

    Raises:
        BundleRejectedError: a member's bytes do not match.
    """
    from installer.archive import iter_verified

    for m in manifest.extras:
        if m.name.startswith("migrations/"):
            path = dest / m.name
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                for chunk in iter_verified(bundle, m.name, m.sha256, m.size):
                    f.write(chunk)
