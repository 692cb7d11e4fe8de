"""Solid members (bundle format 4): small members travel end to end in zstd frames
(``builder/solid.py`` writes them, ``installer/solid.py`` reads them). A validly signed
bundle whose solid member lies about what it carries is refused with exit 3 by verify,
stage and apply, naming the file, with the manager untouched."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from builder.keys import load_private_key
from tests.counts import count
from tests.helpers import Sandbox, build, build_demo, install, tree_hash
from tests.hostile.corpus import read, resign, write

Edit = Callable[[bytes, dict[str, Any]], bytes]
"""Given a solid member's decompressed stream and its manifest entry (edited in place),
the stream to compress in its place."""


def _solid_bundle(bundle: Path, key: Path, out: Path, *, stream: Edit | None = None,
                  frame: Callable[[bytes], bytes] | None = None) -> Path:  # fmt: skip
    """``bundle`` with its first solid member rewritten, the manifest signed again (the
    solid's own size and sha256 made to match: only what it carries lies)."""
    m = read(bundle)
    man = json.loads(m["manifest.json"])
    entry = man["solids"][0]
    raw = zstandard.ZstdDecompressor().decompress(m[entry["name"]])
    data = m[entry["name"]]
    if stream is not None:
        data = zstandard.ZstdCompressor(level=3).compress(stream(raw, entry))
    if frame is not None:
        data = frame(data)
    entry["sha256"], entry["size"] = hashlib.sha256(data).hexdigest(), len(data)
    return write(out, resign({**m, entry["name"]: data}, man, load_private_key(key)))


def _refused(sb: Sandbox, bad: Path, phrase: str) -> None:
    before = tree_hash(sb.root)
    for command in ("verify", "stage", "apply"):
        p = install("--root", sb.root, command, bad)
        assert p.returncode == 3, f"{command}: rc={p.returncode} {p.stderr}"
        lines = [x for x in p.stderr.splitlines() if x.startswith("bundle-install:")]
        assert len(lines) == 1 and phrase in lines[0], (command, p.stderr)
        assert tree_hash(sb.root) == before, command
    assert not (sb.root / "var/lib/jumpkit/demo-manager/staging").exists() or not any(
        (sb.root / "var/lib/jumpkit/demo-manager/staging").iterdir()
    )


def test_small_members_travel_in_a_solid_member_and_apply_exactly(
    bundle: Path, sandbox: Callable[..., Sandbox], keys: dict[str, Path]
) -> None:
    """--solid on: no payload member of its own for a small file (format 4; the fixture
    ships the SBOM too, which makes it 5), and the jump applies and rolls back as ever."""
    with zipfile.ZipFile(bundle) as z:
        names = z.namelist()
        man = json.loads(z.read("manifest.json"))
    assert man["format"] == 5 and [s["name"] for s in man["solids"]] == ["solid/000"]
    carried = {p["name"] for p in man["solids"][0]["members"]}
    assert not [n for n in names if n.startswith(("payload/", "delta/", "base/"))]
    assert "payload/opt/demo-manager/VERSION" in carried and any(n.startswith("delta/") for n in carried)
    p = install("--root", "/", "--trust", keys["pub"], "verify", bundle)
    assert p.returncode == 0 and "members verified" in p.stdout, p.stderr
    sb = sandbox()
    before = tree_hash(sb.root)
    assert install("--root", sb.root, "apply", bundle).returncode == 0
    assert sb.version() == "4.1.1"
    assert install("--root", sb.root, "rollback").returncode == 0
    assert tree_hash(sb.root) == before


def test_a_changed_byte_in_the_stream_names_the_file_it_falls_in(
    bundle: Path, sandbox: Callable[..., Sandbox], keys: dict[str, Path], tmp_path: Path
) -> None:
    def flip(raw: bytes, entry: dict[str, Any]) -> bytes:
        p = next(x for x in entry["members"] if x["name"] == "payload/opt/demo-manager/VERSION")
        b = bytearray(raw)
        b[p["offset"]] ^= 0x01
        return bytes(b)

    bad = _solid_bundle(bundle, keys["key"], tmp_path / "flip.zip", stream=flip)
    _refused(sandbox(), bad, "payload/opt/demo-manager/VERSION: sha256 does not match the manifest")
    count("solid members: a signed lie refused, naming the file")


def test_a_flipped_byte_of_the_frame_is_refused(
    bundle: Path, sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """Unsigned damage (a disk, a download): the solid member's own sha256 or a carried
    file's catches it, whichever comes first."""
    m = read(bundle)
    data = bytearray(m["solid/000"])
    data[len(data) // 2] ^= 0x40
    bad = write(tmp_path / "damaged.zip", {**m, "solid/000": bytes(data)})
    _refused(sandbox(), bad, "does not")


def test_a_truncated_stream(
    bundle: Path, sandbox: Callable[..., Sandbox], keys: dict[str, Path], tmp_path: Path
) -> None:
    sb = sandbox()
    cut = _solid_bundle(bundle, keys["key"], tmp_path / "cut.zip", frame=lambda d: d[: len(d) - 12])
    _refused(sb, cut, "truncated")
    short = _solid_bundle(bundle, keys["key"], tmp_path / "short.zip", stream=lambda raw, _: raw[:-5])
    _refused(sb, short, "its frame declares")


def test_a_frame_that_does_not_declare_the_streams_length(
    bundle: Path, sandbox: Callable[..., Sandbox], keys: dict[str, Path], tmp_path: Path
) -> None:
    """The declared length bounds what a frame decompresses to (a bomb of a few KB that
    would write GBs is refused by libzstd past it): a frame that declares none, or
    another, is refused before a byte is written."""
    sb = sandbox()

    def undeclared(d: bytes) -> bytes:
        raw = zstandard.ZstdDecompressor().decompress(d)
        return zstandard.ZstdCompressor(write_content_size=False).compress(raw)

    _refused(
        sb,
        _solid_bundle(bundle, keys["key"], tmp_path / "u.zip", frame=undeclared),
        "its frame declares -1 bytes",
    )
    bomb = zstandard.ZstdCompressor(level=1).compress(b"\0" * (64 << 20))
    _refused(
        sb,
        _solid_bundle(bundle, keys["key"], tmp_path / "b.zip", frame=lambda _: bomb),
        "its frame declares 67108864",
    )


def test_bytes_after_the_frame(
    bundle: Path, sandbox: Callable[..., Sandbox], keys: dict[str, Path], tmp_path: Path
) -> None:
    sb = sandbox()
    junk = _solid_bundle(bundle, keys["key"], tmp_path / "junk.zip", frame=lambda d: d + b"\x00junk")
    _refused(sb, junk, "bytes after the solid member's frame")
    longer = _solid_bundle(bundle, keys["key"], tmp_path / "longer.zip", stream=lambda raw, _: raw + b"more")
    _refused(sb, longer, "its frame declares")


@pytest.mark.parametrize(
    ("case", "phrase"),
    [
        ("overlap", "overlaps the one before"),
        ("gap", "leaves a gap before it"),
        ("raw-size", "its members end at"),
        ("not-listed", "is no payload, patch or base the manifest lists so"),
        ("carried-twice", "is carried twice"),
        ("hook-carried", "is no payload, patch or base"),
        ("format-3", "solid members need bundle format 4"),
        ("bad-name", "a solid member is named solid/<name>"),
        ("empty", "carries nothing"),
    ],
)
def test_a_table_that_does_not_tile_the_stream_is_exit_3(
    case: str,
    phrase: str,
    bundle: Path,
    sandbox: Callable[..., Sandbox],
    keys: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Offsets that overlap (one range standing for two files) or leave gaps (bytes no
    sha256 covers), and carried names the manifest does not list so: refused before any
    byte is read."""
    m = read(bundle)
    man = json.loads(m["manifest.json"])
    solid = man["solids"][0]
    members = solid["members"]
    if case == "overlap":
        members[1]["offset"] -= 1
    elif case == "gap":
        members[1]["offset"] += 1
    elif case == "raw-size":
        solid["raw_size"] += 1
    elif case == "not-listed":
        members[0]["name"] = "payload/opt/demo-manager/planted.py"
    elif case == "carried-twice":
        man["solids"].append({**solid, "name": "solid/001"})
    elif case == "hook-carried":
        hook = next(x for x in man["extras"] if x["name"].startswith("hooks/"))
        members.append({"name": hook["name"], "offset": solid["raw_size"], "size": hook["size"],
                        "sha256": hook["sha256"]})  # fmt: skip
        solid["raw_size"] += hook["size"]
    elif case == "format-3":
        man["format"] = 3
    elif case == "empty":
        m["solid/001"] = b""
        man["solids"].append({"name": "solid/001", "sha256": hashlib.sha256(b"").hexdigest(), "size": 0,
                              "raw_size": 0, "members": []})  # fmt: skip
    elif case == "bad-name":
        m["solid/a/b"] = m.pop("solid/000")
        solid["name"] = "solid/a/b"
    bad = write(tmp_path / f"{case}.zip", resign(m, man, load_private_key(keys["key"])))
    _refused(sandbox(), bad, phrase)


def test_solid_bundles_are_reproducible(keys: dict[str, Path], tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for out in (one, two):
        p = build_demo(out, keys["key"], "--no-installer", "--solid", "on")
        assert p.returncode == 0, p.stderr
    name = "demo-manager-4.0.1-to-4.1.1.zip"
    assert (one / name).read_bytes() == (two / name).read_bytes()


def test_solid_auto_follows_the_installer_and_none_keeps_one_member_each(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    """auto: a development bundle (its reader unknown) stays one member per file; none
    forces that; on with an installer that reads no format 4 is a one-line build error."""
    p = build_demo(tmp_path / "dev", keys["key"], "--no-installer")
    assert p.returncode == 0, p.stderr
    with zipfile.ZipFile(tmp_path / "dev/demo-manager-4.0.1-to-4.1.1.zip") as z:
        man = json.loads(z.read("manifest.json"))
        assert man["format"] == 2 and not man.get("solids")
        assert any(n.startswith("payload/") for n in z.namelist())
    p = build_demo(tmp_path / "bad", keys["key"], "--no-installer", "--solid", "sometimes")
    assert p.returncode == 2 and "--solid 'sometimes': one of auto, on, none" in p.stderr


def test_a_carried_patch_against_a_drifted_file_is_refused_before_anything_stops(
    bundle: Path, sandbox: Callable[..., Sandbox]
) -> None:
    """The patch travels in the solid member and builds its file in the solid's job: the
    manager's old file, changed by hand, refuses it as a whole patch member would (exit 4)."""
    man = json.loads(read(bundle)["manifest.json"])
    carried = {p["name"] for s in man["solids"] for p in s["members"]}
    (patched,) = [f["path"] for f in man["files"] if f.get("delta") and "delta/" + f["path"] in carried]
    sb = sandbox()
    (sb.root / patched).write_text((sb.root / patched).read_text() + "# a hotfix\n")
    before = tree_hash(sb.root)
    for command in ("stage", "apply"):
        p = install("--root", sb.root, command, bundle)
        assert p.returncode == 4 and patched in p.stderr, (command, p.stderr)
        assert tree_hash(sb.root) == before and sb.version() == "4.0.1"


def test_solid_members_shrink_a_release_of_many_small_files(keys: dict[str, Path], tmp_path: Path) -> None:
    """The container cost a ZIP entry per file carries (headers, twice the path, each file
    compressed alone) is what solid members remove: 400 small modules added by a release,
    as a vendored library does, weigh well under 0.8x with them."""
    import random

    specs = tmp_path / "specs/app"
    (specs / "jumps").mkdir(parents=True)
    (specs / "product.yaml").write_text("product: app\nversion_file: VERSION\n")
    (specs / "jumps/1.0.0-2.0.0.yaml").write_text("from: 1.0.0\nto: 2.0.0\n")
    rng = random.Random(7)
    words = ["def", "return", "self", "import", "value", "config", "request", "handler", "module", "plugin"]
    for v in ("1.0.0", "2.0.0"):
        root = specs / "releases" / v / "root"
        root.mkdir(parents=True)
        (root / "VERSION").write_text(f"{v}\n")
    lib = specs / "releases/2.0.0/root/opt/app/lib/vendored/collections/community/general/plugins/modules"
    lib.mkdir(parents=True)
    for i in range(400):
        body = "\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(30))
        (lib / f"module_{i:03d}.py").write_text(f'"""Module {i}."""\n{body}\n')
    sizes = {}
    for solid in ("on", "none"):
        out = tmp_path / solid
        p = build("--specs", tmp_path / "specs", "--from", "1.0.0", "--to", "2.0.0", "--key", keys["key"],
                  "--out", out, "--no-installer", "--solid", solid)  # fmt: skip
        assert p.returncode == 0, p.stderr
        sizes[solid] = (out / "app-1.0.0-to-2.0.0.zip").stat().st_size
    assert sizes["on"] <= 0.8 * sizes["none"], sizes
