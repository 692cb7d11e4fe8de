from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, Sandbox, build, build_demo, free_port, make_sandbox


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    for name in ("good", "evil"):
        p = build("keygen", "--out", d, "--name", name)
        assert p.returncode == 0, p.stderr
    return {
        "key": d / "good.key",
        "pub": d / "good.pub",
        "evil_key": d / "evil.key",
        "evil_pub": d / "evil.pub",
    }


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> Path:
    out = tmp_path_factory.mktemp("dist")
    p = build_demo(out, keys["key"], "--no-installer")
    assert p.returncode == 0, p.stderr
    return out / "demo-manager-4.0.1-to-4.1.1.zip"


@pytest.fixture(scope="session")
def frozen() -> Path:
    """The portable frozen installer (launcher + staticx + PyInstaller), built by
    scripts/freeze-installer; cached by source hash, so only the first run pays ~70 s."""
    p = subprocess.run(
        [str(REPO / "scripts/freeze-installer"), "--print-path"],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return Path(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def release_bundle(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], frozen: Path) -> Path:
    """The demo jump as a release bundle: signed, with the frozen installer in bin/."""
    out = tmp_path_factory.mktemp("release")
    p = build_demo(out, keys["key"], "--installer", frozen)
    assert p.returncode == 0, p.stderr
    return out / "demo-manager-4.0.1-to-4.1.1.zip"


@pytest.fixture(scope="session")
def port() -> int:
    """One port for every sandbox of the session (one runs at a time), so that the
    rendered configs, and so tree hashes, are the same in every sandbox."""
    return free_port()


@pytest.fixture
def sandbox(keys: dict[str, Path], port: int) -> Iterator[Callable[..., Sandbox]]:
    made: list[Sandbox] = []

    def factory(version: str = "4.0.1", **kw: object) -> Sandbox:
        sb = make_sandbox(version, keys["pub"], port, **kw)  # type: ignore[arg-type]
        made.append(sb)
        return sb

    yield factory
    for sb in made:
        sb.destroy()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.counts import COUNTS

    if COUNTS:
        terminalreporter.section("jumpkit reliability counts")
        for what, n in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{what}: {n}")
