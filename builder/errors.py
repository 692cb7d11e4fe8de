"""Builder errors: part of the one tree rooted at :class:`installer.errors.JumpkitError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from installer.errors import JumpkitError


class SpecError(JumpkitError):
    """A jump spec or product spec is invalid; every problem names its file and field."""

    exit_code = 2

    def __init__(self, message: str, *, problems: Sequence[str] = (), found: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)
        self.details = self.problems
        self.found = list(found)
        """The :class:`builder.specfile.Problem` objects behind ``problems``, when known."""


class BuildError(JumpkitError):
    """The bundle could not be built from valid specs (missing inputs, keys, tools)."""

    exit_code = 1


class SigningKeyError(BuildError):
    """The signing key given cannot sign: missing, unreadable, a public key, not ed25519,
    or readable by others. A wrong argument, so exit 2 whatever the cause."""

    exit_code = 2


class UnknownJumpError(SpecError):
    """No jump spec for the requested from/to pair."""


class MissingExtraError(BuildError):
    """A subcommand needs an optional dependency group that is not installed."""

    exit_code = 2


class RolloutError(JumpkitError):
    """The rollout stopped: a host failed or could not be reached (``report``: where every
    host is; its lines are the details)."""

    exit_code = 5

    def __init__(self, message: str, *, report: Any) -> None:
        super().__init__(message)
        self.report = report
        self.details = report.lines()
