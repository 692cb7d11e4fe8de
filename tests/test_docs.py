"""The docs a reader follows work as written: the README's tour runs and prints what it
shows, and every link of the README reaches a file and a heading of it. (The docs/ site is
built with ``mkdocs build --strict`` by scripts/test, which fails on a broken link there.)"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO, SPECS, free_port, short_tmp

MARK = "<!-- tested: tests/test_docs.py"


def tour(text: str) -> list[tuple[str, list[str]]]:
    """The commands of the marked console block, each with the output lines shown."""
    block = text.split(MARK, 1)[1].split("```console\n", 1)[1].split("\n```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def matches(shown: list[str], got: list[str]) -> bool:
    """``shown`` against ``got`` line by line: ``...`` in a line is any text, a line that
    is only ``...`` any number of lines."""
    if not shown:
        return True
    if shown[0] == "...":
        return any(matches(shown[1:], got[i:]) for i in range(len(got) + 1))
    if not got:
        return False
    pattern = ".*".join(re.escape(part) for part in shown[0].split("..."))
    return re.fullmatch(pattern, got[0]) is not None and matches(shown[1:], got[1:])


def test_readme_tour_runs_as_shown() -> None:
    steps = tour((REPO / "README.md").read_text())
    assert len(steps) >= 8, steps
    work = short_tmp("jk-tour-")
    shutil.copytree(SPECS, work / "specs", symlinks=True)
    port = str(free_port())
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "JUMPKIT_NO_INSTALLER": "1"}
    try:
        for command, shown in steps:
            command, shown = command.replace("18080", port), [s.replace("18080", port) for s in shown]
            p = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                               timeout=300)  # fmt: skip
            assert p.returncode == 0, (command, p.stdout, p.stderr)
            if command.startswith("curl") and p.stdout.strip() != shown[0]:  # the restart may lag a bit
                p = subprocess.run(["bash", "-c", f"sleep 1; {command}"], cwd=work, capture_output=True,
                                   text=True, timeout=30)  # fmt: skip
            got = p.stdout.splitlines()
            assert matches(shown, got), f"$ {command}\nshown:\n" + "\n".join(shown) + "\ngot:\n" + p.stdout
    finally:
        pidfile = work / "demo/var/run/supervisord.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)
        shutil.rmtree(work, ignore_errors=True)


def slug(heading: str) -> str:
    """The anchor GitHub and mkdocs give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_readme_link_reaches_a_file_and_heading() -> None:
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = REPO / path
        assert target.exists(), link
        if anchor:
            heads = [slug(h) for h in re.findall(r"^#+ (.+)$", target.read_text(), re.M)]
            assert anchor in heads, (link, heads)


def test_matching_of_shown_output() -> None:
    assert matches(["a ... c", "...", "z"], ["a b c", "x", "y", "z"])
    assert matches(["..."], [])
    assert not matches(["a"], ["b"])
    assert not matches(["a", "b"], ["a"])
