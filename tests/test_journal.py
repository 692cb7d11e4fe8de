"""The journal view on its own (python-tuf tests TrustedMetadataSet this way): every event
order a run, a crash, a signal or a rollback produces, a torn last line, unknown and
malformed records. No I/O but bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from installer.errors import StateError
from installer.journal import (
    Begin,
    Commit,
    Done,
    Event,
    JournalView,
    Note,
    RollbackFailed,
    RollbackStart,
    RolledBack,
    Start,
    UndoBegin,
    UndoDone,
    decode,
    encode,
)
from installer.txunits import unit_layout

STEPS = tuple(name for name, _, _ in unit_layout(1))
CHAIN_STEPS = tuple(name for name, _, _ in unit_layout(3))


def run_to(n: int, steps: tuple[str, ...] = STEPS) -> list[Event]:
    """A start and the first ``n`` steps begun and done."""
    evs: list[Event] = [Start("b-1-to-2", steps)]
    for s in steps[:n]:
        evs += [Begin(s), Done(s)]
    return evs


def roundtrip(evs: list[Event]) -> list[Event]:
    return decode(b"".join(encode(e) for e in evs))


def test_empty_journal_is_none() -> None:
    v = JournalView.of([])
    assert v.state == "none" and v.bundles == () and v.begun == [] and v.first_not_done() == 0


@pytest.mark.parametrize("n", range(len(STEPS) + 1))
def test_crash_after_n_steps_is_applying_and_resumes_at_n(n: int) -> None:
    v = JournalView.of(roundtrip(run_to(n)))
    assert v.state == "applying"
    assert v.first_not_done() == n
    assert v.to_undo() == list(reversed(STEPS[:n]))


@pytest.mark.parametrize("n", range(len(STEPS)))
def test_crash_inside_step_n_undoes_it_too(n: int) -> None:
    evs = [*run_to(n), Begin(STEPS[n])]
    v = JournalView.of(roundtrip(evs))
    assert v.state == "applying"
    assert v.first_not_done() == n  # resume runs the begun step again (run is idempotent)
    assert v.to_undo()[0] == STEPS[n]


def test_commit_is_committed_and_outage_measured() -> None:
    evs = run_to(len(STEPS))
    evs = [e if not isinstance(e, Begin | Done) else type(e)(e.step, ts=10.0 + i) for i, e in enumerate(evs)]
    v = JournalView.of(roundtrip([*evs, Commit()]))
    assert v.state == "committed"
    begin_stop = next(e.ts for e in evs if isinstance(e, Begin) and e.step == "stop-services")
    done_health = next(e.ts for e in evs if isinstance(e, Done) and e.step == "health")
    assert v.outage("stop-services", "health") == round(done_health - begin_stop, 3)


def test_phases_of_the_window_to_a_tenth_of_a_millisecond() -> None:
    """A step of the window takes 1-3 ms: whole milliseconds would hide a regression of
    half of one."""
    evs = [Start(bundle="b", steps=("stop-services", "swap-files", "health"))]
    t = 100.0
    for step, secs in (("stop-services", 0.01234), ("swap-files", 0.00149), ("health", 0.05)):
        evs += [Begin(step, ts=t), Done(step, ts=t + secs)]
        t += secs + 0.0002
    phases = JournalView.of(roundtrip(evs)).phases("stop-services", "health")
    assert phases == {"stop-services": 0.0123, "swap-files": 0.0015, "health": 0.05}


@pytest.mark.parametrize("undone", range(4))
def test_signal_then_rollback_states(undone: int) -> None:
    """A signal during swap-files: rollback-start, then undo records one by one."""
    n = STEPS.index("swap-files")
    evs = [*run_to(n), Begin("swap-files"), RollbackStart("interrupted by SIGTERM during swap-files")]
    order = list(reversed(STEPS[: n + 1]))
    for s in order[:undone]:
        evs += [UndoBegin(s), UndoDone(s)]
    v = JournalView.of(roundtrip(evs))
    assert v.state == "rolling-back"
    assert v.rollback_reason == "interrupted by SIGTERM during swap-files"
    assert v.to_undo() == order[undone:]
    assert JournalView.of(roundtrip([*evs, RolledBack()])).state == "rolled-back"


def test_rollback_failed_stays_rolling_back_and_names_the_failure() -> None:
    evs = [*run_to(3), RollbackStart("health failed"), UndoBegin(STEPS[2]), RollbackFailed(STEPS[2], "boom")]
    v = JournalView.of(roundtrip(evs))
    assert v.state == "rolling-back"
    assert v.rollback_failure == RollbackFailed(STEPS[2], "boom", ts=v.rollback_failure.ts)  # type: ignore[union-attr]
    again = JournalView.of([*evs, UndoBegin(STEPS[2])])
    assert again.rollback_failure is None  # a new attempt is under way


def test_rollback_after_commit_is_rolling_back() -> None:
    evs = [*run_to(len(STEPS)), Commit(), RollbackStart("requested by the operator")]
    assert JournalView.of(evs).state == "rolling-back"
    assert JournalView.of([*evs, RolledBack()]).state == "rolled-back"


def test_last_transaction_only() -> None:
    old = [*run_to(len(STEPS)), Commit()]
    new = run_to(2)
    v = JournalView.of(roundtrip(old + new))
    assert v.state == "applying" and v.first_not_done() == 2


def test_notes_last_wins_and_survive_roundtrip() -> None:
    evs = [
        *run_to(1),
        Begin("stop-services"),
        Note("stop-services", {"running": ["demo-manager"]}),
        Note("migrate", {"db": "main", "revision": "0003"}),
        Note("migrate", {"db": "main", "revision": "0004"}),
    ]
    v = JournalView.of(roundtrip(evs))
    assert v.notes == {
        "stop-services": {"running": ["demo-manager"]},
        "migrate": {"db": "main", "revision": "0004"},
    }


def test_chain_bundles_and_steps() -> None:
    chain = ("p-1-to-2", "p-2-to-3", "p-3-to-4")
    evs: list[Event] = [Start("p-1-to-2", CHAIN_STEPS, chain=chain), Begin(CHAIN_STEPS[0])]
    v = JournalView.of(roundtrip(evs))
    assert v.bundles == chain and v.steps == CHAIN_STEPS


@pytest.mark.parametrize("cut", [1, 5, 17, -3, -2])
def test_torn_last_line_is_ignored(cut: int) -> None:
    evs = run_to(3)
    data = b"".join(encode(e) for e in evs)
    last = encode(Begin(STEPS[3]))
    torn = data + last[:cut]
    assert decode(torn) == decode(data)


def test_whole_last_record_without_its_newline_counts() -> None:
    """Only the newline missing: every byte of the record is there (run and undo are
    idempotent, so counting a whole begin or done is safe)."""
    data = b"".join(encode(e) for e in run_to(3)) + encode(Begin(STEPS[3]))[:-1]
    assert JournalView.of(decode(data)).begun[-1] == STEPS[3]


def test_damaged_line_before_the_end_is_refused() -> None:
    data = encode(Start("b", STEPS)) + b'{"event": "beg\n' + encode(Begin(STEPS[0]))
    with pytest.raises(StateError, match="damaged"):
        decode(data)


def test_unknown_event_is_refused() -> None:
    data = encode(Start("b", STEPS)) + json.dumps({"event": "teleport", "ts": 1.0}).encode() + b"\n"
    with pytest.raises(StateError, match="does not know"):
        decode(data)


@pytest.mark.parametrize(
    "record",
    [{"event": "begin"}, {"event": "begin", "step": 5}, {"event": "start", "bundle": "b", "steps": "x"},
     {"event": "note", "step": "s", "data": []}, {"event": "commit", "ts": True}, [1, 2]],
)  # fmt: skip
def test_malformed_record_is_refused(record: object) -> None:
    with pytest.raises(StateError):
        decode(json.dumps(record).encode() + b"\n" + encode(Commit()))


def test_encode_is_one_line_and_stamped() -> None:
    line = encode(Note("s", {"k": "multi\nline"}))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["ts"] > 0


def test_done_records_are_written_with_the_next_record(tmp_path: Path) -> None:
    """One write and one fsync for a step's Done and the next Begin: both lines whole,
    in order (a torn tail of the pair is dropped on reading, as for one line)."""
    from installer.journal import Begin, Done, decode, encode
    from installer.state import StateDir

    state = StateDir(tmp_path)
    state.journal_append(Begin("a"))
    state.journal_append(Done("a", ts=1.0), Begin("b"))
    assert [type(e).__name__ for e in state.journal()] == ["Begin", "Done", "Begin"]
    torn = (encode(Done("b")) + encode(Begin("c")))[:-5]
    assert [type(e).__name__ for e in decode(encode(Begin("b")) + torn)] == ["Begin", "Done"]


def test_outage_ends_when_the_checks_pass_not_after_the_settle_watch() -> None:
    """A settle time watched after the health checks passed is no outage: the window ends at
    the health step's ``passed`` note when it has one, else at its done."""
    from installer.journal import Begin, Done, JournalView, Note

    base = [Begin("stop-services", ts=10.0), Done("stop-services", ts=10.1), Begin("health", ts=10.2)]
    plain = JournalView([*base, Done("health", ts=10.3)])
    watched = JournalView([*base, Note("health", {"passed": 10.25}, ts=10.25), Done("health", ts=10.8)])
    assert plain.outage("stop-services", "health") == 0.3
    assert watched.outage("stop-services", "health") == 0.25
