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
    """A step's run() or undo() failed; the transaction rolls back (or, in an undo, stops
    and says where the manager is)."""

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


# --- raised by one module each; here so that the whole tree reads in one place ----------


class RootLinkError(PreconditionError):
    """The manager's own tree has a symlink leading out of the root on a path the jump
    touches (exit 4: this manager, not the bundle, is the problem)."""


class PatchError(BundleRejectedError):
    """A patch that does not build the file the manifest promises (exit 3)."""


class RehearsalFailedError(PreconditionError):
    """A migration failed on a copy of this manager's data; nothing was stopped (exit 4)."""


class StoreError(JumpkitError):
    """The repository cannot be read or written (network, permissions, missing bucket)."""

    exit_code = 4


class NotFoundError(StoreError):
    """No object at that path."""


class MigrationError(JumpkitError):
    """alembic or the database failed; the message never holds a password."""

    exit_code = 5


class PolicyError(JumpkitError):
    """A jump breaks the product's version policy (the builder's exit 2)."""

    exit_code = 2


class NoPath(JumpkitError):
    """No chain of jumps exists; ``reachable`` lists where one can get to instead."""

    exit_code = 4

    def __init__(self, message: str, *, reachable: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.reachable = list(reachable)


class ClusterError(JumpkitError):
    """A cluster action failed on this host (a hook, a pin command, the member health gate);
    one of several actions run at once carries the exit code of the error it names."""

    exit_code = 5

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class AfterCommitError(JumpkitError):
    """The upgrade is committed and stays (nothing was rolled back), but work that comes
    after the commit failed: a post-upgrade job, the component RPMs (exit 8; ``status``
    says what, ``bundle-install jobs`` or ``components`` retries)."""

    exit_code = 8


class JobError(AfterCommitError):
    """A post-upgrade job failed all its attempts (the upgrade itself stays committed)."""


class ComponentError(AfterCommitError):
    """rpm refused the component RPMs (the manager itself stays upgraded)."""
