"""SBOMs (issue 39): each release's components as CycloneDX, a jump's component diff in
the signed manifest, the installed release's SBOM kept for ``report``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from builder import sbom
from builder.keys import load_private_key
from builder.spec import load_product
from builder.trees import walk_tree
from installer.sbom import ComponentChange
from tests.helpers import SPECS, Sandbox, build, build_demo, install
from tests.hostile import corpus

AGENT_SPEC = """Name: demo-agent
Version: 2.1.0
Release: 3
Summary: agent
License: MIT
BuildArch: noarch
%description
Component RPM for jumpkit's tests.
%files
"""


def _tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def _rpm(work: Path) -> Path:
    top = work / "rpmbuild"
    (top / "SPECS").mkdir(parents=True)
    (top / "SPECS/agent.spec").write_text(AGENT_SPEC)
    spec = str(top / "SPECS/agent.spec")
    cmd = ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}", spec]
    subprocess.run(cmd, check=True, capture_output=True)
    return top / "RPMS/noarch/demo-agent-2.1.0-3.noarch.rpm"


def test_every_kind_of_component_is_found_by_what_its_ecosystem_leaves(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root", {
        "opt/app/lib/Django-5.1.3.dist-info/METADATA": "Metadata-Version: 2.1\nName: Django\nVersion: 5.1.3\n"
                                                       "License: BSD-3-Clause\n\nbody\n",
        "opt/app/lib/old_thing.egg-info/PKG-INFO": "Metadata-Version: 1.0\nName: old_thing\nVersion: 0.9\n",
        "opt/app/lib/no_meta-1.2.dist-info/METADATA": "Metadata-Version: 2.1\n",
        "opt/app/lib/libfoo.so.1.2.3": b"\x7fELF",
        "opt/app/numpy.libs/libgfortran-040039e1.so.5.0.0": b"\x7fELF",
        "opt/app/lib/libbar-2.4.so": b"\x7fELF",
        "opt/app/lib/_speedups.cpython-311-x86_64-linux-gnu.so": b"\x7fELF",
        "opt/app/lib/evil-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: evil\nVersion: 1.0\x1b[2J\n",
        "opt/app/ansible_collections/community/general/MANIFEST.json": json.dumps(
            {"collection_info": {"namespace": "community", "name": "general", "version": "10.1.0",
                                 "license": ["GPL-3.0-or-later"]}}),
        "opt/app/ansible_collections/community/general/plugins/x.py": "",
    })  # fmt: skip
    os.symlink("libfoo.so.1.2.3", root / "opt/app/lib/libfoo.so.1")
    shutil.copy(_rpm(tmp_path), root / "opt/app/agent.rpm")
    found = {(c.kind, c.name, c.version): c for c in sbom.scan(walk_tree(root))}
    assert set(found) == {
        ("python", "django", "5.1.3"),
        ("python", "old-thing", "0.9"),
        ("python", "no-meta", "1.2"),  # no Name/Version headers: the directory's name says
        ("library", "libfoo", "1.2.3"),  # counted once: the symlink names the same file
        ("library", "libgfortran", "5.0.0"),  # auditwheel's hash is no part of the name
        ("library", "libbar", "2.4"),
        ("ansible-collection", "community.general", "10.1.0"),
        ("rpm", "demo-agent", "2.1.0-3"),
    }, found
    assert found[("python", "django", "5.1.3")].purl == "pkg:pypi/django@5.1.3"
    assert found[("python", "django", "5.1.3")].license == "BSD-3-Clause"
    assert found[("rpm", "demo-agent", "2.1.0-3")].license == "MIT"
    doc = json.loads(sbom.document("app", "2.0.0", sorted(found.values()), 0))
    purls = {c["purl"] for c in doc["components"]}
    assert (
        "pkg:generic/ansible-collection/community.general@10.1.0" in purls
        and "pkg:rpm/demo-agent@2.1.0-3" in purls
    )


def test_the_diff_names_changed_added_and_removed_components() -> None:
    def c(name: str, version: str, kind: str = "python") -> sbom.Component:
        return sbom.Component(kind, name, version, f"x/{name}")  # type: ignore[arg-type]

    before = [c("django", "5.1.3"), c("six", "1.16.0"), c("libssl", "3.0.1", "library"), c("attrs", "23.1"),
              c("attrs", "24.2")]  # fmt: skip
    after = [c("django", "5.1.4"), c("ansible-collection-x", "1.2.0"), c("libssl", "3.0.1", "library"),
             c("attrs", "24.2"), c("attrs", "25.1"), c("attrs", "25.2")]  # fmt: skip
    lines = [x.line for x in sbom.diff(before, after)]
    assert lines == [
        "+ ansible-collection-x 1.2.0",
        "- attrs 23.1",  # two versions became three: not one change, versions added and removed
        "+ attrs 25.1",
        "+ attrs 25.2",
        "~ django 5.1.3 -> 5.1.4",
        "- six 1.16.0",
    ]


def test_the_demo_releases_sbom_is_valid_cyclonedx_and_reproducible() -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    product = load_product(SPECS, None)
    parts = sbom.release_components(product, "4.1.1")
    one, two = (sbom.document("demo-manager", "4.1.1", parts, 1_750_000_000) for _ in range(2))
    assert one == two
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(one.decode()) is None
    doc = json.loads(one)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"
    assert doc["metadata"]["component"] == {"bom-ref": "demo-manager@4.1.1", "name": "demo-manager",
                                            "type": "application", "version": "4.1.1"}  # fmt: skip
    assert {c["name"]: c["version"] for c in doc["components"]} == {
        "certifi": "2024.8.30", "charset-normalizer": "3.4.0", "idna": "3.10", "requests": "2.32.3",
        "urllib3": "2.2.3"}  # fmt: skip


def test_plan_prints_each_jumps_component_changes() -> None:
    p = build("plan", "--specs", SPECS, "--from", "4.0.1", "--to", "4.1.1")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1:] == [
        "  1. 4.0.1 -> 4.1.1",
        "     components: 3 changed, 1 added, 1 removed",
        "       ~ certifi 2024.2.2 -> 2024.8.30",
        "       + charset-normalizer 3.4.0",
        "       ~ idna 3.7 -> 3.10",
        "       - six 1.16.0",
        "       ~ urllib3 2.2.1 -> 2.2.3",
    ]
    doc = json.loads(build("plan", "--specs", SPECS, "--from", "4.0.1", "--to", "4.1.1", "--json").stdout)
    assert {"kind": "python", "name": "six", "before": "1.16.0", "after": None} in doc["chain"][0]["changes"]


def test_the_bundle_carries_the_sbom_and_its_changes_signed(bundle: Path) -> None:
    members = corpus.read(bundle)
    man = json.loads(members["manifest.json"])
    assert man["format"] == 5 and man["sbom"] == "sbom/demo-manager-4.1.1.cdx.json"
    doc = json.loads(members[man["sbom"]])
    assert doc["metadata"]["component"]["version"] == "4.1.1"
    changes = [ComponentChange.model_validate(c) for c in man["changes"]]
    want = ["~ certifi 2024.2.2 -> 2024.8.30", "+ charset-normalizer 3.4.0", "~ idna 3.7 -> 3.10",
            "- six 1.16.0", "~ urllib3 2.2.1 -> 2.2.3"]  # fmt: skip
    assert [c.line for c in changes] == want
    p = build("inspect", bundle)
    assert (
        "components since 4.0.1: 3 changed, 1 added, 1 removed (SBOM: sbom/demo-manager-4.1.1.cdx.json)"
        in p.stdout
    )
    assert "  - six 1.16.0" in p.stdout


@pytest.mark.parametrize("how", ["tampered", "resigned-with-control-characters", "changes-without-format-5"])
def test_a_tampered_or_hostile_sbom_is_refused(
    bundle: Path, keys: dict[str, Path], tmp_path: Path, how: str
) -> None:
    members = corpus.read(bundle)
    man = json.loads(members["manifest.json"])
    if how == "tampered":  # one byte of the SBOM member: its sha256 no longer matches
        data = bytearray(members[man["sbom"]])
        data[10] ^= 0x01
        bad = corpus.write(tmp_path / "bad.zip", {**members, man["sbom"]: bytes(data)})
    else:  # a validly signed manifest: the signature vouches for the origin, not the content
        if how == "changes-without-format-5":
            man["format"] = 4
        else:
            man["changes"][0]["name"] = "certifi\x1b[2J"
        bad = corpus.write(tmp_path / "bad.zip", corpus.resign(members, man, load_private_key(keys["key"])))
    p = install("verify", bad)
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and "\x1b" not in p.stderr, p.stderr


def test_a_committed_apply_keeps_the_sbom_for_report_and_a_rollback_takes_it_back(
    sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    sb = sandbox()
    state = sb.root / "var/lib/jumpkit/demo-manager"
    p = install("--root", sb.root, "plan", bundle)  # the operator sees the changes before
    assert p.returncode == 0, p.stderr
    assert "components 4.0.1 -> 4.1.1: 3 changed, 1 added, 1 removed" in p.stdout
    assert "    - six 1.16.0" in p.stdout and "    ~ idna 3.7 -> 3.10" in p.stdout
    assert install("--root", sb.root, "apply", bundle).returncode == 0
    kept = json.loads((state / "sbom.cdx.json").read_bytes())
    assert kept["metadata"]["component"]["version"] == "4.1.1"
    out = tmp_path / "report.tar.gz"
    assert install("--root", sb.root, "report", "--out", out).returncode == 0
    with tarfile.open(out) as t:
        name = next(n for n in t.getnames() if n.endswith("/sbom.cdx.json"))
        f = t.extractfile(name)
        assert f is not None and json.loads(f.read())["metadata"]["component"]["version"] == "4.1.1"
    assert install("--root", sb.root, "rollback").returncode == 0
    assert not (state / "sbom.cdx.json").exists()  # 4.0.1 was installed with no SBOM


def test_sbom_none_and_a_reader_without_format_5(keys: dict[str, Path], tmp_path: Path) -> None:
    p = build_demo(tmp_path / "a", keys["key"], "--no-installer", "--sbom", "none")
    assert p.returncode == 0, p.stderr
    man = json.loads(corpus.read(tmp_path / "a/demo-manager-4.0.1-to-4.1.1.zip")["manifest.json"])
    assert "sbom" not in man and "changes" not in man and man["format"] < 5  # older installers read it
    p = build_demo(tmp_path / "b", keys["key"], "--no-installer", "--sbom", "maybe")
    assert p.returncode == 2 and "--sbom 'maybe': one of auto, on, none" in p.stderr


def test_the_kept_sbom_follows_applies_and_rollbacks(tmp_path: Path) -> None:
    """installer.sbom alone: install is idempotent (a resume repeats it), restore undoes
    exactly one install, and a release that came without an SBOM leaves none installed."""
    import hashlib

    from installer import sbom as kept

    def staged(text: str) -> tuple[Path, str]:
        p = tmp_path / f"{text}.json"
        p.write_text(text)
        return p, hashlib.sha256(text.encode()).hexdigest()

    state = tmp_path / "state"
    state.mkdir()
    a, sha_a = staged("a")
    b, sha_b = staged("b")
    assert kept.install(state, a, sha_a) and not kept.install(state, a, sha_a)
    assert kept.install(state, b, sha_b) and (state / kept.INSTALLED).read_text() == "b"
    assert not kept.restore(state, sha_a)  # a is not what is installed: nothing to undo
    assert kept.restore(state, sha_b) and (state / kept.INSTALLED).read_text() == "a"
    assert kept.install(state, None, None) and kept.installed(state) is None  # a jump with none
    assert not kept.install(state, None, None)
    assert kept.restore(state, None) and (state / kept.INSTALLED).read_text() == "a"
    assert kept.restore(state, sha_a) and kept.installed(state) is None  # before a: none
