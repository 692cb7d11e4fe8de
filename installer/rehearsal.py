"""Before anything stops: each SQLite database's upgrade rehearsed on a copy of this
manager's own data (:func:`installer.replay.rehearse`), by ``apply`` and by ``plan`` alike.

What comes of it, per database:

- **the migration fails there** (a statement the data refuses, an exception of its code):
  it would fail the same way live, after the services stopped, and the apply would roll
  back. So nothing stops: :class:`RehearsalFailedError` (exit 4) names the revision, its
  file, the statement and the error, and ``plan`` shows the same line under pre-flight.
- **it ran through**: its recording goes to the transaction, whose window replays it.
- **it could not be rehearsed** (larger than the cap, no room for a copy, it touches
  something beyond its database, PostgreSQL: a copy would be a second database): it
  migrates live in the window, as before, and the log says why.

A chain rehearses its jumps in order on one copy per database, so a later jump's
migrations run on what the earlier ones left, as they will in the window; after a jump
that could not be rehearsed, the later ones on that database are not either (the copy is
no longer what the window will see).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from installer.errors import RehearsalFailedError
from installer.format import Database, Manifest
from installer.migrate import Warm, database_url, preload, prepare
from installer.replay import MigrationFails, NotReplayable, Recording, rehearse, remove, scratch_copy

Key = tuple[str, str]
"""(bundle id, database name)."""


@dataclass
class Rehearsed:
    """What the rehearsals left for the transaction: per jump and database, the loaded
    scripts and the recording its window replays."""

    warm: dict[Key, Warm] = field(default_factory=dict)
    recordings: dict[Key, Recording] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    """What was said, in order (``plan`` lists them)."""

    def replay_seconds(self) -> float:
        """The time the replays should take in the window: the statements' own time in
        the rehearsals."""
        return sum(r.sql_seconds for r in self.recordings.values())


def _sqlite_file(db: Database, root: Path) -> Path | None:
    """The live SQLite file of ``db``, None when it is not SQLite or does not exist yet."""
    from sqlalchemy.engine import make_url

    url = database_url(db, root)
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database:
        return None
    path = Path(u.database)  # a sqlite-path lookup is beneath the root already
    return path if path.is_file() else None


def rehearse_jumps(
    jumps: Sequence[tuple[Manifest, Path]],
    root: Path,
    log: Callable[[str], None],
    *,
    work: Path | None = None,
) -> Rehearsed:
    """Rehearse every database migration of ``jumps`` (each manifest with the directory
    holding its bundle's ``migrations/``) on copies made in ``work`` (a temp dir beneath
    it, removed before this returns; None: the system's).

    Raises:
        RehearsalFailedError: a migration failed on the copy.
        PreconditionError: a database's URL lookup finds nothing.
    """
    done = Rehearsed()

    def say(line: str) -> None:
        done.lines.append(line)
        log(line)

    if not any(db.from_revision != db.to_revision for m, _ in jumps for db in m.databases):
        return done
    preload()
    with _scratch(work) as tmp:
        copies: dict[str, Path | None] = {}  # per database name: its copy, None once unusable
        for m, unpacked in jumps:
            for db in m.databases:
                if db.from_revision == db.to_revision:
                    continue
                script = unpacked / db.script_dir
                warm = prepare(script, database_url(db, root))
                if warm is None:
                    continue  # the window's upgrade loads them itself and says what fails
                done.warm[(m.bundle_id, db.name)] = warm
                why = _why_not(db, root, copies, tmp)
                if why is not None:
                    say(f"database {db.name}: not rehearsed, it migrates live in the outage: {why}")
                    continue
                copy = copies[db.name]
                assert copy is not None
                try:
                    rec = rehearse(warm, script, copy, db.from_revision, db.to_revision)
                except MigrationFails as e:
                    raise RehearsalFailedError(
                        f"database {db.name}: {e}; it fails on a copy of this manager's data, so "
                        "nothing was stopped (fix the migration, or the data it meets)"
                    ) from e
                except NotReplayable as e:
                    copies[db.name] = None
                    say(f"database {db.name}: not rehearsed, it migrates live in the outage: {e}")
                    continue
                done.recordings[(m.bundle_id, db.name)] = rec
                say(
                    f"database {db.name}: rehearsed {len(rec.revisions)} revision(s) on a copy in"
                    f" {rec.seconds:.3f}s; the outage replays its {rec.statements} statement(s)"
                )
    return done


def _why_not(db: Database, root: Path, copies: dict[str, Path | None], tmp: Path) -> str | None:
    """Why ``db`` cannot be rehearsed (None: it can; its copy is then in ``copies``)."""
    if db.name in copies:
        return None if copies[db.name] is not None else "an earlier jump's migration of it was not rehearsed"
    copies[db.name] = None
    if db.from_revision is None:
        return "it is created by this jump"
    live = _sqlite_file(db, root)
    if live is None:
        from sqlalchemy.engine import make_url

        backend = make_url(database_url(db, root)).get_backend_name()
        if backend != "sqlite":
            return f"{backend} is not rehearsed on a copy; each revision runs in its own transaction"
        return "its file does not exist"
    copy = tmp / f"{db.name}.db"
    try:
        scratch_copy(live, copy)
    except NotReplayable as e:
        return str(e)
    copies[db.name] = copy
    return None


@contextlib.contextmanager
def _scratch(work: Path | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="jumpkit-rehearsal-", dir=work) as tmp:
        try:
            yield Path(tmp)
        finally:
            for f in Path(tmp).glob("*.db"):
                remove(f)
