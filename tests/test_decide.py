"""installer.decide as the table its docstring shows: every command that changes a
manager, against every state the journal and status.json can be in."""

from __future__ import annotations

import pytest

from installer.decide import decide

R, DONE, NO = "runs", "done", "refused"
STATES = [("none", "idle"), ("applying", "working"), ("rolling-back", "working"),
          ("committed", "working"), ("committed", "finished"), ("rolled-back", "rolled-back")]  # fmt: skip
TABLE = {  # (apply, resume, rollback, unstage) for each state above
    ("none", "idle"): (R, DONE, NO, R),
    ("applying", "working"): (NO, R, R, NO),
    ("rolling-back", "working"): (NO, R, R, NO),
    ("committed", "working"): (NO, R, R, NO),
    ("committed", "finished"): (R, DONE, R, R),
    ("rolled-back", "rolled-back"): (R, DONE, DONE, R),
}


@pytest.mark.parametrize(("txn", "status"), STATES)
def test_the_decision_table(txn: str, status: str) -> None:
    got = []
    for action in ("apply", "resume", "rollback", "unstage"):
        v = decide(action, txn, status)  # type: ignore[arg-type]
        got.append(R if v.runs else DONE if v.done else NO)
        assert v.runs or v.message, (action, txn, status)
        assert not (v.runs and v.done)
    assert tuple(got) == TABLE[(txn, status)], (txn, status, got)


def test_what_each_refusal_and_answer_says() -> None:
    assert decide("apply", "applying", "working").message.startswith(
        "an earlier apply did not finish (applying)"
    )
    assert "committed but crashed before recording it" in decide("unstage", "committed", "working").message
    assert decide("resume", "committed", "finished").message == "nothing to resume: the last apply finished"
    assert decide("rollback", "rolled-back", "rolled-back").message == (
        "nothing to do: the last apply was already rolled back"
    )
    assert decide("rollback", "none", "idle").message.startswith("nothing to resume or roll back: no apply")
    gone = decide("rollback", "committed", "finished", backup_kept=False)
    assert not gone.runs and not gone.done and "backup of the last apply is gone" in gone.message
