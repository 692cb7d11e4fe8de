"""Shared by the benchmarks: a generated, realistic manager tree and a product spec
around it, cached under .cache/bench/ so repeated runs only measure."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "bench"
LIB_DIRS = [Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib/aarch64-linux-gnu"), Path("/usr/lib")]

WORDS = [
    "def",
    "class",
    "return",
    "import",
    "from",
    "self",
    "None",
    "True",
    "False",
    "if",
    "else",
    "elif",
    "for",
    "while",
    "in",
    "not",
    "and",
    "or",
    "try",
    "except",
    "finally",
    "with",
    "as",
    "yield",
    "lambda",
    "config",
    "service",
    "manager",
    "cluster",
    "node",
    "endpoint",
    "version",
    "upgrade",
    "bundle",
    "database",
    "schema",
    "table",
    "column",
    "index",
    "request",
    "response",
    "handler",
    "logger",
    "error",
    "value",
    "key",
    "name",
    "path",
]


def _text_corpus(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        indent = "    " * rng.randint(0, 3)
        line = indent + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def _elf_files() -> list[Path]:
    out = []
    for d in LIB_DIRS:
        if d.is_dir():
            out += [p for p in sorted(d.rglob("*.so*")) if p.is_file() and not p.is_symlink()]
    return out


def make_tree(size_mb: int = 600, files: int = 25_000) -> Path:
    """~size_mb MiB in ~files files: 35% text (source, configs), 35% ELF libraries copied
    from this machine, 30% incompressible blobs (archives, images). Deterministic."""
    tree = CACHE / f"tree-{size_mb}-{files}"
    if (tree / ".done").exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    rng = random.Random(42)
    budget = size_mb * 1024 * 1024
    text_budget, elf_budget, blob_budget = int(budget * 0.35), int(budget * 0.35), int(budget * 0.30)
    n_blob = max(1, files // 200)
    n_text = files - n_blob - min(2000, files // 10)
    corpus = _text_corpus(rng, 8 * 1024 * 1024)
    per_text = max(256, text_budget // max(n_text, 1))
    for i in range(n_text):
        p = tree / f"opt/app/lib/pkg{i % 97:02d}/mod{i // 970:03d}/file{i}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        n = rng.randint(per_text // 2, per_text * 3 // 2)
        off = rng.randrange(0, len(corpus) - n)
        p.write_bytes(f"# file {i}\n".encode() + corpus[off : off + n])
    elfs = [p for p in _elf_files() if 16 * 1024 <= p.stat().st_size <= 8 * 1024 * 1024]
    rng.shuffle(elfs)
    used = 0
    i = 0
    while used < elf_budget and elfs:
        src = elfs[i % len(elfs)]
        dest = tree / f"opt/app/native/d{i % 50:02d}/{i}-{src.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()[: elf_budget - used]
        dest.write_bytes(data)
        used += len(data)
        i += 1
    per_blob = blob_budget // n_blob
    for j in range(n_blob):
        p = tree / f"opt/app/share/blobs/blob{j:04d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(per_blob))
    (tree / ".done").write_text("ok\n")
    return tree


def tree_stats(tree: Path) -> tuple[int, int]:
    n = size = 0
    for dirpath, _, filenames in os.walk(tree):
        for f in filenames:
            if f != ".done":
                n += 1
                size += os.lstat(os.path.join(dirpath, f)).st_size
    return n, size


def make_product(tree: Path, work: Path) -> Path:
    """specs/bench/ with 1.0.0 = a VERSION file and 1.1.0 = the tree (plus its VERSION);
    returns the specs dir."""
    specs = work / "specs"
    d = specs / "bench"
    (d / "jumps").mkdir(parents=True, exist_ok=True)
    (d / "product.yaml").write_text("product: bench\nversion_file: VERSION\n")
    (d / "jumps/1.0.0-1.1.0.yaml").write_text("from: 1.0.0\nto: 1.1.0\nfiles:\n  exclude: ['.done']\n")
    (d / "releases/1.0.0/root").mkdir(parents=True, exist_ok=True)
    (d / "releases/1.0.0/root/VERSION").write_text("1.0.0\n")
    (d / "releases/1.1.0").mkdir(parents=True, exist_ok=True)
    link = d / "releases/1.1.0/root"
    if not link.exists():
        link.symlink_to(tree)
    if not (tree / "VERSION").exists():  # a jump leaves its version file saying its to-version
        (tree / "VERSION").write_text("1.1.0\n")
    return specs


def timed(argv: list[str], **kw: object) -> tuple[float, int]:
    """Run a command; returns (seconds, peak RSS in KiB of that child alone: wait4, not
    RUSAGE_CHILDREN, which would report an earlier child's peak if it was higher)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, argv)
    return dt, usage.ru_maxrss


def _tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:  # ended meanwhile
            pass
    return out


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def peak_memory(argv: list[str], **kw: object) -> tuple[int, int]:
    """Run a command; returns (peak of the summed PSS of it and its child processes,
    sampled every 5 ms; peak RSS of its largest process, from wait4), both in KiB.

    The PSS sum is the honest figure for a command that forks workers: each process's
    RSS counts the pages it shares with the others in full, and wait4 reports only the
    largest process; PSS splits shared pages between the processes that map them."""
    p = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
    peak = 0
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, sum(_pss_kib(q) for q in _tree_pids(p.pid)))
        time.sleep(0.005)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, argv)
    return peak, usage.ru_maxrss


def warm(tree: Path) -> None:
    """Read the tree once so that every contender starts from a warm page cache."""
    subprocess.run(f"tar -cf - -C {tree} . > /dev/null", shell=True, check=True)


def python() -> str:
    return sys.executable


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=600)
    ap.add_argument("--files", type=int, default=25_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each contender, interleaved; medians")
    ap.add_argument("--json", action="store_true")
    return ap


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run one of jumpkit's CLIs (``builder.cli`` / ``installer.cli``) from the repo."""
    return subprocess.run([python(), "-m", *args], capture_output=True, text=True, cwd=REPO, check=True)


def installer_argv(root: Path, *args: str | Path) -> list[str]:
    """``bundle-install --root ROOT ARGS...`` from the repo (the unfrozen installer)."""
    return [python(), "-m", "installer.cli", "--root", str(root), *map(str, args)]


def keygen(work: Path) -> tuple[Path, Path]:
    """A signing key pair under work/k; returns (private, public)."""
    cli("builder.cli", "keygen", "--out", str(work / "k"))
    return work / "k/signing.key", work / "k/signing.pub"


def frozen_installer() -> Path:
    """The frozen installer every release bundle carries (scripts/freeze-installer,
    cached by source hash: built once, ~70 s)."""
    out = subprocess.run(
        [str(REPO / "scripts/freeze-installer"), "--print-path"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    return Path(out.split()[-1])


def build_argv(specs: Path, key: Path, out: Path, installer: Path | None = None) -> list[str]:
    """The bundle-build command line for the bench product's 1.0.0 -> 1.1.0 jump: a
    release bundle with ``installer`` embedded, or a development bundle without one."""
    embed = ["--installer", str(installer)] if installer is not None else ["--no-installer"]
    return [
        python(),
        "-m",
        "builder.cli",
        "--specs",
        str(specs),
        "--from",
        "1.0.0",
        "--to",
        "1.1.0",
        "--key",
        str(key),
        "--out",
        str(out),
        *embed,
    ]
