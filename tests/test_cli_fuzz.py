"""Random argument vectors for both CLIs and random edits of a product spec: whatever the
input, the run ends in a documented exit code and at most one error line, never a
traceback or an 'internal error' (a bug). Run in-process through the same guard as the
console scripts, so hundreds of vectors take seconds."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from installer import entry
from tests.counts import count
from tests.helpers import SPECS

INSTALLER_CODES = {0, 2, 3, 4, 5, 6, 7}
BUILDER_CODES = {0, 1, 2, 3, 4, 5}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

WORDS = st.sampled_from(
    ["", "-", "--", "x", "4.0.1", "4.1.1", "9.9.9", "1.10", "..", "/", "\x00", "a\nb", "é", "-1", "0",
     "99999999999999999999999", "512M", "lots", "zip", "rpm", "role", "node", "postgresql"]
)  # fmt: skip
INSTALLER_WORDS = st.sampled_from(
    ["verify", "stage", "apply", "plan", "status", "resume", "rollback", "unstage", "jobs", "components",
     "cluster", "migrations", "--json", "--state-dir", "--trust", "--allow-unsigned", "--accept-drift",
     "--force", "--max-bundle-size", "--sql", "--dialect", "--host", "--detach-components", "--wait-jobs",
     "--help", "--version", "--root"]
)  # fmt: skip
COMMANDS = ["verify", "stage", "apply", "plan", "status", "resume", "rollback", "unstage", "jobs",
            "components", "migrations", "cluster"]  # fmt: skip
BUILDER_WORDS = st.sampled_from(
    ["plan", "inspect", "--from", "--to", "--product", "--specs", "--json", "--unsigned", "--level",
     "--checksum", "--no-rehearse", "--no-installer", "--format", "--help", "--version"]
)  # fmt: skip


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "root").mkdir()
    (d / "junk.zip").write_bytes(b"PK\x03\x04 not really a zip")
    (d / "empty.zip").write_bytes(b"")
    (d / "text").write_text("hello\n")
    return {"root": str(d / "root"), "junk": str(d / "junk.zip"), "empty": str(d / "empty.zip"),
            "text": str(d / "text"), "missing": str(d / "missing"), "dir": str(d)}  # fmt: skip


def run(prog: str, app: Any, argv: list[str], cwd: str) -> tuple[int, str, str]:
    """One run through the console script's guard; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                entry.run(prog, lambda: app(args=argv, prog_name=prog), interrupted_code=5)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def no_bug(code: int, out: str, err: str, codes: set[int], prog: str) -> None:
    text = out + err
    assert "Traceback" not in text and "internal error:" not in text, text[-2000:]
    assert code in codes, f"exit {code}: {text[-1000:]}"
    if code not in (0,) and "--help" not in text:
        errors = [x for x in err.splitlines() if x.startswith(f"{prog}: ")]
        assert len(errors) <= 1, err


def vectors(words: st.SearchStrategy[str], places: dict[str, str]) -> st.SearchStrategy[list[str]]:
    paths = st.sampled_from([places[k] for k in ("junk", "empty", "text", "missing", "dir")])
    return st.lists(words | WORDS | paths, min_size=0, max_size=8)


@given(data=st.data())
@FUZZ
def test_bundle_install_random_argv(data: st.DataObject, places: dict[str, str]) -> None:
    from installer.cli import app

    if data.draw(st.booleans()):  # free-form, or shaped like a real call (reaches verify, pre-flight)
        argv = ["--root", places["root"], *data.draw(vectors(INSTALLER_WORDS, places))]
    else:
        flags = data.draw(
            st.lists(st.sampled_from(["--json", "--allow-unsigned", "--accept-drift", "--force"]))
        )
        command = data.draw(st.sampled_from(COMMANDS))
        paths = st.sampled_from([places[k] for k in ("junk", "empty", "text", "missing")])
        argv = ["--root", places["root"], *flags, command, *data.draw(st.lists(paths | WORDS, max_size=3))]
    if "--root" in argv[2:]:  # a second --root must also be a harmless place
        i = argv.index("--root", 2)
        argv[i + 1 : i + 2] = [places["root"]] if i + 1 < len(argv) else []
    code, out, err = run("bundle-install", app, argv, places["dir"])
    no_bug(code, out, err, INSTALLER_CODES, "bundle-install")
    assert not os.listdir(places["root"]), f"{argv} wrote into the root"
    count("fuzzed argument vectors (bundle-install, no traceback)")


@given(data=st.data())
@FUZZ
def test_bundle_build_random_argv(data: st.DataObject, places: dict[str, str]) -> None:
    from builder.cli import app

    argv = ["--specs", str(SPECS), "--out", places["missing"], *data.draw(vectors(BUILDER_WORDS, places))]
    code, out, err = run("bundle-build", app, argv, places["dir"])
    no_bug(code, out, err, BUILDER_CODES, "bundle-build")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(places["missing"])
    count("fuzzed argument vectors (bundle-build, no traceback)")


# --- spec edits -----------------------------------------------------------------------
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), WORDS,
    st.text(max_size=30), st.just("../../etc/passwd"), st.just("/etc/passwd"), st.just("{port"),
    st.just("(a+)+$"), st.just(r"\g<9>"), st.just("4.0"),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(WORDS, inner, max_size=3),
    max_leaves=6,
)


def _paths(node: object, prefix: tuple[object, ...] = ()) -> Iterator[tuple[object, ...]]:
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(node: Any, path: tuple[object, ...], value: object) -> Any:
    if not path:
        return value
    node[path[0]] = _set(node[path[0]], path[1:], value)
    return node


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("specs") / "specs"
    shutil.copytree(SPECS, d)
    return d


SPEC_FILES = ["demo-manager/product.yaml", "demo-manager/jumps/4.0.1-4.1.1.yaml"]


@given(which=st.sampled_from(SPEC_FILES), data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_bundle_build_random_spec_edit(
    which: str, data: st.DataObject, specs: Path, places: dict[str, str]
) -> None:
    from builder.cli import app

    path = specs / which
    original = (SPECS / which).read_text()
    doc = yaml.safe_load(original)
    where = data.draw(st.sampled_from(list(_paths(doc))[1:]))
    edited = _set(doc, where, data.draw(VALUES))
    try:
        path.write_text(yaml.safe_dump(edited))
        argv = ["--specs", str(specs), "--from", "4.0.1", "--to", "4.1.1", "--unsigned", "--no-installer",
                "--no-rehearse", "--out", places["missing"]]  # fmt: skip
        code, out, err = run("bundle-build", app, argv, places["dir"])
        no_bug(code, out, err, BUILDER_CODES, "bundle-build")
    finally:
        path.write_text(original)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(places["missing"])
    count("fuzzed spec edits (bundle-build, no traceback)")


def test_global_options_work_after_the_command(tmp_path: Path) -> None:
    """``bundle-build repo init ... --debug`` and ``bundle-install status --root R`` read
    as with the option before the command (issue 36, item 10); an option the command has
    itself stays its own (``sandbox --root`` is the sandbox's root, ``--version`` its release)."""
    from tests.helpers import SPECS, build, install

    p = build("repo", "init", "--repo", "https://example.invalid/r", "--keys", tmp_path / "k", "--debug")
    assert "No such option" not in p.stderr and "read-only (https://)" in p.stderr, p.stderr
    root = tmp_path / "r"
    p = build("sandbox", "--specs", SPECS, "--version", "4.0.1", "--root", root)
    assert p.returncode == 0, p.stderr
    p = install("status", "--root", root, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["status"] == "idle", p.stdout + p.stderr
    p = install("verify", "--trust", tmp_path / "nope.pub", "--root", root, tmp_path / "x.zip")
    assert p.returncode == 2 and "--trust" in p.stderr and "No such option" not in p.stderr, p.stderr
