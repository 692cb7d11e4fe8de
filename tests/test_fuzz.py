"""Property tests: for any input, the manifest parser, the version parser and the archive
reader raise nothing but JumpkitError subclasses, and reading a bundle writes nothing
outside the state dir."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from installer.archive import iter_verified, open_bundle, verify_bundle
from installer.codec import canonical_json, parse_manifest
from installer.engine import Engine, Options
from installer.errors import BundleRejectedError, JumpkitError
from installer.signing import load_trusted_keys
from installer.version import Version
from tests.counts import count

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def good_manifest(bundle: Path) -> dict[str, Any]:
    import zipfile

    with zipfile.ZipFile(bundle) as z:
        return dict(json.loads(z.read("manifest.json")))


@FUZZ
@given(data=st.binary(max_size=2048))
def test_manifest_parser_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(JumpkitError):
        parse_manifest(data)
    count("fuzz: manifest parser inputs")


@FUZZ
@given(st.data())
def test_manifest_parser_mutated_fields(bundle: Path, data: st.DataObject) -> None:
    """A real manifest with one to three fields replaced by arbitrary JSON values, at the
    top level or inside a file entry."""
    man = good_manifest(bundle)
    entries = list(man["files"])
    for _ in range(data.draw(st.integers(1, 3))):
        target = man if data.draw(st.booleans()) else data.draw(st.sampled_from(entries))
        key = data.draw(st.sampled_from(sorted(target)) | st.text(max_size=8))
        target[key] = data.draw(json_values)
    with contextlib.suppress(JumpkitError):
        parse_manifest(canonical_json(man))
    count("fuzz: manifest parser inputs")


@FUZZ
@given(text=st.text(max_size=40) | st.from_regex(r"\A\d{1,12}\.\d{1,3}\.\d{1,3}(-[ -~]{0,70})?\Z"))
def test_version_parser(text: str) -> None:
    count("fuzz: version parser inputs")
    try:
        v = Version.parse(text)
    except JumpkitError:
        return
    assert Version.parse(str(v)) == v


@FUZZ
@given(a=st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)),
       b=st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)))  # fmt: skip
def test_version_order_is_numeric(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    va, vb = Version.parse(".".join(map(str, a))), Version.parse(".".join(map(str, b)))
    assert (va < vb) == (a < b) and (va == vb) == (a == b)


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if skip not in p.parents:
                st_ = p.lstat()
                out[str(p)] = (st_.st_size, st_.st_mtime_ns)
    return out


def read_everything(path: Path, trust: Path) -> None:
    b = open_bundle(path)
    try:
        manifest, _, _ = verify_bundle(b, load_trusted_keys([trust]))
        for name, (sha, size) in manifest.members().items():
            for _ in iter_verified(b, name, sha, size):
                pass
    finally:
        b.close()


@pytest.fixture(scope="module")
def good_bytes(bundle: Path) -> bytes:
    return bundle.read_bytes()


@FUZZ
@given(data=st.binary(max_size=4096))
def test_archive_reader_arbitrary_bytes(data: bytes, keys: dict[str, Path]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "b.zip"
        p.write_bytes(b"PK" + data if data[:1] != b"\xed" else data)
        with contextlib.suppress(JumpkitError):
            read_everything(p, keys["pub"])
    count("fuzz: archive reader inputs")


@FUZZ
@given(seed=st.integers(0, 2**32), flips=st.integers(1, 8), cut=st.booleans())
def test_stage_of_a_mutated_bundle(
    seed: int, flips: int, cut: bool, good_bytes: bytes, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Random byte flips (and a random truncation) of a good bundle, staged through the
    engine on a fresh root: a JumpkitError or nothing at all escapes, and no file outside
    the state dir appears or changes."""
    rng = random.Random(seed)
    data = bytearray(good_bytes)
    for _ in range(flips):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    if cut:
        del data[rng.randrange(len(data)) :]
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    root = work / "root"
    (root / "opt").mkdir(parents=True)
    (root / "opt/keep").write_text("x")
    bundle = work / "b.zip"
    bundle.write_bytes(bytes(data))
    before = snapshot(work, root / "var/lib/jumpkit")
    with contextlib.suppress(JumpkitError):
        Engine(Options(root=root, trust=[keys["pub"]])).stage(bundle)
    assert snapshot(work, root / "var/lib/jumpkit") == before
    shutil.rmtree(work)
    count("fuzz: mutated bundles staged")


def test_unknown_zip_version_is_a_rejection(good_bytes: bytes, tmp_path: Path) -> None:
    """Found by the fuzzer above (one flipped bit): a central directory record whose
    "version needed to extract" zipfile does not know made zipfile raise
    NotImplementedError, which escaped as a traceback instead of exit 3."""
    data = bytearray(good_bytes)
    cd = data.index(b"PK\x01\x02")  # first central directory record
    data[cd + 6] = 84  # version needed to extract: 8.4
    data[cd + 7] = 0
    bad = tmp_path / "b.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleRejectedError, match="not a readable ZIP bundle"):
        open_bundle(bad)
