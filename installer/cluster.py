"""What a fleet rollout (``bundle-build rollout``, Ansible) asks of one manager host, through
``bundle-install cluster ACTION BUNDLE``: is this host the leader, pin or unpin it, run the
jump's cluster hooks, wait for the member to be healthy in its cluster.

Every action reads a verified bundle: the signature is checked before the manifest is
trusted, and a hook script's bytes are checked against the manifest before it runs.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

from installer import commands
from installer.archive import Bundle, iter_verified
from installer.errors import ClusterError, JumpkitError, UsageError
from installer.failpoints import failpoint
from installer.format import Manifest
from installer.health import lookup_variables, probe, wait_healthy
from installer.preflight import read_installed_version

Action = Literal["role", "pin-leader", "unpin-leader", "cluster-pre", "node", "cluster-post", "member-health"]
ACTIONS: tuple[str, ...] = get_args(Action)


def _env(manifest: Manifest, root: Path, host: str | None, action: str) -> dict[str, str]:
    return {
        **os.environ,
        "JUMPKIT_ROOT": str(root),
        "JUMPKIT_FROM": manifest.from_version,
        "JUMPKIT_TO": manifest.to_version,
        "JUMPKIT_HOST": host or "",
        "JUMPKIT_CLUSTER_ACTION": action,
    }


def _run(argv: list[str], root: Path, env: dict[str, str], what: str, timeout: float) -> str:
    try:
        p = commands.run(argv, cwd=root, env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClusterError(f"{what} could not run: {e}") from e
    out = p.output.strip()
    if p.returncode != 0:
        tail = out.splitlines()[-1] if out else "no output"
        raise ClusterError(f"{what} exited {p.returncode}: {tail}")
    return out


def run(
    action: Action,
    bundle: Bundle,
    manifest: Manifest,
    root: Path,
    scratch: Path,
    *,
    host: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, object]:
    """Carry out one cluster action; returns what happened (printed, or as JSON).

    ``scratch`` is a directory on the target where hook scripts are written (after their
    hashes are checked) to run; nothing is left there.

    Raises:
        ClusterError: a command, hook or the member health gate failed. UsageError: unknown action.
    """
    failpoint(f"cluster:{action}")
    installed = read_installed_version(root, manifest)
    out: dict[str, object] = {"action": action, "host": host, "installed": installed}
    cluster = manifest.cluster
    env = _env(manifest, root, host, action)
    if action == "role":
        if cluster is None or cluster.leader is None:
            out.update(leader=None, detail="the product declares no leader probe")
            return out
        variables = lookup_variables(manifest.lookups, root, installed or manifest.from_version)
        ok, detail = probe(cluster.leader, variables, root)
        out.update(leader=ok, detail=detail)
        return out
    if action in ("pin-leader", "unpin-leader"):
        argv: tuple[str, ...] = ()
        if cluster is not None:
            argv = cluster.pin_leader if action == "pin-leader" else cluster.unpin_leader
        if argv:
            out["output"] = _run(list(argv), root, env, action, 300.0)
            log(f"{action}: done")
        out["ran"] = bool(argv)
        return out
    if action == "member-health":
        checks = () if cluster is None else cluster.member_health
        variables = lookup_variables(manifest.lookups, root, installed or manifest.to_version)
        try:
            out["seconds"] = round(wait_healthy(checks, variables, root), 3)
        except JumpkitError as e:
            raise ClusterError(f"member health: {e.message}") from e
        out["checks"] = [c.name for c in checks]
        return out
    if action not in ("cluster-pre", "node", "cluster-post"):
        raise UsageError(f"unknown cluster action {action!r}; one of {', '.join(ACTIONS)}")
    out["hooks"] = _hooks(action, bundle, manifest, root, scratch, env, log, out)
    return out


def _hooks(
    action: Action,
    bundle: Bundle,
    manifest: Manifest,
    root: Path,
    scratch: Path,
    env: dict[str, str],
    log: Callable[[str], None],
    out: dict[str, object],
) -> list[str]:
    """Run the bundle's hooks for ``action`` (each written to ``scratch`` after its hash is
    checked); their output into ``out``; returns their names."""
    members = manifest.members()
    ran: list[str] = []
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cluster-hook-", dir=scratch) as tmp:
        for hook in [h for h in manifest.hooks if h.when == action]:
            name = f"hooks/{hook.name}"
            sha, size = members[name]
            script = Path(tmp) / hook.name
            with open(script, "wb") as f:
                for chunk in iter_verified(bundle, name, sha, size):
                    f.write(chunk)
            os.chmod(script, 0o700)
            log(f"{action} hook {hook.name}")
            out.setdefault("output", {})[hook.name] = _run(  # type: ignore[index]
                [str(script)], root, env, f"{action} hook {hook.name}", hook.timeout
            )[-2000:]
            ran.append(hook.name)
    return ran
