from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    REPO,
    SPECS,
    Sandbox,
    build,
    build_demo,
    db_state,
    free_port,
    install,
    make_sandbox,
    sqlite_url,
    tree_hash,
    tree_listing,
)
from tests.systemd import SD_HARNESS, SYSTEMD_SPECS, SystemdSandbox, make_systemd_sandbox, sd_tree


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Builds under test cache installer probes in a temp dir, not in ~/.cache."""
    import os

    d = tmp_path_factory.mktemp("cache")
    old = os.environ.get("JUMPKIT_CACHE_DIR")
    os.environ["JUMPKIT_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("JUMPKIT_CACHE_DIR", None)
    else:
        os.environ["JUMPKIT_CACHE_DIR"] = old


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
    """The demo jump as most tests apply it: its small members in a solid member and its
    SBOM with the component changes (format 5, as a release bundle ships them), so that
    the crash and signal matrices run on it."""
    out = tmp_path_factory.mktemp("dist")
    p = build_demo(out, keys["key"], "--no-installer", "--solid", "on", "--sbom", "on")
    assert p.returncode == 0, p.stderr
    return out / "demo-manager-4.0.1-to-4.1.1.zip"


@pytest.fixture(scope="session")
def plain_bundle(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> Path:
    """The demo jump with one archive member per file (``--solid none``): what the hostile
    corpus tampers with member by member (format 4's own attacks: tests/test_solid.py)."""
    out = tmp_path_factory.mktemp("dist-plain")
    p = build_demo(out, keys["key"], "--no-installer", "--solid", "none")
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


CHAIN = ["3.4.2-to-4.0.1", "4.0.1-to-4.1.1", "4.1.1-to-4.2.0"]


@pytest.fixture(scope="session")
def chain_bundles(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> list[Path]:
    out = tmp_path_factory.mktemp("chain")
    p = build("--specs", SPECS, "--from", "3.4.2", "--to", "4.2.0", "--key", keys["key"], "--out", out)
    assert p.returncode == 0, p.stderr
    assert "no direct jump 3.4.2 -> 4.2.0; building the chain of 3 bundles" in p.stderr
    return [out / f"demo-manager-{c}.zip" for c in CHAIN]


@pytest.fixture(scope="session")
def chain_expected(keys: dict[str, Path], port: int, chain_bundles: list[Path]) -> dict[str, object]:
    """3.4.2 as laid out, and 4.2.0 reached by three separate applies (three outages)."""
    sb = make_sandbox("3.4.2", keys["pub"], port)
    try:
        old, old_db, old_files = tree_hash(sb.root), db_state(sqlite_url(sb.root)), tree_listing(sb.root)
        outages = []
        for b in chain_bundles:
            p = install("--root", sb.root, "apply", b, "--json")
            assert p.returncode == 0, p.stderr
            outages.append(json.loads(p.stdout)["outage_seconds"])
        new, new_db, new_files = tree_hash(sb.root), db_state(sqlite_url(sb.root)), tree_listing(sb.root)
        return {"old": old, "old_db": old_db, "old_files": old_files, "new": new, "new_db": new_db,
                "new_files": new_files, "separate_outages": outages}  # fmt: skip
    finally:
        sb.destroy()


@pytest.fixture(scope="session")
def expected(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], port: int, bundle: Path
) -> dict[str, object]:
    """Tree hashes and database states of a clean 4.0.1 and of a clean apply to 4.1.1,
    and how long that apply took (the window the random kills aim at)."""
    sb = make_sandbox("4.0.1", keys["pub"], port)
    try:
        old, old_db, old_files = tree_hash(sb.root), db_state(sqlite_url(sb.root)), tree_listing(sb.root)
        t0 = time.monotonic()
        p = install("--root", sb.root, "apply", bundle)
        took = time.monotonic() - t0
        assert p.returncode == 0, p.stderr
        return {
            "old": old,
            "old_db": old_db,
            "old_files": old_files,
            "new": tree_hash(sb.root),
            "new_files": tree_listing(sb.root),
            "new_db": db_state(sqlite_url(sb.root)),
            "apply_seconds": took,
        }
    finally:
        sb.destroy()


# --- sandboxes under a real systemd (tests/systemd.py) ----------------------------------


@pytest.fixture(scope="session")
def sd_bundle(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> Path:
    out = tmp_path_factory.mktemp("sd-dist")
    p = build(
        "--specs", SYSTEMD_SPECS, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", out
    )
    assert p.returncode == 0, p.stderr
    return out / "demo-manager-4.0.1-to-4.1.1.zip"


@pytest.fixture
def sd_sandbox(keys: dict[str, Path], port: int) -> Iterator[Callable[..., SystemdSandbox]]:
    made: list[SystemdSandbox] = []

    def factory(version: str = "4.0.1", **kw: object) -> SystemdSandbox:
        sb = make_systemd_sandbox(version, keys["pub"], port, **kw)  # type: ignore[arg-type]
        made.append(sb)
        return sb

    yield factory
    for sb in made:
        sb.destroy()


@pytest.fixture(scope="session")
def sd_expected(keys: dict[str, Path], port: int, sd_bundle: Path) -> dict[str, object]:
    """Tree, database and systemd's view of a clean 4.0.1 and of a clean apply to 4.1.1."""
    sb = make_systemd_sandbox("4.0.1", keys["pub"], port)
    try:
        old = (sd_tree(sb.root), tree_listing(sb.root, SD_HARNESS), db_state(sqlite_url(sb.root)), sb.units())
        p = sb.install("apply", sd_bundle)
        assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
        new = (sd_tree(sb.root), tree_listing(sb.root, SD_HARNESS), db_state(sqlite_url(sb.root)), sb.units())
        return {"old": old, "new": new}
    finally:
        sb.destroy()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its counts to the controller, whose summary prints them."""
    from tests.counts import COUNTS

    out = getattr(session.config, "workeroutput", None)
    if out is not None:
        out["jumpkit_counts"] = dict(COUNTS)


def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist's hook on the controller: add a finished worker's counts."""
    from tests.counts import COUNTS

    COUNTS.update(getattr(node, "workeroutput", {}).get("jumpkit_counts", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.counts import COUNTS

    if COUNTS:
        terminalreporter.section("jumpkit reliability counts")
        for what, n in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{what}: {n}")
