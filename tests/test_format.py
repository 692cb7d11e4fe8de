"""The format module: canonical JSON, strict parsing, versions, hostile paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from installer.codec import canonical_json, loads_strict, parse_manifest
from installer.errors import ManifestError, RootLinkError, UnsafePathError, VersionError
from installer.paths import check_link_target, check_relpath, target_path
from installer.version import Version


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()


def test_duplicate_keys_and_nan_refused() -> None:
    with pytest.raises(ManifestError, match="duplicate"):
        loads_strict(b'{"a":1,"a":2}', what="x")
    with pytest.raises(ManifestError):
        loads_strict(b'{"a":NaN}', what="x")


@pytest.mark.parametrize(
    "data", [b"", b"[]", b'{"format":2}', b'{"format":1}', b"\xff\xfe", b'{"format":1,"product":"x"}']
)
def test_bad_manifests_raise_manifest_error(data: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(data)


def test_versions_order_as_semver() -> None:
    assert Version.parse("4.0.1") < Version.parse("4.1.1") < Version.parse("4.10.0")
    assert Version.parse("4.2.0-rc1") < Version.parse("4.2.0")
    for bad in ("4.0", "v4.0.1", "04.0.1", "4.0.1.2", ""):
        with pytest.raises(VersionError):
            Version.parse(bad)


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\\b", "a\x00b", "", "a\nb"]
)
def test_unsafe_relpaths(path: str) -> None:
    with pytest.raises(UnsafePathError):
        check_relpath(path)


def test_link_targets_must_stay_inside() -> None:
    assert check_link_target("opt/a/CHANGES", "share/doc/x") == "share/doc/x"
    assert check_link_target("opt/a/b", "../c") == "../c"
    for bad in ("/etc/passwd", "../../../x", "../../.."):
        with pytest.raises(UnsafePathError):
            check_link_target("opt/a", bad)


def test_symlinked_parent_out_of_root_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "opt").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "opt/app").symlink_to(tmp_path / "outside")
    with pytest.raises(RootLinkError):  # the manager's own tree: exit 4, naming the link
        target_path(root, "opt/app/file")
    (root / "opt/inside").mkdir()
    (root / "opt/link").symlink_to("inside")
    assert target_path(root, "opt/link/file") == root / "opt/link/file"


def test_one_targets_pass_checks_every_path_like_target_path(tmp_path: Path) -> None:
    """Targets caches the parents it has checked: later paths under a good directory, a
    missing one, a symlink out of the root or a file get the same answers as alone."""
    from installer.paths import Targets

    root = tmp_path / "root"
    (root / "opt/app/lib").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "opt/out").symlink_to(tmp_path / "outside")
    (root / "opt/inside").symlink_to("app")
    (root / "opt/file").write_text("x")
    paths = [
        "opt/app/lib/a.py",
        "opt/app/lib/b.py",
        "opt/new/dir/c",
        "opt/new/dir/d",
        "opt/out/e",
        "opt/out/f",
        "opt/inside/lib/g",
        "opt/file/h",
        "opt/app/lib/../x",
    ]
    targets = Targets(root)
    for rel in paths:
        try:
            alone: object = target_path(root, rel)
        except (UnsafePathError, RootLinkError) as e:
            alone = type(e), str(e)
        try:
            cached: object = targets(rel)
        except (UnsafePathError, RootLinkError) as e:
            cached = type(e), str(e)
        assert cached == alone, rel
    with pytest.raises(RootLinkError, match="symlink leading out of the root"):
        targets("opt/out/again")
    with pytest.raises(UnsafePathError, match="not a directory"):
        targets("opt/file/again")


def test_installer_imports_no_build_host_modules() -> None:
    code = (
        "import sys, installer.cli, installer.engine, installer.archive, installer.stage\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('builder', 'jinja2', 'yaml')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_manifest_bytes_is_the_canonical_dump_across_chunks(bundle: Path) -> None:
    """The file list is serialised in chunks and spliced in; the bytes must be exactly
    the canonical JSON of the whole manifest, whatever the entry kinds and count."""
    import zipfile

    from installer.codec import manifest_bytes, manifest_dict
    from installer.format import Delta, FileEntry, RewriteRule

    with zipfile.ZipFile(bundle) as z:
        signed = z.read("manifest.json")
    demo = parse_manifest(signed)
    assert manifest_bytes(demo) == signed
    kinds = [
        FileEntry(path=f"opt/f{i:05d}", sha256="a" * 64, size=i, mode=0o755 if i % 2 else 0o644)
        for i in range(2345)
    ] + [
        FileEntry(path="opt/link", kind="symlink", link_target="f00001", mode=0o777),
        FileEntry(
            path="opt/patched.so",
            sha256="d" * 64,
            size=9,
            from_sha256="e" * 64,
            delta=Delta(method="bsdiff", sha256="f" * 64, size=3, from_size=8),
        ),
        FileEntry(
            path="etc/é.conf",
            kind="config",
            sha256="b" * 64,
            from_sha256="c" * 64,
            policy="rewrite",
            rules=(RewriteRule(pattern=r"tcp://(\S+)", replacement=r"http://\1"),),
        ),
    ]
    for files in ((), tuple(kinds[:1]), tuple(kinds[:1000]), tuple(kinds[:1001]), tuple(kinds)):
        m = demo.model_copy(update={"files": tuple(sorted(files, key=lambda f: f.path)), "format": 2})
        assert manifest_bytes(m) == canonical_json(manifest_dict(m))
