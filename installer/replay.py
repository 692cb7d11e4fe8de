"""Rehearse a SQLite upgrade before the outage; replay it, checked, inside the window.

Why: the window (services stopped until healthy) should hold the statements of a
migration, not alembic's and SQLAlchemy's Python around them. The demo jump's two
``batch_alter_table`` revisions took 10-12 ms in the window with every script loaded
beforehand, of which the 30 SQLite statements and two commits are ~2 ms (measured here):
the rest is reflection, DDL compilation and alembic's bookkeeping, the same on every run.

How:

- :func:`rehearse` (before the stop, :mod:`installer.rehearsal`) upgrades a copy of the
  database (:func:`scratch_copy`) through the loaded scripts, over a recording DBAPI
  connection: each statement with its parameters, each value the migration could have
  read from the database (result rows and column names, ``rowcount`` and ``lastrowid``
  when read), commits, rollbacks and each revision reached, in order. An audit hook
  watches the rehearsal's thread: an event off :data:`ALLOWED_EVENTS` (a file opened
  outside the code, a process, a socket, another database connection, a sleep) is refused
  there, before it acts, and makes the rehearsal not replayable, as does a statement that
  fails and is caught by the migration. So a migration that touches anything but its
  database runs once, live, as before. A migration that fails on its own
  (:class:`MigrationFails`) would fail live too: the caller refuses the apply.
- :func:`replay` (in the window) runs the same statements in order on the live database
  and compares every value the rehearsal read with what the database returns now. Equal
  all through means the migration, a function of what it read, would have issued these
  same statements (clock and randomness aside: the rehearsal fixed them a few seconds
  earlier), so the database ends where a live upgrade would have left it. The first
  difference (another revision, a changed schema, a row the service wrote since the
  backup) rolls back the open transaction and is returned: revisions committed before it
  (none, in one transaction) stay, and the caller migrates live from there.

The revisions are replayed in one transaction (:func:`one_transaction`) when every
statement may run inside one, as SQLite's DDL may: a commit costs ~0.35 ms of fsyncs here,
and the demo's two revisions replayed in 1.25 ms instead of 1.99 ms (medians of 15); a
jump of N revisions saves N-1 commits. The schema then moves all or nothing, which recovery
already reads from the database itself. ``reached`` is still called where alembic calls it
(after each revision's statements), so the journal notes and the ``migrate:revision``
failpoints come at the same points of a replay as of a live upgrade. A recording holding a
statement that acts differently inside a transaction (``VACUUM``, ``ATTACH``, a ``PRAGMA``
that sets something) keeps a transaction per revision.

Only SQLite: a copy is a file copy (PostgreSQL would need a second database), and a
database above :data:`REHEARSE_MAX_BYTES` is not rehearsed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, SupportsIndex

from installer.migrate import Warm, current_revision, rehearsal_warm, upgrade

REHEARSE_MAX_BYTES = 64 * 1024 * 1024
"""Above this a database is migrated live. A rehearsal costs a copy and one more run of
the migrations before the stop; what it saves is their fixed Python cost (5-8 ms for the
demo's two revisions). On a 68 MiB database those two revisions took 1.42 s (measured), so
the saving is under 1% there and the rehearsal would double the time before the stop."""

ROWS_MAX = 10_000
"""Rows a rehearsal records at most (all statements together): a migration that reads
more is migrated live, so a recording stays small in memory and quick to compare."""

ALLOWED_EVENTS = frozenset(
    {
        "builtins.id",
        "object.__getattr__",
        "object.__setattr__",
        "object.__delattr__",
        "compile",
        "exec",
        "import",
        "code.__new__",
        "function.__new__",
        "marshal.load",
        "marshal.loads",
        "sys._getframe",
        "random.seed",
    }
)
"""Audit events a rehearsed migration may raise beyond those checked one by one: reading
code (``open``, ``os.listdir``, ``os.scandir``: read-only, beneath the scripts or the
installer's own code) and the rehearsal's own connection (``sqlite3.connect``)."""


class NotReplayable(Exception):
    """The rehearsal cannot stand for the live upgrade; ``str()`` says why."""


class MigrationFails(NotReplayable):
    """The migration itself failed on the copy of this manager's data, so it would fail the
    same way live: ``revision`` (the one that failed), ``path`` (its file, relative to the
    scripts' parent), ``statement`` (the last statement that failed, if one did) and
    ``error`` (what the database or the migration said)."""

    def __init__(self, revision: str, path: str, statement: str | None, error: str) -> None:
        self.revision, self.path, self.statement, self.error = revision, path, statement, error
        at = f" at {statement}" if statement else ""
        super().__init__(f"revision {revision} ({path}) failed: {error}{at}")


@dataclass
class Statement:
    """One execution, with what the rehearsal's database answered that code could read."""

    sql: str
    params: Any
    many: bool
    names: tuple[str, ...] | None = None
    """Column names of a result set (None: the statement returned none)."""
    rows: list[Any] | None = None
    rowcount: int | None = None
    """Set when read."""
    lastrowid: int | None = None
    lastrowid_read: bool = False


@dataclass(frozen=True)
class Commit:
    """The connection committed."""


@dataclass(frozen=True)
class Rollback:
    """The connection rolled back."""


@dataclass(frozen=True)
class Reached:
    """A revision's statements ran; its commit follows."""

    revision: str


Entry = Statement | Commit | Rollback | Reached


@dataclass
class Recording:
    """A rehearsal, in order."""

    entries: list[Entry] = field(default_factory=list)
    seconds: float = 0.0
    """The whole rehearsal, the scripts' Python included."""
    sql_seconds: float = 0.0
    """Its statements alone: about what the window's replay takes."""

    @property
    def statements(self) -> int:
        """How many executions it holds."""
        return sum(isinstance(e, Statement) for e in self.entries)

    @property
    def revisions(self) -> list[str]:
        """The revisions it reached, in order."""
        return [e.revision for e in self.entries if isinstance(e, Reached)]


class _Recorder:
    """What one rehearsal records, and why it cannot be replayed (first reason wins)."""

    def __init__(self, database: str, code: Iterable[str]) -> None:
        self.database = os.path.realpath(database)
        self.code = tuple(os.path.join(os.path.realpath(c), "") for c in code)
        self.thread = threading.get_ident()
        self.recording = Recording()
        self.rows = 0
        self.refused: str | None = None
        self.stopped = False
        """The rehearsal was stopped by this recorder (not by the migration's own error)."""
        self.failed: tuple[str, str] | None = None
        """The last statement that failed, and the database's error."""

    def refuse(self, why: str) -> None:
        if self.refused is None:
            self.refused = why

    def stop(self, why: str) -> NotReplayable:
        """Refuse, and the error that stops the rehearsal there."""
        self.refuse(why)
        self.stopped = True
        return NotReplayable(why)

    def add(self, entry: Entry) -> None:
        self.recording.entries.append(entry)

    def _code(self, path: Any) -> bool:
        if not isinstance(path, str | bytes | os.PathLike):
            return False
        real = os.path.realpath(os.fsdecode(path))
        return any(real.startswith(c) or real == c[:-1] for c in self.code)

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if threading.get_ident() == self.thread and event not in ALLOWED_EVENTS:
            why = self._why(event, args)
            if why is not None:
                raise self.stop(why)  # the rehearsal stops there: nothing outside is touched

    def _why(self, event: str, args: tuple[Any, ...]) -> str | None:
        """Why ``event`` (not in :data:`ALLOWED_EVENTS`) makes the rehearsal unreplayable."""
        if event == "open":
            path, mode, flags = (*args, None, None)[:3]
            writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
            reads = not (isinstance(mode, str) and set(mode) & set("wxa+"))
            reads = reads and not (isinstance(flags, int) and flags & writes)
            return None if reads and self._code(path) else f"the migration opened {path!r}"
        if event in ("os.listdir", "os.scandir"):
            return None if args and self._code(args[0]) else f"the migration listed {args[:1]!r}"
        if event == "sqlite3.connect":
            mine = args and os.path.realpath(str(args[0])) == self.database
            return None if mine else "the migration opened another database connection"
        if event == "sqlite3.connect/handle":
            mine = args and isinstance(args[0], _Connection)
            return None if mine else "the migration opened another database connection"
        return f"the migration raised the audit event {event}"


_watching: _Recorder | None = None
_hooked = False
_real_sleep = time.sleep


def _sleep(seconds: float | SupportsIndex) -> None:
    """time.sleep while a rehearsal runs (Python 3.11 raises no audit event for it): a
    migration that waits is waiting for something outside its database (0 waits for
    nothing)."""
    rec = _watching
    if rec is not None and threading.get_ident() == rec.thread and float(seconds) > 0:
        raise rec.stop("the migration sleeps (time.sleep)")
    _real_sleep(seconds)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    rec = _watching
    if rec is not None:
        rec.audit(event, args)


def _watch(rec: _Recorder | None) -> None:
    """Send the process's audit events to ``rec`` (None: to nobody). The hook is added
    once, on the first rehearsal, and cannot be removed (:func:`sys.addaudithook`); a sleep
    is refused through ``time.sleep`` itself while ``rec`` watches."""
    global _watching, _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True
    _watching = rec
    time.sleep = _sleep if rec is not None else _real_sleep


class _Cursor(sqlite3.Cursor):
    """Records each execution and the values read from it; serves the rows it recorded."""

    recorder: _Recorder
    _entry: Statement | None = None
    _buffer: Iterator[Any] = iter(())

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        return self._recorded(Statement(sql, parameters, many=False), sqlite3.Cursor.execute)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> _Cursor:
        return self._recorded(Statement(sql, list(seq_of_parameters), many=True), sqlite3.Cursor.executemany)

    def _recorded(self, entry: Statement, run: Callable[[sqlite3.Cursor, str, Any], Any]) -> _Cursor:
        """Record ``entry``, run it through sqlite3's own method, record what it returned."""
        self._begin(entry)
        t0 = time.perf_counter()
        try:
            run(self, entry.sql, entry.params)
        except sqlite3.Error as e:
            self.recorder.refuse(f"a statement failed in the rehearsal ({e})")
            self.recorder.failed = (entry.sql, str(e))
            raise
        finally:
            self.recorder.recording.sql_seconds += time.perf_counter() - t0
        self._results()
        return self

    def executescript(self, sql_script: str, /) -> _Cursor:
        self.recorder.refuse("the migration ran a script (executescript)")
        super().executescript(sql_script)
        return self

    def _begin(self, entry: Statement) -> None:
        self._entry = entry
        self._buffer = iter(())
        self.recorder.add(entry)

    def _results(self) -> None:
        entry = self._entry
        assert entry is not None
        if self.description is not None:
            rows: list[Any] = []
            while chunk := super().fetchmany(1000):
                rows += chunk
                self.recorder.rows += len(chunk)
                if self.recorder.rows > ROWS_MAX:  # stop there: a recording stays small
                    raise self.recorder.stop(f"the migration read more than {ROWS_MAX} rows")
            entry.names = tuple(d[0] for d in self.description)
            entry.rows = rows
            self._buffer = iter(rows)

    def fetchone(self) -> Any:
        return next(self._buffer, None)

    def fetchmany(self, size: int | None = None) -> list[Any]:
        n = self.arraysize if size is None else size
        return [row for _, row in zip(range(n), self._buffer, strict=False)]

    def fetchall(self) -> list[Any]:
        return list(self._buffer)

    def __iter__(self) -> _Cursor:
        return self

    def __next__(self) -> Any:
        return next(self._buffer)

    @property
    def rowcount(self) -> int:
        value = int(super().rowcount)
        if self._entry is not None and self._entry.rowcount is None:
            self._entry.rowcount = value
        return value

    @property
    def lastrowid(self) -> int | None:
        value = super().lastrowid
        if self._entry is not None and not self._entry.lastrowid_read:
            self._entry.lastrowid, self._entry.lastrowid_read = value, True
        return value


class _Connection(sqlite3.Connection):
    """The rehearsal's DBAPI connection (``sqlite3.connect(factory=...)``)."""

    recorder: _Recorder

    def cursor(self, factory: Any = None) -> _Cursor:  # type: ignore[override]
        cur = super().cursor(_Cursor)
        cur.recorder = self.recorder
        return cur

    def commit(self) -> None:
        self.recorder.add(Commit())
        super().commit()

    def rollback(self) -> None:
        self.recorder.add(Rollback())
        super().rollback()

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        self.recorder.refuse("the migration ran a script (executescript)")
        return super().executescript(sql_script)


def _code_roots(script_dir: Path) -> list[str]:
    """Where code is read from: the scripts, the standard library and site-packages, the
    frozen installer's own files."""
    roots = [str(script_dir)]
    paths = sysconfig.get_paths()
    roots += [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]
    meipass = getattr(sys, "_MEIPASS", None)
    if meipass:
        roots += [meipass, sys.executable]
    return roots


def remove(db: Path) -> None:
    """Remove a scratch SQLite file and what SQLite keeps beside it."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


_INTROSPECTION = re.compile(
    r"PRAGMA\s+(?:\w+\.)?(?:table_x?info|index_x?info|index_list|foreign_key_list)\s*\(", re.IGNORECASE
)
"""PRAGMAs that only read the schema (alembic's batch mode reflects the table with them):
the same inside a transaction, where they see its own changes, as the rehearsal's did."""

_NOT_INSIDE = frozenset({"VACUUM", "ATTACH", "DETACH", "BEGIN", "COMMIT", "END", "ROLLBACK", "PRAGMA"})


def _verb(sql: str) -> str:
    words = sql.split(None, 1)
    return words[0].upper().rstrip(";") if words else ""


def _joinable(sql: str) -> bool:
    """Whether ``sql`` acts the same inside a transaction opened by an earlier revision."""
    verb = _verb(sql)
    if verb == "PRAGMA":
        return _INTROSPECTION.match(sql.lstrip()) is not None
    return verb not in _NOT_INSIDE


def one_transaction(entries: list[Entry]) -> list[Entry]:
    """``entries`` with each revision's commit and the next revision's ``BEGIN`` taken out,
    so the replay commits once; ``entries`` unchanged when a statement of the joined
    transactions may not run inside one opened earlier (see :func:`_joinable`), or one of
    them rolls back."""

    def begins(i: int) -> bool:
        e = entries[i] if 0 <= i < len(entries) else None
        return isinstance(e, Statement) and _verb(e.sql) == "BEGIN"

    joins = {i for i, e in enumerate(entries) if isinstance(e, Commit) and begins(i + 1)}
    if not joins:
        return entries
    opened = max((i for i in range(min(joins)) if begins(i)), default=None)  # the first one's
    closed = next(
        (i for i in range(max(joins) + 1, len(entries)) if isinstance(entries[i], Commit | Rollback)), None
    )
    if opened is None or closed is None:
        return entries
    for i in range(opened + 1, closed + 1):
        e = entries[i]
        if isinstance(e, Rollback) or (
            isinstance(e, Statement) and i - 1 not in joins and not _joinable(e.sql)
        ):
            return entries
        if isinstance(e, Commit) and i not in joins and i != closed:
            return entries
    return [e for i, e in enumerate(entries) if i not in joins and i - 1 not in joins]


def scratch_copy(database: Path, copy: Path) -> None:
    """Copy the SQLite file ``database`` to ``copy`` for a rehearsal (the online backup
    API: consistent while the services write to it).

    Raises:
        NotReplayable: it is larger than :data:`REHEARSE_MAX_BYTES`, there is no room for
            the copy, or it cannot be read.
    """
    size = database.stat().st_size
    if size > REHEARSE_MAX_BYTES:
        raise NotReplayable(f"it is larger than {REHEARSE_MAX_BYTES // 2**20} MiB")
    if shutil.disk_usage(copy.parent).free < 2 * size + 2**20:
        raise NotReplayable("there is no room for a copy")
    try:
        with (
            contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as src,
            contextlib.closing(sqlite3.connect(copy)) as out,
        ):
            src.backup(out)
    except sqlite3.Error as e:
        remove(copy)
        raise NotReplayable(f"it could not be copied ({e})") from e


def rehearse(warm: Warm, script_dir: Path, copy: Path, from_rev: str | None, to_rev: str) -> Recording:
    """Upgrade ``copy`` (a scratch SQLite file, :func:`scratch_copy`) from ``from_rev`` to
    ``to_rev`` with ``warm``'s loaded scripts, recording it for :func:`replay`. The copy is
    left as the upgrade left it (a chain rehearses its next jump on it).

    Raises:
        MigrationFails: a migration failed on its own (a statement the data refuses, an
            exception of its code): the live upgrade would fail the same way.
        NotReplayable: the copy is at another revision, or the rehearsal did something a
            replay cannot stand for.
    """
    from sqlalchemy import create_engine, pool

    t0 = time.perf_counter()
    rec = _Recorder(str(copy), _code_roots(script_dir))
    factory = type("_RecordingConnection", (_Connection,), {"recorder": rec})
    url = f"sqlite:///{copy}"
    engine = create_engine(url, poolclass=pool.StaticPool, connect_args={"factory": factory})
    w = rehearsal_warm(warm, url, engine)
    _watch(rec)
    try:
        start = current_revision(url, warm=w)
        if start != from_rev:
            raise NotReplayable(f"it is at {start}, not {from_rev}")
        upgrade(script_dir, url, to_rev, lambda rev, _up: rec.add(Reached(str(rev))), w)
    except NotReplayable:
        raise
    except Exception as e:
        if rec.stopped:  # our refusal, wrapped by the migration or alembic
            raise NotReplayable(rec.refused) from e
        raise _fails(warm, script_dir, from_rev, to_rev, rec, e) from e
    finally:
        _watch(None)
        engine.dispose()
    reached = rec.recording.revisions
    if rec.refused is not None:
        raise NotReplayable(rec.refused)
    if not reached or reached[-1] != to_rev:
        raise NotReplayable(f"the rehearsal did not reach {to_rev}")
    rec.recording.seconds = time.perf_counter() - t0
    rec.recording.entries = one_transaction(rec.recording.entries)
    return rec.recording


def _fails(
    warm: Warm, script_dir: Path, from_rev: str | None, to_rev: str, rec: _Recorder, e: BaseException
) -> MigrationFails:
    """What failed: the first revision of the path not reached, its file, the statement."""
    done = set(rec.recording.revisions)
    path = [r.revision for r in reversed(list(warm.script.iterate_revisions(to_rev, from_rev or "base")))]
    revision = next((r for r in path if r not in done), to_rev)
    script = warm.script.get_revision(revision)
    try:
        where = Path(script.path).resolve().relative_to(script_dir.resolve().parent.parent).as_posix()
    except ValueError:
        where = Path(script.path).name
    cause = e.__cause__ if e.__cause__ is not None else e
    from_database = any(isinstance(x, sqlite3.Error) for x in (cause, getattr(cause, "orig", None)))
    statement: str | None = None
    if rec.failed is not None and from_database:  # not one the migration caught before
        sql, error = rec.failed
        statement = " ".join(sql.split())
        statement = statement if len(statement) <= 200 else statement[:197] + "..."
    else:
        error = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    return MigrationFails(revision, where, statement, error)


def _run(conn: sqlite3.Connection, st: Statement) -> str | None:
    """Execute ``st``; what differs from the rehearsal, or None."""
    cur = conn.cursor()
    try:
        if st.many:
            cur.executemany(st.sql, st.params)
        else:
            cur.execute(st.sql, st.params)
        if st.names is not None:
            names = tuple(d[0] for d in cur.description or ())
            if names != st.names or cur.fetchall() != st.rows:
                return f"{_short(st.sql)} returned other rows"
        if st.rowcount is not None and cur.rowcount != st.rowcount:
            return f"{_short(st.sql)} changed {cur.rowcount} row(s), not {st.rowcount}"
        if st.lastrowid_read and cur.lastrowid != st.lastrowid:
            return f"{_short(st.sql)} inserted row {cur.lastrowid}, not {st.lastrowid}"
        return None
    except sqlite3.Error as e:
        return f"{_short(st.sql)} failed ({e})"
    finally:
        cur.close()


def _end(conn: sqlite3.Connection, entry: Commit | Rollback) -> str | None:
    """Commit or roll back; what failed, or None."""
    try:
        if isinstance(entry, Commit):
            conn.commit()
        else:
            conn.rollback()
        return None
    except sqlite3.Error as e:
        return f"the {'commit' if isinstance(entry, Commit) else 'rollback'} failed ({e})"


def _short(sql: str) -> str:
    text = " ".join(sql.split())
    return repr(text if len(text) <= 60 else text[:57] + "...")


def replay(engine: Any, recording: Recording, reached: Callable[[Any, bool], None]) -> str | None:
    """Run ``recording`` on the database of ``engine`` (the live one, services stopped),
    checking each value the rehearsal read. None when it ran through; otherwise what
    differed first, with the open transaction rolled back (revisions committed before it
    stay; in one transaction, none is): the caller then migrates live from where the
    database is.

    Raises:
        Exception: whatever ``reached`` raises (the open transaction is rolled back first).
    """
    raw = engine.raw_connection()
    conn: sqlite3.Connection = raw.driver_connection
    clean = False
    try:
        for entry in recording.entries:
            if isinstance(entry, Statement):
                diff = _run(conn, entry)
            elif isinstance(entry, Reached):
                reached(entry.revision, True)
                continue
            else:
                diff = _end(conn, entry)
            if diff is not None:
                if conn.in_transaction:
                    conn.rollback()
                return diff
        clean = True
        return None
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    finally:
        if clean:
            raw.close()
        else:  # the live upgrade gets a new connection, not one a replayed PRAGMA has set
            raw.invalidate()
