"""hatchling build hook for jumpkit's wheel (pyproject: tool.hatch.build.targets.wheel.hooks).

The repository's ``templates/`` always travel as ``builder/_data/templates``. When
``dist/bundle-install`` exists (``scripts/freeze-installer`` makes it: one static x86-64
file, staticx-wrapped, so it runs on any Linux kernel whatever the glibc), it travels as
``builder/_data/bundle-install`` and the wheel is tagged for Linux x86-64 instead of
``any``: an installed ``bundle-build`` then embeds it in release bundles with no freeze
step on the build host. ``JUMPKIT_WHEEL_INSTALLER=PATH`` names another binary;
``JUMPKIT_WHEEL_INSTALLER=none`` builds the pure wheel (development bundles only).
Editable installs (``uv sync``) read the checkout instead and take nothing here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PLATFORM_TAG = "py3-none-manylinux_2_17_x86_64"
"""The frozen installer carries its own loader and libc (staticx): the oldest manylinux
tag pip knows for x86-64 is honest for it."""


class JumpkitWheelHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            return
        root = Path(self.root)
        build_data["force_include"][str(root / "templates")] = "builder/_data/templates"
        choice = os.environ.get("JUMPKIT_WHEEL_INSTALLER", str(root / "dist/bundle-install"))
        if choice == "none" or not Path(choice).is_file():
            self.app.display_warning(
                f"jumpkit wheel: no frozen installer at {choice} (scripts/freeze-installer): "
                "a pure wheel whose bundle-build makes development bundles unless given --installer"
            )
            return
        build_data["force_include"][choice] = "builder/_data/bundle-install"
        build_data["pure_python"] = False
        build_data["tag"] = PLATFORM_TAG
