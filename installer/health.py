"""Health checks: HTTP GET, TCP connect, or a command; each retried until it passes."""

from __future__ import annotations

import configparser
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from installer import commands
from installer.errors import HealthCheckError, PreconditionError
from installer.format import HealthCheck, Lookup
from installer.paths import MAX_LOOKUP_FILE, read_beneath


def resolve_lookup(lookup: Lookup, root: Path) -> str | None:
    """Read a value from an INI file under the root or from the environment; a missing
    file or key gives the default.

    Raises:
        PreconditionError: the file is not a regular file, too large, or unparsable.
        RootLinkError: a symlink on its path leads out of the root.
    """
    if lookup.env is not None:
        return os.environ.get(lookup.env, lookup.default)
    assert lookup.file is not None and lookup.key is not None
    parser = configparser.ConfigParser(interpolation=None)
    data = read_beneath(root, lookup.file, MAX_LOOKUP_FILE)  # bounded, regular, beneath the root
    try:
        text = "" if data is None else data.decode()
    except UnicodeDecodeError as e:
        raise PreconditionError(f"cannot parse {lookup.file}: not UTF-8 text") from e
    try:
        parser.read_string(text, source=lookup.file)
    except configparser.Error as e:
        raise PreconditionError(f"cannot parse {lookup.file}: {' '.join(str(e).split())}") from e
    section, _, option = lookup.key.partition(".")
    return parser.get(section, option, fallback=lookup.default)


def lookup_variables(lookups: Mapping[str, Lookup], root: Path, version: str) -> dict[str, str]:
    """Values for ``{name}`` in health checks: every lookup that resolves, and ``version``."""
    out = {"version": version}
    for name, lookup in lookups.items():
        value = resolve_lookup(lookup, root)
        if value is not None:
            out[name] = value
    return out


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Replace ``{name}`` with a variable; unknown names stay as they are."""
    for k, v in variables.items():
        text = text.replace("{" + k + "}", v)
    return text


def unresolved(texts: list[str], variables: Mapping[str, str]) -> str | None:
    """The first ``{name}`` of a word-like name left in ``texts`` after expansion (a
    lookup whose file or key is missing), as a probe's failure text; or None."""
    for text in texts:
        m = re.search(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", text)
        if m and m.group(1) not in variables:
            return f"no value for {{{m.group(1)}}}: its lookup found no file or key (and has no default)"
    return None


def probe(check: HealthCheck, variables: Mapping[str, str], root: Path) -> tuple[bool, str]:
    """Run ``check`` once: (passed, what it saw)."""
    missing = unresolved([check.url or "", check.port or "", *check.command], variables)
    if missing is not None:
        return False, missing
    if check.kind == "http":
        url = expand(check.url or "", variables)
        try:
            with urllib.request.urlopen(url, timeout=check.timeout) as r:
                body = r.read(65536).decode(errors="replace")
                status = r.status
        except urllib.error.HTTPError as e:
            return False, f"HTTP {e.code} from {url}"
        except (OSError, ValueError) as e:
            return False, f"{url}: {e}"
        want = expand(check.expect_body, variables) if check.expect_body else None
        if status != check.expect_status:
            return False, f"HTTP {status} (want {check.expect_status}): {_quoted(body)}"
        if want is not None and want not in body:
            return False, f"body lacks {want!r}: {_quoted(body)}"
        return True, body[:200]
    if check.kind == "tcp":
        port = expand(check.port or "", variables)
        try:
            with socket.create_connection((check.host, int(port)), timeout=check.timeout):
                return True, f"connected to {check.host}:{port}"
        except (OSError, ValueError) as e:
            return False, f"{check.host}:{port}: {e}"
    argv = [expand(a, variables) for a in check.command]
    try:
        p = commands.run(argv, cwd=root, timeout=check.timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    out = p.output.strip()[-200:]
    return p.returncode == 0, out


FIRST_POLL = 0.005
"""The first wait between two tries of a check, doubling up to the check's ``interval``:
a service that answers 30 ms after its start is seen then, not at the next 200 ms tick
(the outage window ends when health passes; issue 23)."""


def _quoted(body: str) -> str:
    """A response body in a message: quoted, so that it stays on one line whatever it holds."""
    return repr(body if len(body) <= 200 else body[:200] + "...")


def poll_delay(check: HealthCheck, attempt: int) -> float:
    """Seconds to wait after try ``attempt`` (0-based) of ``check`` failed."""
    return min(check.interval, FIRST_POLL * (1 << min(attempt, 30)))


def wait_healthy(checks: tuple[HealthCheck, ...], variables: Mapping[str, str], root: Path) -> float:
    """Run every check until it passes, polling at once and then with growing waits
    (:func:`poll_delay`); returns seconds spent.

    Raises:
        HealthCheckError: a check failed all its retries (names it, with its last output).
    """
    t0 = time.monotonic()
    for check in checks:
        last = ""
        for attempt in range(check.retries):
            ok, last = probe(check, variables, root)
            if ok:
                break
            if attempt + 1 < check.retries:
                time.sleep(poll_delay(check, attempt))
        else:
            raise HealthCheckError(
                f"health check {check.name!r} failed after {check.retries} tries: {last}",
                check=check.name,
                last_output=last,
            )
    return time.monotonic() - t0
