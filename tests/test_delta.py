"""Delta bundles (issue 21): patch methods on real binaries and text, hostile patches, and
the demo jump built with --delta auto: applied, rolled back, refused over drift, crashed."""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import random
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.delta import BSDIFF_MAX, PatchJob, bsdiff_patch, choose, zstd_patch
from installer.delta import apply_patch
from installer.errors import PatchError
from tests.counts import count
from tests.crash.common import assert_exactly
from tests.helpers import REPO, Sandbox, build_demo, install, tree_hash
from tests.hostile.corpus import read, write

SITE = Path(next(p for p in sys.path if p.endswith("site-packages")))


def _real_pair() -> tuple[bytes, bytes]:
    """Two real, related ELF files (ISA-L's two extension modules)."""
    libs = sorted((SITE / "isal").glob("*.so"))
    assert len(libs) >= 2, libs
    return libs[0].read_bytes(), libs[1].read_bytes()


def _rebuilt(old: bytes, seed: int = 1) -> bytes:
    """``old`` as a rebuild changes it: bytes rewritten here and there, a block inserted."""
    rng = random.Random(seed)
    new = bytearray(old)
    for _ in range(40):
        at = rng.randrange(len(new) - 64)
        new[at : at + 16] = rng.randbytes(16)
    mid = len(new) // 2
    return bytes(new[:mid] + rng.randbytes(4096) + new[mid:])


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.mark.parametrize("method", ["bsdiff", "zstd-patch"])
@pytest.mark.parametrize("pair", ["real-elf-pair", "elf-rebuilt", "text"])
def test_round_trip(method: str, pair: str) -> None:
    if pair == "real-elf-pair":
        old, new = _real_pair()
    elif pair == "elf-rebuilt":
        old = (SITE / "re2").glob("_re2*.so").__next__().read_bytes()
        new = _rebuilt(old)
    else:
        old = (REPO / "installer/engine.py").read_bytes()
        new = old.replace(b"def ", b"def  ", 7) + b"# appended\n"
    patch = bsdiff_patch(old, new) if method == "bsdiff" else zstd_patch(old, new)
    assert apply_patch(method, old, patch, len(new), _sha(new)) == new
    assert len(patch) < len(new) // 2, f"{method} on {pair}: {len(patch)} of {len(new)}"


def _bsdiff_with(len_control: int, len_diff: int, new_size: int, blocks: list[bytes]) -> bytes:
    def i64(v: int) -> bytes:
        return struct.pack("<q", v) if v >= 0 else struct.pack("<Q", (-v) | (1 << 63))

    return b"BSDIFF40" + i64(len_control) + i64(len_diff) + i64(new_size) + b"".join(blocks)


def _zeros_bz2(mib: int) -> bytes:
    c = bz2.BZ2Compressor()
    chunk = b"\0" * (1 << 20)
    return b"".join(c.compress(chunk) for _ in range(mib)) + c.flush()


def _zeros_zstd(mib: int) -> bytes:
    """A frame of ``mib`` MiB of zeros that does not declare its size."""
    import zstandard as zstd

    c = zstd.ZstdCompressor(write_content_size=False).compressobj()
    chunk = b"\0" * (1 << 20)
    return b"".join(c.compress(chunk) for _ in range(mib)) + c.flush()


def test_hostile_patches_are_refused_with_memory_bounded() -> None:
    """Each refused as a bundle error (exit 3) before a large allocation: the declared
    size must be the manifest's; no decompressed block may exceed what the file needs."""
    import resource

    import zstandard as zstd

    old = b"old contents\n" * 1000
    new = old.replace(b"old", b"new")
    good = bsdiff_patch(old, new)
    bomb = _zeros_bz2(512)  # 512 MiB of zeros in a few hundred bytes
    control = bz2.compress(struct.pack("<qqq", 0, len(new), 0))
    cases: dict[str, tuple[str, bytes, int]] = {
        "bsdiff declares a huge new size": (
            "bsdiff", good[:24] + struct.pack("<q", 1 << 40) + good[32:], len(new),
        ),
        "bsdiff block lengths past the patch": ("bsdiff", _bsdiff_with(1 << 40, 0, len(new), []), len(new)),
        "bsdiff extra block is a bz2 bomb": (
            "bsdiff", _bsdiff_with(len(control), len(bz2.compress(b"")), len(new),
                                   [control, bz2.compress(b""), bomb]), len(new),
        ),
        "bsdiff reads past the old file": (
            "bsdiff", _bsdiff_with(len(c := bz2.compress(struct.pack("<qqq", len(new), 0, 1 << 30))),
                                   len(d := bz2.compress(b"x" * len(new))), len(new),
                                   [c, d, bz2.compress(b"")]), len(new),
        ),
        "bsdiff truncated": ("bsdiff", good[:-10], len(new)),
        "zstd frame declares a huge size": (
            "zstd-patch", zstd.ZstdCompressor().compress(b"\0" * 10_000_000), len(new),
        ),
        "zstd frame expands without bound": (
            "zstd-patch",
            _zeros_zstd(256),
            len(new),
        ),
        "not a patch": ("zstd-patch", b"garbage" * 10, len(new)),
        "unknown method": ("xdelta3", good, len(new)),
        "output hash differs": ("bsdiff", bsdiff_patch(old, new + b"!"), len(new) + 1),
    }  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for case, (method, patch, size) in cases.items():
        with pytest.raises(PatchError) as caught:
            apply_patch(method, old, patch, size, _sha(new))
        assert caught.value.exit_code == 3, case
        count("hostile delta patches refused (exit 3, memory bounded)")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"peak memory grew {grown_mib:.0f} MiB over the hostile patches"


def test_builder_chooses_by_measured_size_and_caches(tmp_path: Path) -> None:
    """bsdiff for native code within the memory cap, zstd above it; the second choice of
    the same pair is read from the cache; a file a patch barely helps travels whole."""
    old, new = _real_pair()
    (tmp_path / "old.so").write_bytes(old)
    (tmp_path / "new.so").write_bytes(new)
    job = PatchJob("opt/x.so", str(tmp_path / "old.so"), str(tmp_path / "new.so"))
    cache = tmp_path / "cache"
    first = choose(job, cache, BSDIFF_MAX)
    assert first is not None and first.new_sha256 == _sha(new)
    assert len(list(cache.iterdir())) == 2  # both methods tried and kept
    again = choose(job, cache, BSDIFF_MAX)
    assert again == first
    capped = choose(job, tmp_path / "cache2", bsdiff_max=1024)
    assert capped is not None and capped.method == "zstd-patch"
    (tmp_path / "random").write_bytes(random.Random(2).randbytes(64 * 1024))
    (tmp_path / "random2").write_bytes(random.Random(3).randbytes(64 * 1024))
    assert (
        choose(PatchJob("r", str(tmp_path / "random"), str(tmp_path / "random2")), cache, BSDIFF_MAX) is None
    )


@pytest.fixture(scope="module")
def delta_bundle(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> Path:
    out = tmp_path_factory.mktemp("delta")
    p = build_demo(out, keys["key"], "--delta", "auto", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["format"] == 2 and doc["delta"]["files"] >= 1, doc
    assert doc["delta"]["patch_bytes"] < doc["delta"]["whole_deflated_bytes"]
    return Path(doc["bundle"])


def _patched(bundle: Path) -> list[dict[str, object]]:
    with zipfile.ZipFile(bundle) as z:
        return [f for f in json.loads(z.read("manifest.json"))["files"] if f.get("delta")]


def test_delta_apply_and_rollback_exact(
    sandbox: Callable[..., Sandbox], delta_bundle: Path, expected: dict[str, object]
) -> None:
    """The demo jump with --delta auto: applied (the patched files built from 4.0.1's),
    the tree exactly a whole-file apply's, rolled back exactly."""
    sb = sandbox()
    p = install("--root", sb.root, "apply", delta_bundle)
    assert p.returncode == 0, p.stderr
    assert_exactly(sb, expected, "new", "4.1.1", "delta apply")
    for f in _patched(delta_bundle):
        assert hashlib.sha256((sb.root / str(f["path"])).read_bytes()).hexdigest() == f["sha256"]
    p = install("--root", sb.root, "rollback")
    assert p.returncode == 0, p.stderr
    assert_exactly(sb, expected, "old", "4.0.1", "delta rollback")


def test_drifted_old_file_is_refused_before_anything_stops(
    sandbox: Callable[..., Sandbox], delta_bundle: Path
) -> None:
    sb = sandbox()
    path = sb.root / str(_patched(delta_bundle)[0]["path"])
    path.write_bytes(path.read_bytes() + b"# a local fix\n")
    before = tree_hash(sb.root, exclude=())
    for argv in (("apply",), ("--accept-drift", "apply"), ("stage",)):
        p = install("--root", sb.root, *argv[:-1], argv[-1], delta_bundle)
        assert p.returncode == 4, p.stderr
        line = p.stderr.strip().splitlines()[-1]
        assert "a delta needs the exact old file: use a full bundle (bundle-build --delta none)" in line, line
        assert tree_hash(sb.root, exclude=()) == before
    assert sb.version() == "4.0.1"


def test_a_patch_that_builds_the_wrong_file_is_exit_3_nothing_swapped(
    sandbox: Callable[..., Sandbox], delta_bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Signed, but the patch builds other bytes than the manifest's sha256 (a build
    mistake): refused while staging, before anything stops; the staging is removed."""
    from builder.keys import load_private_key
    from installer.codec import canonical_json
    from installer.signing import sign_manifest

    members = read(delta_bundle)
    man = json.loads(members["manifest.json"])
    f = next(x for x in man["files"] if x.get("delta"))
    old = (REPO / "specs/demo-manager/releases/4.0.1/root" / f["path"]).read_bytes()
    wrong = zstd_patch(old, old + b"# not what the manifest says\n")
    f["delta"] = {**f["delta"], "method": "zstd-patch", "sha256": _sha(wrong), "size": len(wrong)}
    members["delta/" + f["path"]] = wrong
    data = canonical_json(man)
    sig = sign_manifest(data, load_private_key(keys["key"]))
    bad = write(tmp_path / "bad.zip", {**members, "manifest.json": data, "manifest.sig": sig})
    sb = sandbox()
    before = tree_hash(sb.root)
    p = install("--root", sb.root, "apply", bad)
    assert p.returncode == 3, p.stderr
    assert "patch" in p.stderr.strip().splitlines()[-1]
    assert tree_hash(sb.root) == before and sb.version() == "4.0.1"
    staging = sb.root / "var/lib/jumpkit/demo-manager/staging"
    assert not staging.exists() or not list(staging.iterdir())


def test_crash_while_building_patched_files_then_apply_again(
    sandbox: Callable[..., Sandbox], delta_bundle: Path, expected: dict[str, object]
) -> None:
    """SIGKILL right after a patched file is built (stage:patch): nothing of the root
    changed; applying again finishes, rolling back is exact."""
    sb = sandbox()
    p = install("--root", sb.root, "apply", delta_bundle, env={"JUMPKIT_FAILPOINT": "stage:patch"})
    assert p.returncode == -9, p.stderr
    assert_exactly(sb, expected, "old", "4.0.1", "killed at stage:patch")
    p = install("--root", sb.root, "apply", delta_bundle)
    assert p.returncode == 0, p.stderr
    assert_exactly(sb, expected, "new", "4.1.1", "applied again")
    assert install("--root", sb.root, "rollback").returncode == 0
    assert_exactly(sb, expected, "old", "4.0.1", "rolled back")


@pytest.mark.parametrize("point", ["swap:files@1", "done:health"])
def test_crash_points_of_a_delta_apply_resume_and_roll_back_exactly(
    point: str, sandbox: Callable[..., Sandbox], delta_bundle: Path, expected: dict[str, object]
) -> None:
    sb = sandbox()
    p = install("--root", sb.root, "apply", delta_bundle, env={"JUMPKIT_FAILPOINT": point})
    assert p.returncode == -9, p.stderr
    q = install("--root", sb.root, "resume")
    assert q.returncode == 0, q.stderr
    assert_exactly(sb, expected, "new", "4.1.1", f"{point}, resumed")
    assert install("--root", sb.root, "rollback").returncode == 0
    assert_exactly(sb, expected, "old", "4.0.1", f"{point}, rolled back")


def test_inspect_and_plan_show_each_patch(
    sandbox: Callable[..., Sandbox], delta_bundle: Path, keys: dict[str, Path]
) -> None:
    from tests.helpers import build

    p = build("inspect", delta_bundle, "--trust", keys["pub"])
    assert p.returncode == 0, p.stderr
    assert "patches (format 2)" in p.stdout and "% saved" in p.stdout
    sb = sandbox()
    p = install("--root", sb.root, "plan", delta_bundle, "--json")
    assert p.returncode == 0, p.stderr
    rows = [f for f in json.loads(p.stdout)["files"] if f["delta"]]
    assert rows and rows[0]["delta"]["method"] in ("zstd-patch", "bsdiff")


def test_delta_none_ships_whole_files_and_format_1_when_nothing_else_needs_2(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """--delta none: no patch. 4.0.1 -> 4.1.1 stays format 2 for its rewrite config's merge
    base; 3.4.2 -> 4.0.1 (keep-local configs only) is format 1, readable by every installer."""
    p = build_demo(tmp_path, keys["key"], "--delta", "none", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["format"] == 2 and doc["delta"]["files"] == 0
    with zipfile.ZipFile(doc["bundle"]) as z:
        assert not [n for n in z.namelist() if n.startswith("delta/")]
        assert [n for n in z.namelist() if n.startswith("base/")] == ["base/etc/demo-manager/manager.ini"]
    p = build_demo(tmp_path / "old", keys["key"], "--delta", "none", "--json", frm="3.4.2", to="4.0.1")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["format"] == 1


def test_an_old_file_that_is_a_link_out_of_the_root_is_not_read(
    sandbox: Callable[..., Sandbox], delta_bundle: Path, tmp_path: Path
) -> None:
    """The old file a patch reads is resolved beneath the root: a link out is exit 4."""
    sb = sandbox()
    path = sb.root / str(_patched(delta_bundle)[0]["path"])
    outside = tmp_path / path.name
    outside.write_bytes(path.read_bytes())
    path.unlink()
    os.symlink(outside, path)
    p = install("--root", sb.root, "apply", delta_bundle)
    assert p.returncode == 4, p.stderr
    assert sb.version() == "4.0.1"


def _renaming_product(tmp: Path) -> Path:
    """Product ``ren``: 2.0.0 renames a native library (a new build hash in its name) and a
    dist-info directory, as published wheels do; ``data-2.txt`` is added beside an
    unchanged ``data-1.txt`` of the same shape (no base: the jump need not touch it)."""
    specs = tmp / "specs"
    d = specs / "ren"
    (d / "jumps").mkdir(parents=True)
    (d / "product.yaml").write_text("product: ren\nversion_file: VERSION\n")
    (d / "jumps/1.0.0-2.0.0.yaml").write_text("from: 1.0.0\nto: 2.0.0\n")
    lib = next((SITE / "re2").glob("_re2*.so")).read_bytes()
    record = "".join(f"pkg/module_{i}.py,sha256={_sha(str(i).encode())},{i * 37}\n" for i in range(400))
    data = "".join(f"row {i}\n" for i in range(2000))
    trees = {
        "1.0.0": {"lib/libfoo-1a2b3c4d.so": lib, "lib/pkg-1.0.dist-info/RECORD": record.encode(),
                  "lib/data-1.txt": data.encode()},
        "2.0.0": {"lib/libfoo-5e6f7a8b.so": _rebuilt(lib), "lib/data-1.txt": data.encode(),
                  "lib/pkg-1.1.dist-info/RECORD": record.replace("module_7.", "module_7b.").encode(),
                  "lib/data-2.txt": data.replace("row 9", "row nine").encode()},
    }  # fmt: skip
    for v, files in trees.items():
        root = d / "releases" / v / "root"
        for rel, body in {**files, "VERSION": f"{v}\n".encode()}.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(body)
    return specs


def test_an_added_file_is_patched_against_the_file_its_release_renamed(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """A renamed library and dist-info file travel as patches against the from-version
    files the jump removes (``delta.base``); applied, the tree is exactly 2.0.0's and
    rolls back exactly; a drifted base is exit 4 before anything changes."""
    from tests.helpers import build

    specs = _renaming_product(tmp_path)
    p = build("--specs", specs, "--from", "1.0.0", "--to", "2.0.0", "--key", keys["key"],
              "--out", tmp_path / "dist", "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    bundle = Path(json.loads(p.stdout)["bundle"])
    bases = {str(f["path"]): f["delta"] for f in _patched(bundle)}
    assert bases["lib/libfoo-5e6f7a8b.so"]["base"] == "lib/libfoo-1a2b3c4d.so"  # type: ignore[index]
    assert bases["lib/pkg-1.1.dist-info/RECORD"]["base"] == "lib/pkg-1.0.dist-info/RECORD"  # type: ignore[index]
    assert "lib/data-2.txt" not in bases  # its look-alike is not a file the jump touches
    p = build("inspect", bundle, "--trust", keys["pub"])
    assert "against lib/libfoo-1a2b3c4d.so" in p.stdout, p.stdout

    def fresh(name: str) -> Path:
        root = tmp_path / name
        p = build("sandbox", "--specs", specs, "--version", "1.0.0", "--root", root, "--trust", keys["pub"])
        assert p.returncode == 0, p.stderr
        return root

    new_tree = specs / "ren/releases/2.0.0/root"
    root = fresh("root")
    before = tree_hash(root)
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    for rel in ("lib/libfoo-5e6f7a8b.so", "lib/pkg-1.1.dist-info/RECORD", "lib/data-2.txt"):
        assert (root / rel).read_bytes() == (new_tree / rel).read_bytes(), rel
    assert not (root / "lib/libfoo-1a2b3c4d.so").exists()
    assert install("--root", root, "rollback").returncode == 0
    assert tree_hash(root) == before

    drifted = fresh("drifted")
    (drifted / "lib/libfoo-1a2b3c4d.so").write_bytes(b"\x7fELF a local rebuild")
    before = tree_hash(drifted)
    p = install("--root", drifted, "plan", bundle)
    assert "WOULD FAIL" in p.stdout and "lib/libfoo-1a2b3c4d.so: modified (lib/libfoo-5e6f7a8b.so" in p.stdout
    for argv in (("apply",), ("--accept-drift", "apply"), ("stage",)):
        p = install("--root", drifted, *argv, bundle)
        line = p.stderr.strip().splitlines()[-1]
        assert p.returncode == 4, p.stderr
        assert "lib/libfoo-1a2b3c4d.so: modified" in line and "--delta none" in line, line
        assert tree_hash(drifted) == before


def test_a_base_path_is_checked_like_any_bundle_path(
    sandbox: Callable[..., Sandbox], delta_bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """``delta.base`` is hostile until checked: a validly signed bundle whose patch names
    a base out of the root, through ``..``, or among the installer's own files is exit 3
    with the root unchanged; a base with no sha256, or beside a from_sha256, is refused."""
    from pydantic import ValidationError

    from builder.keys import load_private_key
    from installer.codec import canonical_json
    from installer.errors import UnsafePathError
    from installer.format import Delta, FileEntry
    from installer.signing import sign_manifest

    members = read(delta_bundle)
    sb = sandbox()
    before = tree_hash(sb.root)
    for base in ("/etc/shadow", "../../etc/shadow", "var/lib/jumpkit/demo-manager/journal.jsonl"):
        man = json.loads(members["manifest.json"])
        f = next(x for x in man["files"] if x.get("delta"))
        f["delta"] = {**f["delta"], "base": base, "base_sha256": f["from_sha256"]}
        f["from_sha256"] = None
        data = canonical_json(man)
        sig = sign_manifest(data, load_private_key(keys["key"]))
        bad = write(tmp_path / "bad.zip", {**members, "manifest.json": data, "manifest.sig": sig})
        for argv in (("verify",), ("apply",)):
            p = install("--root", sb.root, *argv, bad)
            assert p.returncode == 3, (base, p.stderr)
        assert tree_hash(sb.root) == before
        count("hostile delta bases refused (exit 3)")
    good = {"method": "bsdiff", "sha256": "a" * 64, "size": 1, "from_size": 1}
    with pytest.raises((ValidationError, UnsafePathError)):
        Delta(**good, base="a/../../x", base_sha256="b" * 64)
    with pytest.raises(ValidationError, match="come together"):
        Delta(**good, base="lib/x")
    d = Delta(**good, base="lib/old", base_sha256="b" * 64)
    with pytest.raises(ValidationError, match="not both"):
        FileEntry(path="lib/new", sha256="c" * 64, size=1, from_sha256="d" * 64, delta=d)
    with pytest.raises(ValidationError, match="another path"):
        FileEntry(path="lib/old", sha256="c" * 64, size=1, delta=d)
    assert FileEntry(path="lib/new", sha256="c" * 64, size=1, delta=d).old_file == ("lib/old", "b" * 64)
