"""bundle-build: reproducibility, spec errors, inspect, and the ZIP writer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from builder.zipwriter import Source, ZipWriter
from tests.helpers import REPO, SPECS, build, build_demo


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def differing(a: Path, b: Path) -> list[str]:
    """Entries of two bundles whose stored bytes or headers differ (for a failure message:
    which entry, and whether its content or only its encoding)."""
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        out = []
        for x, y in zip(za.infolist(), zb.infolist(), strict=False):
            if (x.filename, x.compress_type, x.compress_size, x.CRC) != (
                y.filename,
                y.compress_type,
                y.compress_size,
                y.CRC,
            ):
                same = za.read(x.filename) == zb.read(y.filename) if x.filename == y.filename else False
                out.append(f"{x.filename} ({'same content, other encoding' if same else 'other content'})")
        return out or [f"{len(za.infolist())} vs {len(zb.infolist())} entries"]


def test_build_twice_is_byte_identical(tmp_path: Path, keys: dict[str, Path]) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"d{i}"
        p = build_demo(out, keys["key"], "--json", "--checksum", "--no-installer")
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        assert doc["sha256"] == sha(Path(doc["bundle"]))
        outs.append(doc["sha256"])
    bundles = [next((tmp_path / f"d{i}").glob("*.zip")) for i in range(2)]
    assert outs[0] == outs[1], differing(*bundles)


def test_build_independent_of_checkout_mtimes_and_umask(tmp_path: Path, keys: dict[str, Path]) -> None:
    """A fresh clone has other mtimes and maybe another umask: same bytes."""
    specs = tmp_path / "specs"
    old = os.umask(0o077)
    try:
        shutil.copytree(SPECS, specs, symlinks=True)
    finally:
        os.umask(old)
    for f in specs.rglob("*"):
        if not f.is_symlink():
            os.utime(f, (1_000_000_000, 1_000_000_000))
    a = build(
        "--specs", SPECS, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", tmp_path / "a"
    )
    b = build(
        "--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", tmp_path / "b"
    )
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    name = "demo-manager-4.0.1-to-4.1.1.zip"
    assert sha(tmp_path / "a" / name) == sha(tmp_path / "b" / name), differing(
        tmp_path / "a" / name, tmp_path / "b" / name
    )


def test_source_date_epoch_sets_timestamps(tmp_path: Path, keys: dict[str, Path]) -> None:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "builder.cli",
            "--specs",
            str(SPECS),
            "--from",
            "4.0.1",
            "--to",
            "4.1.1",
            "--key",
            str(keys["key"]),
            "--out",
            str(tmp_path),
        ],
        env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"},
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    with zipfile.ZipFile(tmp_path / "demo-manager-4.0.1-to-4.1.1.zip") as z:
        assert {i.date_time[:3] for i in z.infolist()} == {(2023, 11, 14)}


def test_undefined_jump_lists_defined(tmp_path: Path, keys: dict[str, Path]) -> None:
    """No jump and no chain of jumps: refused with the defined ones (a chain is built: see
    test_upgrade_paths)."""
    p = build("--specs", SPECS, "--from", "4.2.0", "--to", "5.0.0", "--key", keys["key"], "--out", tmp_path)
    assert p.returncode == 2
    assert "no jump 4.2.0 -> 5.0.0 and no chain of jumps (no jump leaves 4.2.0)" in p.stderr
    assert "4.1.1 -> 4.2.0" in p.stderr
    assert not list(tmp_path.iterdir())


def test_spec_errors_name_file_and_field(tmp_path: Path, keys: dict[str, Path]) -> None:
    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs, symlinks=True)
    jump = specs / "demo-manager/jumps/4.0.1-4.1.1.yaml"
    jump.write_text(jump.read_text().replace("policy: rewrite", "policy: sometimes"))
    p = build(
        "--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", tmp_path / "o"
    )
    assert p.returncode == 2
    line = 1 + jump.read_text().splitlines().index("    policy: sometimes")  # the line of the key
    assert f"{jump}:{line}: error: configs.0.policy" in p.stderr, p.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_keygen_private_key_is_0600(tmp_path: Path) -> None:
    p = build("keygen", "--out", tmp_path, "--name", "k", "--json")
    assert p.returncode == 0
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    assert build("keygen", "--out", tmp_path, "--name", "k").returncode != 0  # no silent overwrite


def test_inspect_human_and_json(bundle: Path, keys: dict[str, Path]) -> None:
    p = build("inspect", bundle, "--trust", keys["pub"])
    assert p.returncode == 0, p.stderr
    assert "demo-manager 4.0.1 -> 4.1.1" in p.stdout and "verified" in p.stdout
    assert "config etc/demo-manager/manager.ini: rewrite" in p.stdout
    assert "DEVELOPMENT" in p.stdout
    assert "migration: main 0002 -> 0004 (2 revision(s): 0003, 0004)" in p.stdout  # not only in --json
    assert "hook: node (node)" in p.stdout
    doc = json.loads(build("inspect", bundle, "--json").stdout)
    assert doc["manifest"]["from_version"] == "4.0.1" and doc["development"] is True
    p = build("inspect", bundle, "--trust", keys["evil_pub"])
    assert p.returncode == 3


def test_bundle_manifest_records_drift_hashes_and_removals(bundle: Path) -> None:
    with zipfile.ZipFile(bundle) as z:
        m = json.loads(z.read("manifest.json"))
        names = z.namelist()
    files = {f["path"]: f for f in m["files"]}
    assert files["opt/demo-manager/VERSION"]["from_sha256"] == hashlib.sha256(b"4.0.1\n").hexdigest()
    assert files["opt/demo-manager/lib/demo_manager/metrics.py"]["from_sha256"] is None
    removed = [r["path"] for r in m["removed"] if ".dist-info/" not in r["path"]]
    assert removed == ["opt/demo-manager/lib/demo_manager/legacy_tcp.py"]
    assert names[-2:] == ["manifest.json", "manifest.sig"]
    assert "payload/opt/demo-manager/bin/demo-manager" not in names  # unchanged files do not ship


def test_zipwriter_stores_incompressible_and_reads_back(tmp_path: Path) -> None:
    (tmp_path / "text").write_text("config line\n" * 50_000)
    (tmp_path / "random").write_bytes(os.urandom(2_000_000))
    (tmp_path / "empty").write_bytes(b"")
    # above the one-shot size: streamed through the compressor / re-read to be stored
    (tmp_path / "big-text").write_text("endpoint = http://node:8080\n" * 250_000)
    (tmp_path / "big-random").write_bytes(os.urandom(5_000_000))
    names = ("text", "random", "empty", "big-text", "big-random")
    for force64 in (False, True):
        dest = tmp_path / f"t{force64}.zip"
        with open(dest, "wb") as f:
            w = ZipWriter(f, epoch=1_700_000_000, force_zip64=force64)
            digests = w.write_all([Source(n, 0o640, path=tmp_path / n) for n in names])
            w.close()
        with zipfile.ZipFile(dest) as z:
            assert z.testzip() is None
            info = {i.filename: i for i in z.infolist()}
            for n in ("text", "big-text"):
                assert info[n].compress_type == zipfile.ZIP_DEFLATED
                assert info[n].compress_size < info[n].file_size // 10
            for n in ("random", "big-random"):
                assert info[n].compress_type == zipfile.ZIP_STORED
            assert info["text"].external_attr >> 16 == 0o100640
            for n in names:
                assert hashlib.sha256(z.read(n)).hexdigest() == digests[n][0]
        p = subprocess.run(["unzip", "-tq", str(dest)], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr


def test_zipwriter_leaves_no_temp_files_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    (tmp_path / "big").write_text("line\n" * 2_000_000)  # spills to a temp file
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out/out.zip", "wb") as f, ZipWriter(f, epoch=1_700_000_000) as w:
        w.write_all([Source("big", 0o644, path=tmp_path / "big")])
        with pytest.raises(ValueError, match="duplicate entry big"):
            w.write_all([Source("big", 0o644, data=b"again")])
        with pytest.raises(FileNotFoundError):
            w.write_all([Source("gone", 0o644, path=tmp_path / "gone")])
    assert list((tmp_path / "tmp").iterdir()) == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["out.zip"]  # segments beside it


def test_zipwriter_many_entries_uses_zip64_end_record(tmp_path: Path) -> None:
    dest = tmp_path / "many.zip"
    n = 70_000
    with open(dest, "wb") as f:
        w = ZipWriter(f, epoch=1_700_000_000, level=0)
        w.write_all(Source(f"f{i:05d}", 0o644, data=b"x") for i in range(n))
        w.close()
    with zipfile.ZipFile(dest) as z:
        assert len(z.infolist()) == n and z.read("f69999") == b"x"


def test_every_demo_jump_builds_with_rehearsal(tmp_path: Path, keys: dict[str, Path]) -> None:
    for frm, to in (("3.4.2", "4.0.1"), ("4.0.1", "4.1.1"), ("4.1.1", "4.2.0")):
        p = build(
            "--specs", SPECS, "--from", frm, "--to", to, "--key", keys["key"], "--out", tmp_path, "--json"
        )
        assert p.returncode == 0, p.stderr
        with zipfile.ZipFile(json.loads(p.stdout)["bundle"]) as z:
            db = json.loads(z.read("manifest.json"))["databases"][0]
        assert db["revisions"] and db["rehearsal_seconds"] == 0.5


def test_a_write_back_error_of_the_early_flush_fails_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The payload is synced in the background while the manifest is made; an EIO seen
    there is reported once per open file, so close() must raise it, not lose it."""
    import errno

    from builder import build as build_mod

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    out = build_mod._OutFile(tmp_path / "b.zip")
    out.f.write(b"payload")
    monkeypatch.setattr(build_mod.os, "fdatasync", eio)
    out.flush_early()
    out.f.write(b"manifest")
    with pytest.raises(OSError, match="Input/output error"):
        out.close()
    out.discard()


def test_include_exclude_patterns_match_as_fnmatchcase() -> None:
    """The spec's file patterns are compiled into one regex per set: same answers as
    fnmatch.fnmatchcase pattern by pattern (case-sensitive, '*' crosses '/')."""
    import fnmatch

    from builder.trees import matches as _matches

    sets = [(), ("**",), ("*",), ("opt/*",), ("*.py", "etc/*.conf"), ("a[bc]?/x*",), (".done", "*/.git/*")]
    paths = ["opt/app/x.py", "etc/a.conf", "etc/sub/a.conf", ".done", "abz/xy", "ab/x", "a/.git/h", "X.PY"]
    for patterns in sets:
        for path in [*paths, "é/x.py"]:
            want = any(fnmatch.fnmatchcase(path, p) for p in patterns)
            assert _matches(path, patterns) == want, (path, patterns)


@pytest.mark.parametrize("prog", ["bundle-build", "bundle-install"])
def test_shell_completion_for_bash_zsh_and_fish(prog: str) -> None:
    """Both CLIs print a completion script per shell (``--install-completion`` installs it),
    and bash completion completes sub-commands."""
    exe = str(Path(sys.executable).parent / prog)
    var = "_" + prog.upper().replace("-", "_") + "_COMPLETE"
    for shell in ("bash", "zsh", "fish"):
        p = subprocess.run([exe, "--show-completion", shell], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and var in p.stdout, (shell, p.stdout, p.stderr)
    word, want = ("ins", "inspect") if prog == "bundle-build" else ("roll", "rollback")
    env = {**os.environ, var: "complete_bash", "COMP_WORDS": f"{prog} {word}", "COMP_CWORD": "1"}
    p = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=60)
    assert p.stdout.split() == [want], p.stdout + p.stderr


def test_every_signing_key_problem_is_exit_2_in_one_line(tmp_path: Path, keys: dict[str, Path]) -> None:
    """Missing, a directory, the public key, not a key, readable by others: each is the
    operator's argument, so exit 2, one line naming the problem, nothing in --out."""
    junk = tmp_path / "junk.key"
    junk.write_text("junk\n")
    junk.chmod(0o600)
    loose = tmp_path / "loose.key"
    loose.write_bytes(keys["key"].read_bytes())
    loose.chmod(0o644)
    cases = {
        tmp_path / "missing.key": "no such file (bundle-build keygen makes one)",
        tmp_path: "not a file",
        keys["pub"]: "a public key; --key takes the private key",
        junk: "not a PEM private key",
        loose: "readable by others (mode 0644); chmod 600 it",
    }
    for key, said in cases.items():
        out = tmp_path / "out"
        p = build_demo(out, key)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and said in lines[0], (key, p.stderr)
        assert not out.exists() or not list(out.iterdir())


def test_a_chain_builds_as_one_library_call_with_the_product_loaded_once(
    tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """builder.release is what the CLI calls: a chain of three jumps from one loaded product
    (no second load), each result printable as the CLI's --json document."""
    import builder.spec
    from builder import release

    product = builder.spec.load_product(SPECS, None)
    loads: list[object] = []
    monkeypatch.setattr(builder.spec, "load_product", lambda *a, **k: loads.append(a))
    chain = release.chain_of(product, "3.4.2", "4.2.0")
    assert chain == [("3.4.2", "4.0.1"), ("4.0.1", "4.1.1"), ("4.1.1", "4.2.0")]
    heard: list[str] = []
    options = release.BuildOptions(tmp_path, key=keys["key"], rehearse=False)
    built = release.build(product, chain, options, on_built=lambda b: heard.append(b.result.path.name))
    assert loads == []
    assert heard == [f"demo-manager-{a}-to-{b}.zip" for a, b in chain]
    doc = built[1].to_json()
    assert doc["bundle"] == str(tmp_path / "demo-manager-4.0.1-to-4.1.1.zip") and doc["signed"] is True
    assert set(doc) == {"ok", "bundle", "sha256", "size", "files", "removed", "signed", "installer",
                        "development", "seconds", "format", "delta", "rpm", "installer_patch", "sbom",
                        "changes"}  # fmt: skip
    cli = build("--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", tmp_path / "cli",
                "--no-rehearse", "--no-installer", "--json")  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["sha256"] is None and sha(Path(json.loads(cli.stdout)["bundle"])) == sha(
        built[1].result.path
    )


def test_no_jump_and_no_chain_is_one_line_naming_the_defined_jumps(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    from builder import release
    from builder.errors import UnknownJumpError
    from builder.spec import load_product

    with pytest.raises(
        UnknownJumpError, match=r"no jump 4\.2\.0 -> 3\.4\.2 and no chain.*defined: 3\.4\.2 -> 4\.0\.1"
    ):
        release.chain_of(load_product(SPECS, None), "4.2.0", "3.4.2")
    with pytest.raises(Exception, match="format 'tar'"):
        release.build(load_product(SPECS, None), [], release.BuildOptions(tmp_path, key=None, formats="tar"))
