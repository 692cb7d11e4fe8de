"""The state directory: lock, journal, status and history. Every write is durable
(append+fsync for the journal, write-temp-fsync-rename for status)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from installer import journal
from installer.beneath import resolve
from installer.decide import Action, decide
from installer.errors import LockedError, StateError, UsageError
from installer.journal import Event, JournalView
from installer.paths import fsync_dir

Status = Literal["idle", "staged", "working", "finished", "failed", "rolled-back"]
MAX_LOG_LINES = 200
MAX_JOURNAL_BYTES = 64 * 1024 * 1024  # a jump journals per step, not per file


def beneath_root(root: Path, rel: str) -> Path:
    """``root / rel`` with every symlink on the way resolved beneath the root: the
    installer's own state and trust store are never read or written through a link out.

    Raises:
        RootLinkError: a symlink on the way leads out of the root (exit 4).
    """
    return root / resolve(root, rel, follow_last=True)[0]


def default_state_dir(root: Path, product: str) -> Path:
    """``<root>/var/lib/jumpkit/<product>`` (resolved beneath the root)."""
    return beneath_root(root, f"var/lib/jumpkit/{product}")


def find_state_dirs(root: Path) -> list[Path]:
    """Every product state dir under ``root`` that an apply or stage has written to."""
    base = beneath_root(root, "var/lib/jumpkit")
    if not base.is_dir():
        return []
    # bin/ (the manager's installer) and bundles/ (unpacked bundle RPMs) live here too:
    # a state dir is one an apply has written to. The journal counts on its own: an apply
    # records its start in the journal before it first writes status.json, and a crash
    # between the two must still be found by resume and rollback. A fetch's downloads/
    # count too: unstage removes them.
    marks = ("status.json", "journal.jsonl", "downloads")
    return [d for d in sorted(base.iterdir()) if d.is_dir() and any((d / m).exists() for m in marks)]


def first_missing(path: Path) -> Path | None:
    """The topmost missing directory on the way to ``path`` (what creating it makes), or None."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` by write-temp, rename: readers see the old or the new
    file whole. ``durable``: fsync the file before and the directory after the rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


LAUNCHER_PID = "JUMPKIT_LAUNCHER_PID"
"""Set by the frozen installer's launcher (scripts/freeze/launcher.c) to its own pid before
it forks the unpacked installer: the process the operator started and sees in ``ps``."""


def operator_pid() -> int:
    """The pid to name as this run: the launcher's when it started this process (an
    unpacked frozen installer is its child), else this process's own."""
    try:
        launcher = int(os.environ.get(LAUNCHER_PID, ""))
    except ValueError:
        return os.getpid()
    return launcher if launcher == os.getppid() else os.getpid()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class StatusDoc:
    """status.json, DRP-style."""

    status: Status = "idle"
    summary: str = ""
    step: str | None = None
    bundle_id: str | None = None
    from_version: str | None = None
    to_version: str | None = None
    started: float | None = None
    updated: float | None = None
    finished: float | None = None
    outage_seconds: float | None = None
    outage_phases: dict[str, float] = field(default_factory=dict)
    """Seconds of each step inside the outage window (stop to healthy), in order."""
    log: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The document as written to status.json (``from``/``to`` as DRP names them)."""
        return {
            "status": self.status,
            "summary": self.summary,
            "step": self.step,
            "bundle": self.bundle_id,
            "from": self.from_version,
            "to": self.to_version,
            "started": self.started,
            "updated": self.updated,
            "finished": self.finished,
            "outage_seconds": self.outage_seconds,
            **({"outage_phases": self.outage_phases} if self.outage_phases else {}),
            "log": self.log[-MAX_LOG_LINES:],
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StatusDoc:
        """Inverse of :meth:`to_json`."""
        return cls(
            status=d.get("status", "idle"),
            summary=d.get("summary", ""),
            step=d.get("step"),
            bundle_id=d.get("bundle"),
            from_version=d.get("from"),
            to_version=d.get("to"),
            started=d.get("started"),
            updated=d.get("updated"),
            finished=d.get("finished"),
            outage_seconds=d.get("outage_seconds"),
            outage_phases=dict(d.get("outage_phases", {})),
            log=list(d.get("log", [])),
            extra=dict(d.get("extra", {})),
        )


class StateDir:
    """Paths and durable records under the state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path / "lock"
        self.journal_path = path / "journal.jsonl"
        self.status_path = path / "status.json"
        self.history_path = path / "history.jsonl"
        self.staging = path / "staging"
        self.backup = path / "backup"
        self._lock_fd: int | None = None

    @classmethod
    def pick(cls, root: Path, explicit: Path | None, product: str | None) -> StateDir:
        """The state dir: ``explicit`` (--state-dir), the product's default under ``root``,
        or, with neither, the only one there is.

        Raises:
            StateError: none exists. UsageError: several exist.
        """
        if explicit is not None:
            return cls(explicit)
        if product is not None:
            return cls(default_state_dir(root, product))
        found = find_state_dirs(root)
        if not found:
            raise StateError(f"no jumpkit state under {root}: nothing was staged or applied here")
        if len(found) > 1:
            raise UsageError(f"{len(found)} jumpkit state dirs under {root}; pass --state-dir")
        return cls(found[0])

    def ensure(self) -> None:
        """Create the directory tree (mode 0700)."""
        for d in (self.path, self.staging, self.backup):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    # --- lock ---------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, wait: float = 0.0) -> Iterator[str | None]:
        """Hold the exclusive lock, waiting up to ``wait`` seconds for it. Yields a note when
        a previous holder died holding it.

        Raises:
            LockedError: a live process holds the lock.
        """
        self.ensure()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() < deadline:
                        time.sleep(0.2)
                        continue
                    raise self._locked_error(_read_pid(fd)) from e
            prev = _read_pid(fd)
            note = None
            if prev and prev not in (os.getpid(), operator_pid()) and not _pid_alive(prev):
                note = f"the previous run (pid {prev}) died holding the lock (the kernel released it)"
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{operator_pid()}\n".encode(), 0)
            os.fsync(fd)
            self._lock_fd = fd
            try:
                yield note
            finally:
                os.ftruncate(fd, 0)
                self._lock_fd = None
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _locked_error(self, pid: int | None) -> LockedError:
        return LockedError(
            f"another bundle-install run (pid {pid}) holds {self.lock_path}; "
            "'bundle-install status' shows what it is doing",
            pid=pid,
        )

    def refuse_busy(self) -> None:
        """Before taking the lock (reads only): refuse while a live run holds it (exit 7),
        or while the journal holds an unfinished run (exit 4, naming a holder that died).

        Raises:
            LockedError: a live run holds the lock. StateError: an unfinished run.
        """
        pid, held = self.holder()
        if held:
            raise self._locked_error(pid)
        try:
            self.refuse_unfinished()
        except StateError as e:
            if pid is not None:  # a run that ends releases the lock with its pid cleared
                died = f"the previous run (pid {pid}) died holding the lock (the kernel released it)"
                raise StateError(f"{died}; {e.message}") from e
            raise

    def holder(self) -> tuple[int | None, bool]:
        """(pid last written into the lock file, whether a live process holds the lock now).
        A pid with ``False`` is a run that died holding it: the kernel released the flock,
        so there is nothing to clear, but what that run left in the journal needs an operator."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return None, False
        try:
            pid = _read_pid(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    return pid, True
                raise
            fcntl.flock(fd, fcntl.LOCK_UN)
            return pid, False
        finally:
            os.close(fd)

    # --- journal ------------------------------------------------------------------
    def journal_append(self, *events: Event, durable: bool = True) -> None:
        """Append events and fsync once before returning (one ``write``: each line is on
        disk whole or not at all, in order, and a torn tail is dropped on reading).
        ``durable`` False skips the fsync, for records recovery never needs (the next
        durable append carries them to disk; a process crash loses nothing either way)."""
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"".join(journal.encode(e) for e in events))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def journal(self) -> list[Event]:
        """Every complete event; a torn last line (crash mid-write) is ignored.

        Raises:
            StateError: an unknown event or a damaged line before the end.
        """
        try:
            with open(self.journal_path, "rb") as f:
                data = f.read(MAX_JOURNAL_BYTES + 1)
        except FileNotFoundError:
            return []
        if len(data) > MAX_JOURNAL_BYTES:
            raise StateError(f"{self.journal_path} is larger than {MAX_JOURNAL_BYTES} bytes")
        return journal.decode(data)

    def view(self) -> JournalView:
        """What the journal's last transaction says (see :mod:`installer.journal`)."""
        return JournalView.of(self.journal())

    def journal_reset(self) -> None:
        """Delete the finished journal (history.jsonl keeps what the run did); the next run
        starts a new one."""
        if self.journal_path.exists():
            self.journal_path.unlink()
            fsync_dir(self.path)

    # --- status -------------------------------------------------------------------
    def read_status(self) -> StatusDoc:
        """status.json, or an idle document when there is none."""
        try:
            return StatusDoc.from_json(json.loads(self.status_path.read_text()))
        except FileNotFoundError:
            return StatusDoc()
        except (json.JSONDecodeError, AttributeError) as e:
            raise StateError(f"{self.status_path} is corrupt: {e}") from e

    def write_status(self, doc: StatusDoc, *, durable: bool = True) -> None:
        """Write status.json by rename: durably (fsync of file and directory) unless
        ``durable`` is False (the step boundaries of a run, whose journal is what recovery
        reads: status only shows progress)."""
        doc.updated = time.time()
        write_atomic(self.status_path, (json.dumps(doc.to_json(), indent=2) + "\n").encode(), durable=durable)

    def append_history(self, record: dict[str, Any]) -> None:
        """One line per finished, failed or rolled-back run."""
        line = json.dumps({"ts": round(time.time(), 3), **record}, sort_keys=True) + "\n"
        with open(self.history_path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    # --- what the journal and status allow -----------------------------------------------
    def refuse_unfinished(self, action: Action = "apply") -> None:
        """Refuse ``action`` (a new apply or stage, an unstage) while the journal holds an
        unfinished run (reads only; :func:`installer.decide.decide`).

        Raises:
            StateError: an apply or rollback did not finish.
        """
        if not self.journal_path.exists():
            return
        verdict = decide(action, self.view().state, self.read_status().status)
        if not verdict.runs:
            raise StateError(verdict.message)

    def current(self) -> StatusDoc:
        """status.json as a reader should see it: a ``working`` run whose process died
        (kill -9, power loss, OOM: nobody holds the lock) is INTERRUPTED, with the two
        commands that end it."""
        doc = self.read_status()
        pid, held = self.holder()
        if doc.status == "working":  # status.json is not rewritten inside the outage window
            with contextlib.suppress(StateError):
                view = self.view()
                if view.begun and view.state == "applying":
                    doc.step = view.begun[-1]
        if doc.status == "working" and not held:
            doc.extra["interrupted"] = {
                "pid": pid,
                "next": ["bundle-install resume", "bundle-install rollback"],
            }
            doc.summary = (
                f"INTERRUPTED: the run{f' (pid {pid})' if pid else ''} died at step {doc.step or '?'}; "
                "run 'bundle-install resume' to finish or 'bundle-install rollback' to undo"
            )
        elif held:
            doc.extra["running"] = {"pid": pid}
        return doc

    def unstage(self) -> str:
        """Drop staging and backups, reset the journal (hold the lock).

        Raises:
            StateError: an apply is unfinished.
        """
        self.refuse_unfinished("unstage")
        dirs = [*self.staging.iterdir(), *self.backup.iterdir()]
        for d in dirs:
            self.remove_tree(d)
        self.journal_reset()
        doc = self.read_status()
        if doc.status == "staged":
            doc = StatusDoc(status="idle", summary="unstaged")
        else:
            doc.log.append(f"{time.strftime('%H:%M:%S')} staging and backups removed")
        self.write_status(doc)
        return f"removed {len(dirs)} staging/backup dir(s)"

    # --- staging/backup -----------------------------------------------------------
    def staging_dir(self, bundle_id: str) -> Path:
        """Where a bundle is unpacked."""
        return self.staging / bundle_id

    @property
    def last_run(self) -> Path:
        """Copies of the last apply's manifests (``<bundle-id>.json``): the staging of a
        rolled-back apply is dropped, and a support report still says what it was."""
        return self.path / "last-run"

    def keep_last_run(self, manifests: list[Path]) -> None:
        """Replace :attr:`last_run`'s copies with ``manifests`` (advisory: not fsynced)."""
        if self.last_run.exists():
            shutil.rmtree(self.last_run)
        self.last_run.mkdir(mode=0o700)
        for path in manifests:
            shutil.copyfile(path, self.last_run / f"{path.parent.name}.json")

    def backup_dir(self, bundle_id: str) -> Path:
        """Where replaced files and database backups go."""
        return self.backup / bundle_id

    def discard(self, made: Path) -> None:
        """Remove what a refused first run made: ``made`` is the state dir or one of its
        parents that did not exist before the run."""
        if made != self.path and made not in self.path.parents:
            raise StateError(f"refusing to remove {made}: not the state dir or its parent")
        shutil.rmtree(made, ignore_errors=True)

    def remove_tree(self, path: Path) -> None:
        """Remove a staging or backup tree (only inside the state dir)."""
        if self.path not in path.parents:
            raise StateError(f"refusing to remove {path}: outside {self.path}")
        shutil.rmtree(path, ignore_errors=True)


def _read_pid(fd: int) -> int | None:
    raw = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(raw) if raw.isdigit() else None
