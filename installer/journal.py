"""The journal of a transaction: typed events, their line encoding, and a pure view of
what a sequence of them says (python-tuf's ``TrustedMetadataSet`` is the model: verified
state kept apart from I/O, so it is tested on its own).

``state.StateDir`` appends encoded events (one ``write`` + ``fsync`` each) and reads them
back; everything that decides what ``resume``, ``rollback``, ``status`` or a new ``apply``
may do reads a :class:`JournalView`, never raw records.

One transaction's events, in the order a run writes them::

    Start  (Begin Note* Done)*  Commit                         -> committed
    Start  (Begin Note* Done)* Begin ...                       -> applying (crash)
    Start  ... RollbackStart (UndoBegin UndoDone)* RolledBack  -> rolled-back
    Start  ... RollbackStart ... RollbackFailed                -> rolling-back (exit 6)

A journal may hold older transactions before the last ``Start`` (``unstage`` and the next
apply reset it); the view looks at the last one only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeAlias

from installer.errors import StateError

TxnState = Literal["none", "applying", "committed", "rolling-back", "rolled-back"]


@dataclass(frozen=True)
class Start:
    """A transaction begins: its bundle (the first of a chain) and its steps in order."""

    bundle: str
    steps: tuple[str, ...]
    chain: tuple[str, ...] = ()
    ts: float = 0.0
    event: ClassVar[str] = "start"


@dataclass(frozen=True)
class Begin:
    """A step's ``run`` is about to start."""

    step: str
    ts: float = 0.0
    event: ClassVar[str] = "begin"


@dataclass(frozen=True)
class Done:
    """A step's ``run`` finished."""

    step: str
    ts: float = 0.0
    event: ClassVar[str] = "done"


@dataclass(frozen=True)
class Note:
    """Data a step's ``undo`` (or a later step) needs, persisted before it is acted on."""

    step: str
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = 0.0
    event: ClassVar[str] = "note"


@dataclass(frozen=True)
class Commit:
    """Every step is done: from here on the transaction only goes forward."""

    ts: float = 0.0
    event: ClassVar[str] = "commit"


@dataclass(frozen=True)
class RollbackStart:
    """A rollback begins, and why."""

    reason: str
    ts: float = 0.0
    event: ClassVar[str] = "rollback-start"


@dataclass(frozen=True)
class UndoBegin:
    """A step's ``undo`` is about to start."""

    step: str
    ts: float = 0.0
    event: ClassVar[str] = "undo-begin"


@dataclass(frozen=True)
class UndoDone:
    """A step's ``undo`` finished."""

    step: str
    ts: float = 0.0
    event: ClassVar[str] = "undo-done"


@dataclass(frozen=True)
class RollbackFailed:
    """An ``undo`` failed: the operator fixes the cause and runs ``rollback`` again."""

    step: str
    error: str
    ts: float = 0.0
    event: ClassVar[str] = "rollback-failed"


@dataclass(frozen=True)
class RolledBack:
    """Every begun step is undone: the manager is at the from-version again."""

    ts: float = 0.0
    event: ClassVar[str] = "rolled-back"


Event: TypeAlias = (
    Start | Begin | Done | Note | Commit | RollbackStart | UndoBegin | UndoDone | RollbackFailed | RolledBack
)
EVENTS: dict[str, type[Event]] = {
    cls.event: cls
    for cls in (
        Start,
        Begin,
        Done,
        Note,
        Commit,
        RollbackStart,
        UndoBegin,
        UndoDone,
        RollbackFailed,
        RolledBack,
    )
}


def encode(event: Event) -> bytes:
    """One journal line: compact JSON with ``event`` and ``ts`` (now, when unset)."""
    d = asdict(event)
    if not d.get("ts"):
        d["ts"] = round(time.time(), 6)
    for k, v in d.items():
        if isinstance(v, tuple):
            d[k] = list(v)
    d["event"] = event.event
    return (json.dumps(d, sort_keys=True, separators=(",", ":")) + "\n").encode()


def decode_record(record: dict[str, Any]) -> Event:
    """The typed event of one parsed line.

    Raises:
        StateError: an event this installer does not know (written by a newer one?) or a
            record whose fields do not fit its event.
    """
    name = record.get("event")
    cls = EVENTS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise StateError(
            f"the journal holds an event this installer does not know ({name!r}); "
            "was it written by a newer installer? Use that one to resume or roll back"
        )
    kw: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in record:
            continue
        value = record[f.name]
        if f.name in ("steps", "chain") and isinstance(value, list):
            value = tuple(value)
        want = _FIELD_TYPES[str(f.type)]
        if not isinstance(value, want) or isinstance(value, bool):
            raise StateError(f"journal record {name!r}: field {f.name} is not a {f.type}")
        kw[f.name] = value
    try:
        return cls(**kw)
    except TypeError as e:  # a required field is missing
        raise StateError(f"journal record {name!r} is malformed: {e}") from e


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "float": (int, float),
    "tuple[str, ...]": tuple,
    "dict[str, Any]": dict,
}


def decode(data: bytes) -> list[Event]:
    """Every complete record of a journal file. A torn last line (power loss mid-write:
    no newline, or half a JSON document) ends the journal at the last whole record.

    Raises:
        StateError: an unknown or malformed event before the end.
    """
    out: list[Event] = []
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        last = i >= len(lines) - 1  # no newline after it: possibly torn
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if last or not any(x.strip() for x in lines[i + 1 :]):
                break
            raise StateError(f"journal line {i + 1} is not JSON; the journal is damaged") from e
        if not isinstance(record, dict):
            raise StateError(f"journal line {i + 1} is not a record; the journal is damaged")
        out.append(decode_record(record))
    return out


@dataclass(frozen=True)
class JournalView:
    """What the last transaction of a journal says: no I/O, derived only from events."""

    events: tuple[Event, ...]

    @classmethod
    def of(cls, events: Iterable[Event]) -> JournalView:
        """The view of the last transaction (events from the last ``Start``)."""
        evs = list(events)
        starts = [i for i, e in enumerate(evs) if isinstance(e, Start)]
        return cls(tuple(evs[starts[-1] :]) if starts else ())

    @property
    def start(self) -> Start | None:
        """The transaction's first record, or None when there is none."""
        first = self.events[0] if self.events else None
        return first if isinstance(first, Start) else None

    @property
    def state(self) -> TxnState:
        """none, applying (steps ran, no end yet), committed, rolling-back (a rollback began
        and did not end, also after it failed) or rolled-back: the last of Commit,
        RollbackStart and RolledBack decides."""
        if self.start is None:
            return "none"
        for e in reversed(self.events):
            if isinstance(e, RolledBack):
                return "rolled-back"
            if isinstance(e, RollbackStart):
                return "rolling-back"
            if isinstance(e, Commit):
                return "committed"
        return "applying"

    @property
    def bundles(self) -> tuple[str, ...]:
        """The bundle ids of the transaction (one, or the chain in order)."""
        s = self.start
        if s is None:
            return ()
        return s.chain or (s.bundle,)

    @property
    def steps(self) -> tuple[str, ...]:
        """The step names in run order, as the start record lists them."""
        s = self.start
        return s.steps if s is not None else ()

    def _names(self, kind: type[Begin | Done | UndoBegin | UndoDone]) -> list[str]:
        return list(dict.fromkeys(e.step for e in self.events if isinstance(e, kind)))

    @property
    def begun(self) -> list[str]:
        """Steps whose run began, in order, each once."""
        return self._names(Begin)

    @property
    def done(self) -> set[str]:
        """Steps whose run finished."""
        return set(self._names(Done))

    @property
    def undone(self) -> set[str]:
        """Steps whose undo finished."""
        return set(self._names(UndoDone))

    def to_undo(self) -> list[str]:
        """Begun steps not yet undone, in the order a rollback undoes them (reverse)."""
        undone = self.undone
        return [s for s in reversed(self.begun) if s not in undone]

    def first_not_done(self) -> int:
        """Index into :attr:`steps` where ``resume`` continues (len(steps): only the commit)."""
        done = self.done
        return next((i for i, s in enumerate(self.steps) if s not in done), len(self.steps))

    @property
    def notes(self) -> dict[str, dict[str, Any]]:
        """Each step's last note."""
        out: dict[str, dict[str, Any]] = {}
        for e in self.events:
            if isinstance(e, Note):
                out[e.step] = e.data
        return out

    @property
    def rollback_reason(self) -> str | None:
        """Why the last rollback began, or None."""
        for e in reversed(self.events):
            if isinstance(e, RollbackStart):
                return e.reason
        return None

    @property
    def rollback_failure(self) -> RollbackFailed | None:
        """The failure that ended the last rollback attempt, if it ended so."""
        for e in reversed(self.events):
            if isinstance(e, RollbackFailed):
                return e
            if isinstance(e, RollbackStart | UndoBegin | UndoDone):
                return None
        return None

    def phases(self, stop_step: str, health_step: str) -> dict[str, float]:
        """Seconds each step took from the begin of ``stop_step`` to the done of
        ``health_step`` (the outage window), in journal order; a chain's steps are
        ``name#jump``. Empty when the window is not in the journal."""
        begun: dict[str, float] = {}
        out: dict[str, float] = {}
        inside = False
        for e in self.events:
            if isinstance(e, Begin):
                inside = inside or e.step.partition("#")[0] == stop_step
                if inside:
                    begun[e.step] = e.ts
            elif isinstance(e, Done) and e.step in begun:
                out[e.step] = round(e.ts - begun.pop(e.step), 4)  # 0.1 ms: a step of the window is 1-3 ms
                if e.step.partition("#")[0] == health_step:
                    inside = False
        return out

    def outage(self, stop_step: str, health_step: str) -> float | None:
        """Seconds from the begin of ``stop_step`` to the moment ``health_step``'s checks
        passed (its ``passed`` note; a settle time watched after it is no outage), else to
        its done."""
        t0 = next((e.ts for e in self.events if isinstance(e, Begin) and e.step == stop_step), None)
        notes = [e for e in self.events if isinstance(e, Note) and e.step == health_step]
        passed = [float(e.data["passed"]) for e in notes if "passed" in e.data]
        done = [e.ts for e in self.events if isinstance(e, Done) and e.step == health_step]
        t1 = (passed or done)[-1] if passed or done else None
        return round(t1 - t0, 3) if t0 is not None and t1 is not None else None
