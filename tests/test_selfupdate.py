"""Installer self-replacement bookkeeping (installer.selfupdate) without a frozen binary."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from installer import selfupdate
from installer.format import InstallerInfo


def info_for(path: Path, version: str) -> InstallerInfo:
    return InstallerInfo(sha256=hashlib.sha256(path.read_bytes()).hexdigest(), version=version, formats=(1,))


def binary(tmp: Path, name: str) -> Path:
    p = tmp / name
    p.write_text(f"#!/bin/sh\necho {name}\n")
    return p


def test_install_keeps_the_previous_and_restore_puts_it_back(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a, b = binary(tmp_path, "a"), binary(tmp_path, "b")
    ia, ib = info_for(a, "1.0.0"), info_for(b, "2.0.0")
    dest = selfupdate.installed_path(root)
    assert selfupdate.install(root, a, ia) and dest.read_bytes() == a.read_bytes()
    assert not selfupdate.install(root, a, ia), "installing the same one again is a no-op (resume)"
    assert selfupdate.install(root, b, ib) and dest.read_bytes() == b.read_bytes()
    assert dest.stat().st_mode & 0o777 == 0o755
    assert selfupdate.installed_info(root) == {"version": "2.0.0", "sha256": ib.sha256}
    assert not selfupdate.restore(root, ia), "only the installer an apply installed is undone"
    assert selfupdate.restore(root, ib)
    assert dest.read_bytes() == a.read_bytes() and selfupdate.installed_info(root)["version"] == "1.0.0"
    assert not dest.with_name("bundle-install.prev").exists()
    assert selfupdate.restore(root, ia) and not dest.exists()


@pytest.mark.parametrize(("installed", "hands_over"), [("9.9.9", True), ("0.0.1", False), ("junk", False)])
def test_hand_over_only_to_a_strictly_newer_installer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: str, hands_over: bool
) -> None:
    dest = selfupdate.installed_path(tmp_path)
    dest.parent.mkdir(parents=True)
    dest.write_text("#!/bin/sh\n")
    dest.chmod(0o755)
    (dest.parent / "bundle-install.json").write_text(json.dumps({"version": installed, "sha256": "0" * 64}))
    argv = ["bundle-install", "--root", str(tmp_path), "status"]
    assert (selfupdate.newer_installed(argv) == dest) is hands_over
    execs: list[list[str]] = []
    monkeypatch.setattr(selfupdate.os, "execve", lambda path, args, env: execs.append(args))
    monkeypatch.delenv(selfupdate.NO_REEXEC, raising=False)
    selfupdate.hand_over(argv)
    assert execs == [], "a Python checkout never hands over"
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    selfupdate.hand_over(argv)
    assert execs == ([[str(dest), "--root", str(tmp_path), "status"]] if hands_over else [])
