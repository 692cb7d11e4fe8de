"""Jumps shaped like real release pairs (a Python package's wheel tree between two
versions): the manager's tree ends exactly as the to-release, directories included, and a
rollback brings the from-release back exactly, modes of directories included."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.helpers import build, install, laid_out

OLD = {
    "opt/pk/VERSION": "1.0.0\n",
    "opt/pk/lib/pk-1.0.0.dist-info/METADATA": "Name: pk\nVersion: 1.0.0\n",
    "opt/pk/lib/pk-1.0.0.dist-info/RECORD": "pk/__init__.py,,\n",
    "opt/pk/lib/pk/__init__.py": "VERSION = '1.0.0'\n",
    "opt/pk/lib/pk/old/__init__.py": "",
    "opt/pk/lib/pk/old/deep/mod.py": "x = 1\n",
}
NEW = {
    "opt/pk/VERSION": "1.1.0\n",
    "opt/pk/lib/pk-1.1.0.dist-info/METADATA": "Name: pk\nVersion: 1.1.0\n",
    "opt/pk/lib/pk-1.1.0.dist-info/RECORD": "pk/__init__.py,,\n",
    "opt/pk/lib/pk/__init__.py": "VERSION = '1.1.0'\n",
}


def _specs(tmp: Path) -> Path:
    specs = tmp / "specs"
    d = specs / "pk"
    (d / "jumps").mkdir(parents=True)
    (d / "product.yaml").write_text("product: pk\nversion_file: opt/pk/VERSION\n")
    for version, files in (("1.0.0", OLD), ("1.1.0", NEW)):
        for rel, text in files.items():
            p = d / f"releases/{version}/root/{rel}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    (d / "jumps/1.0.0-1.1.0.yaml").write_text('from: 1.0.0\nto: 1.1.0\nfiles:\n  include: ["opt/pk/*"]\n')
    return specs


def _laid_out(tmp: Path, keys: dict[str, Path]) -> tuple[Path, Path]:
    return laid_out(_specs(tmp), "pk", "1.0.0", "1.1.0", tmp, keys)


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under opt/ with its kind and permission bits."""
    out = {}
    for p in sorted((root / "opt").rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (
            "dir" if stat.S_ISDIR(st.st_mode) else "file",
            stat.S_IMODE(st.st_mode),
        )
    return out


@pytest.mark.parametrize("point", ["run:migrate", "done:swap-files", "begin:hooks-post"])
def test_directories_the_jump_empties_go_and_come_back(
    point: str, tmp_path: Path, keys: dict[str, Path]
) -> None:
    """The old dist-info and the dropped subpackage (a directory below a directory) are
    gone after the apply, as in 1.1.0: an empty pk-1.0.0.dist-info beside the new one is
    a second installed version to importlib.metadata. A rollback (a failpoint's ``fail``
    in the swap's step, at its end or at a later step's begin) makes them again, with the
    0750 the old dist-info had."""
    root, bundle = _laid_out(tmp_path, keys)
    (root / "opt/pk/lib/pk-1.0.0.dist-info").chmod(0o750)
    before = _tree(root)
    p = install("--root", root, "apply", bundle, env={"JUMPKIT_FAILPOINT": f"{point}=fail"})
    assert p.returncode == 5 and "rolled back to 1.0.0" in p.stderr, p.stderr  # also at begin:/done:
    assert _tree(root) == before
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    after = {rel for rel in _tree(root) if not rel.startswith("opt/pk/lib/pk-1.0.0.dist-info")}
    expect = {
        rel for f in NEW for rel in [f, *(str(Path(f).parents[i]) for i in range(len(Path(f).parts) - 2))]
    }
    assert set(_tree(root)) == after == expect - {"opt"}
    assert sorted(os.listdir(root / "opt/pk/lib")) == ["pk", "pk-1.1.0.dist-info"]


def test_a_directory_holding_a_file_of_the_operator_stays(tmp_path: Path, keys: dict[str, Path]) -> None:
    root, bundle = _laid_out(tmp_path, keys)
    (root / "opt/pk/lib/pk/old/deep/local.cfg").write_text("mine\n")
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert sorted(str(p.relative_to(root)) for p in (root / "opt/pk/lib/pk/old").rglob("*")) == [
        "opt/pk/lib/pk/old/deep", "opt/pk/lib/pk/old/deep/local.cfg"
    ]  # fmt: skip
    assert not (root / "opt/pk/lib/pk-1.0.0.dist-info").exists()


@pytest.mark.parametrize(
    "point", [*(f"swap:files@{n}" for n in range(1, 8)), "done:swap-files", "run:hooks-post"]
)
def test_a_crash_in_the_swap_that_empties_directories_resumes_or_rolls_back_exactly(
    point: str, tmp_path: Path, keys: dict[str, Path]
) -> None:
    """SIGKILL after each of the 7 renames (3 placed, the new dist-info as one; 4 removed),
    after the directories went, and in the step after: resume ends as 1.1.0, rollback as
    1.0.0, exactly."""
    root, bundle = _laid_out(tmp_path, keys)
    (root / "opt/pk/lib/pk-1.0.0.dist-info").chmod(0o750)
    before = _tree(root)
    p = install("--root", root, "apply", bundle, env={"JUMPKIT_FAILPOINT": point})
    assert p.returncode == -9, p.stderr
    other = tmp_path / "copy"
    shutil.copytree(root, other, symlinks=True)
    p = install("--root", root, "rollback")
    assert p.returncode == 0, p.stderr
    assert _tree(root) == before
    p = install("--root", other, "resume")
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(other / "opt/pk/lib")) == ["pk", "pk-1.1.0.dist-info"]
    assert not (other / "opt/pk/lib/pk/old").exists()


@pytest.mark.parametrize(("old", "new"), [("plugins/p1", "plugins"), ("conf", "conf/main.conf")])
def test_a_path_whose_type_changes_is_refused_at_build_time(
    old: str, new: str, tmp_path: Path, keys: dict[str, Path]
) -> None:
    """A directory that becomes a file, or a file that becomes a directory: the installer
    refuses such a bundle on every manager (exit 3), so the build says so first (exit 2,
    one line naming the path, no bundle written)."""
    specs = _specs(tmp_path)
    for version, rel in (("1.0.0", old), ("1.1.0", new)):
        p = specs / f"pk/releases/{version}/root/opt/pk/{rel}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(version)
    out = tmp_path / "dist"
    p = build("--specs", specs, "--from", "1.0.0", "--to", "1.1.0", "--key", keys["key"], "--out", out)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    kinds = ("a directory", "a file") if old.startswith(new) else ("a file", "a directory")
    name = new if old.startswith(new) else old
    assert f"opt/pk/{name} is {kinds[0]} in 1.0.0 and {kinds[1]} in 1.1.0" in lines[0], lines[0]
    assert not out.exists()
