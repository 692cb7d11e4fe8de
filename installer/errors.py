"""The one error tree of jumpkit. Every error carries fields and maps to an exit code."""

from __future__ import annotations

from collections.abc import Sequence


class JumpkitError(Exception):
    """Root of every error jumpkit raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(JumpkitError):
    """The command line or an argument is wrong."""

    exit_code = 2


class BundleRejectedError(JumpkitError):
    """The bundle failed integrity, signature or format checks (exit 3)."""

    exit_code = 3

    def __init__(self, message: str, *, entry: str | None = None) -> None:
        super().__init__(message if entry is None else f"{entry}: {message}")
        self.entry = entry


class SignatureError(BundleRejectedError):
    """manifest.sig is missing, malformed, or not made by a trusted key."""


class ManifestError(BundleRejectedError):
    """manifest.json does not parse or does not validate."""


class UnsafePathError(BundleRejectedError):
    """A path from a bundle would escape the root or is otherwise not allowed."""


class VersionError(JumpkitError):
    """A version string does not parse."""

    exit_code = 2


class PreconditionError(JumpkitError):
    """A pre-flight check failed; nothing was changed (exit 4)."""

    exit_code = 4

    def __init__(self, message: str, *, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.details = list(details)


class DriftError(PreconditionError):
    """Files that the jump replaces differ from the from-version the manifest records."""


class SpaceError(PreconditionError):
    """Not enough free space for staging and backups."""


class ApplyError(JumpkitError):
    """A step failed during apply and the apply was rolled back (exit 5)."""

    exit_code = 5

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


class StepError(JumpkitError):
    """A step's run() or undo() failed; the engine decides what follows."""

    exit_code = 5

    def __init__(self, message: str, *, step: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


class RollbackError(JumpkitError):
    """Rollback failed: operator action needed (exit 6)."""

    exit_code = 6


class LockedError(JumpkitError):
    """Another run holds the lock (exit 7)."""

    exit_code = 7

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class StateError(JumpkitError):
    """The state directory does not allow the requested command (e.g. nothing to resume)."""

    exit_code = 4


class ServiceError(JumpkitError):
    """A service could not be stopped, started or checked."""

    exit_code = 5


class HealthCheckError(ServiceError):
    """A health check did not pass within its retries."""

    def __init__(self, message: str, *, check: str, last_output: str = "") -> None:
        super().__init__(message)
        self.check = check
        self.last_output = last_output
