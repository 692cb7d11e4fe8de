"""What may run now: one pure decision from the journal's last transaction and status.json,
for every command that changes a manager. No I/O: :class:`installer.state.StateDir`, the
transaction and the engine ask it, and tests/test_decide.py checks it as a table.

| last transaction        | apply, stage       | resume             | rollback            | unstage |
|-------------------------|--------------------|--------------------|---------------------|---------|
| none                    | runs               | nothing to resume  | refused (no apply)  | runs    |
| applying, rolling-back  | refused (finish it)| runs               | runs                | refused |
| committed, not recorded | refused (finish it)| runs (records it)  | runs                | refused |
| committed               | runs               | nothing to resume  | runs (backup kept)  | runs    |
| rolled-back             | runs               | nothing to resume  | nothing to do       | runs    |

"Nothing to ..." is exit 0 (the state asked for holds already, as an apply of an installed
version); "refused" is exit 4 with the message saying what to run instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from installer.journal import TxnState

Action = Literal["apply", "resume", "rollback", "unstage"]


@dataclass(frozen=True)
class Verdict:
    """Whether ``action`` runs; if not, ``message`` says why (``done``: because what it
    would reach holds already, exit 0; else refused, exit 4)."""

    runs: bool
    message: str = ""
    done: bool = False


RUNS = Verdict(True)

UNFINISHED = (
    "an earlier apply did not finish ({state}); run 'bundle-install resume' or "
    "'bundle-install rollback' first"
)
UNRECORDED = (
    "the last apply committed but crashed before recording it; run 'bundle-install resume' "
    "(or 'bundle-install rollback') first"
)
NO_APPLY = (
    "nothing to resume or roll back: no apply in the journal "
    "(unstage and the next apply drop the backup of the last one)"
)


def decide(action: Action, txn: TxnState, status: str, *, backup_kept: bool = True) -> Verdict:
    """The verdict for ``action`` when the journal's last transaction is ``txn`` and
    status.json says ``status`` (``working`` after a commit: the run died before it
    recorded the finish). ``backup_kept``: the backup of that transaction is still there
    (a rollback needs it)."""
    unrecorded = txn == "committed" and status == "working"
    if action in ("apply", "unstage"):
        if txn in ("applying", "rolling-back"):
            return Verdict(False, UNFINISHED.format(state=txn))
        return Verdict(False, UNRECORDED) if unrecorded else RUNS
    if action == "resume":
        if txn in ("applying", "rolling-back") or unrecorded:
            return RUNS
        return Verdict(False, {
            "none": "nothing to resume: no apply in the journal",
            "committed": "nothing to resume: the last apply finished",
            "rolled-back": "nothing to resume: the last apply was rolled back",
        }[txn], done=True)  # fmt: skip
    # rollback
    if txn == "none":
        return Verdict(False, NO_APPLY)
    if txn == "rolled-back":
        return Verdict(False, "nothing to do: the last apply was already rolled back", done=True)
    if txn == "committed" and not unrecorded and not backup_kept:
        return Verdict(False, "the backup of the last apply is gone (unstaged); cannot roll back")
    return RUNS
