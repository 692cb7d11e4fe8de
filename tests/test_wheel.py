"""jumpkit as an installed tool (issue 22): the wheel, built with the frozen installer
inside, installed into a clean venv outside the checkout, builds the demo jump as ZIP
and RPM with no freeze step and no checkout templates, and the installer it embedded
applies the ZIP to a sandbox manager; without the fleet extra, a rollout says so in
one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import REPO, SPECS, Sandbox

UV = shutil.which("uv") or "uv"


def _run(argv: list[str | Path], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "JUMPKIT_", "PYTHONPATH"))}
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=600, **kw)  # type: ignore[call-overload,no-any-return]  # fmt: skip


@pytest.fixture(scope="module")
def tool(tmp_path_factory: pytest.TempPathFactory, frozen: Path) -> Path:
    """bin/ of a fresh venv holding only the built wheel and its locked dependencies
    (no fleet extra), made from outside the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "JUMPKIT_WHEEL_INSTALLER": str(frozen)}
    p = subprocess.run([UV, "build", "--quiet", "--wheel", "--out-dir", str(work / "dist"), str(REPO)],
                       cwd=work, capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr
    (wheel,) = (work / "dist").glob("*.whl")
    assert wheel.name.endswith("-py3-none-manylinux_2_17_x86_64.whl"), wheel.name
    reqs = work / "requirements.txt"
    p = _run([UV, "export", "--project", REPO, "--frozen", "--no-dev", "--no-hashes", "--no-emit-project",
              "-o", reqs], cwd=work)  # fmt: skip
    assert p.returncode == 0, p.stderr
    venv = work / "venv"
    p = _run([UV, "venv", "--quiet", "--python", sys.executable, venv], cwd=work)
    assert p.returncode == 0, p.stderr
    p = _run([UV, "pip", "install", "--quiet", "--python", venv / "bin/python", "-c", reqs, wheel], cwd=work)
    assert p.returncode == 0, p.stderr
    return venv / "bin"


def test_the_installed_wheel_builds_zip_and_rpm_and_its_installer_applies(
    tool: Path, tmp_path: Path, sandbox: Callable[..., Sandbox]
) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    p = _run([tool / "bundle-build", "keygen", "--out", "keys"], cwd=work)
    assert p.returncode == 0, p.stderr
    build = [tool / "bundle-build", "--specs", SPECS, "--from", "4.0.1", "--to", "4.1.1"]
    p = _run([*build, "--key", "keys/signing.key", "--format", "all", "--out", "out", "--json"], cwd=work)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    bundle = Path(doc["bundle"]) if Path(doc["bundle"]).is_absolute() else work / doc["bundle"]
    rpms = list((work / "out").glob("*.rpm"))
    assert len(rpms) == 1, list((work / "out").iterdir())
    with zipfile.ZipFile(bundle) as z:
        manifest = json.loads(z.read("manifest.json"))
        assert manifest["installer"] is not None and not manifest.get("development")
        installer = work / "bundle-install"
        installer.write_bytes(z.read("bin/bundle-install"))
        installer.chmod(0o755)
    sb = sandbox()
    p = _run([installer, "--root", sb.root, "--trust", work / "keys/signing.pub", "apply", bundle], cwd=work)
    assert p.returncode == 0, p.stderr
    assert sb.wait_version("4.1.1") == "4.1.1"


def test_a_rollout_without_the_fleet_extra_names_it_in_one_line(tool: Path, tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("[managers]\nm1 ansible_host=127.0.0.1\n")
    p = _run(
        [tool / "bundle-build", "rollout", "status", "-i", tmp_path / "hosts", "--specs", SPECS], cwd=tmp_path
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "uv tool install 'jumpkit[fleet]'" in lines[0], p.stderr


def test_version_warns_of_a_foreign_installer_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyPI's ``installer`` in the same environment: ``--version`` says so in one line."""
    from importlib import metadata

    from builder.resources import foreign_installer

    assert foreign_installer() is None
    real = metadata.distribution

    def fake(name: str) -> metadata.Distribution:
        if name == "installer":
            return type("D", (), {"version": "0.7.0"})()  # type: ignore[return-value]
        return real(name)

    monkeypatch.setattr(metadata, "distribution", fake)
    line = foreign_installer()
    assert line is not None and "PyPI's 'installer' 0.7.0" in line and "uv tool install jumpkit" in line
