"""Files the builder reads at run time, wherever jumpkit runs from.

An installed wheel carries them as package data under ``builder/_data/`` (the wheel
build maps the repository's ``templates/`` there, and ``dist/bundle-install`` when it
was frozen first: see ``scripts/wheel_hook.py``); a checkout reads the repository's own
``templates/`` and ``dist/``. Both are found with :mod:`importlib.resources`, so a
builder installed with ``uv tool install`` renders RPM specs, systemd units and the
rollout playbook, and embeds the installer, without a checkout.
"""

from __future__ import annotations

import importlib.util
from importlib.resources import files
from pathlib import Path

from builder.errors import MissingExtraError

CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_INSTALLER = Path("dist/bundle-install")
"""A checkout's frozen installer (``scripts/freeze-installer`` writes it), relative to the
working directory."""
FLEET_MODULES = ("ansible", "ansible_runner")


def _data(*parts: str) -> Path:
    return Path(str(files("builder").joinpath("_data", *parts)))


def templates() -> Path:
    """The template directory: the package's, else the checkout's ``templates/``."""
    packaged = _data("templates")
    return packaged if packaged.is_dir() else CHECKOUT / "templates"


def packaged_installer() -> Path | None:
    """The frozen ``bundle-install`` a platform wheel carries, if this install has one."""
    path = _data("bundle-install")
    return path if path.is_file() else None


def require_fleet(what: str) -> None:
    """Refuse in one line when the ``fleet`` extra (Ansible) is missing.

    Raises:
        MissingExtraError: ansible-core or ansible-runner is not importable.
    """
    missing = [m for m in FLEET_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"{what} needs the fleet extra ({', '.join(missing)} missing): "
            "uv tool install 'jumpkit[fleet]' (or pipx install 'jumpkit[fleet]')"
        )


def foreign_installer() -> str | None:
    """One line when this environment's ``installer`` import name is not jumpkit's alone:
    PyPI's ``installer`` distribution (pypa's wheel installer, pulled in by PDM and other
    build tools) writes the same top-level package, and installing or removing either
    breaks the other. None when jumpkit's is the only one."""
    from importlib import metadata

    try:
        other = metadata.distribution("installer").version
    except metadata.PackageNotFoundError:
        other = None
    spec = importlib.util.find_spec("installer")
    where = Path(spec.origin).resolve().parent if spec is not None and spec.origin else None
    if other is None and where == CHECKOUT / "installer":
        return None
    what = (
        f"PyPI's 'installer' {other} is installed here too" if other else f"'installer' imports from {where}"
    )
    return (
        f"warning: {what}: it shares jumpkit's 'installer' import name, so each breaks the "
        "other; install jumpkit in its own environment (uv tool install jumpkit, or pipx)"
    )
