"""The rollout's Ansible module (templates/ansible/library/jumpkit.py) on its own: run as
Ansible runs it (arguments in a JSON file), against a stand-in installer (a shell script
that logs its calls). The fleet tests (test_rollout.py) run it over SSH with the real one."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from builder.resources import templates

if os.environ.get("CI"):  # the test command installs ansible: its absence is a failure there
    import ansible.module_utils.basic  # noqa: F401
else:
    pytest.importorskip("ansible.module_utils.basic")

MODULE = templates() / "ansible/library/jumpkit.py"

# logs each call; fails the actions named in $FAIL (comma-separated) with a JSON error
FAKE = """#!/bin/sh
case "$4" in cluster) act=$5 ;; *) act=$4 ;; esac
echo "$act" >> "$(dirname "$0")/calls.log"
for a in $(echo "$act" | tr , ' '); do
  case ",$FAIL," in *",$a,"*) echo "{\\"ok\\": false, \\"error\\": \\"$a: it broke\\"}"; exit 5 ;; esac
done
case "$act" in
  *,*) printf '{"ok": true, "actions": [%s]}\\n' "$(echo "$act" | tr , '\\n' \
        | sed 's/.*/{"action": "&", "took": 0.01}/' | paste -sd, -)" ;;
  *) echo "{\\"ok\\": true, \\"action\\": \\"$act\\", \\"installed\\": \\"4.0.1\\"}" ;;
esac
"""


def module(tmp: Path, fail: str = "", **args: Any) -> tuple[int, dict[str, Any]]:
    f = tmp / "args.json"
    f.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"root": str(tmp), "dir": str(tmp), **args}}))
    p = subprocess.run(
        [sys.executable, MODULE, f],
        capture_output=True,
        text=True,
        env={"FAIL": fail, "PATH": "/usr/bin:/bin"},
    )
    return p.returncode, json.loads(p.stdout)


def calls(tmp: Path) -> list[str]:
    log = tmp / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def host(tmp_path: Path) -> Path:
    fake = tmp_path / "bundle-install"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    return tmp_path


def test_joined_actions_run_in_one_start_and_always_steps_run_after_a_failure(host: Path) -> None:
    rc, out = module(host, steps=["pin-leader+cluster-pre"], bundle="b.zip", host="m1")
    assert rc == 0 and [s["step"] for s in out["steps"]] == ["pin-leader", "cluster-pre"], out
    assert calls(host) == ["pin-leader,cluster-pre"]

    (host / "calls.log").unlink()
    # cluster-post fails: unpin-leader has not run in the joined start, so it runs alone
    rc, out = module(
        host, fail="cluster-post", steps=["cluster-post+unpin-leader"], always=["unpin-leader"], bundle="b"
    )
    assert out["failed"] and out["failed_steps"] == ["cluster-post"] and out["msg"] == "it broke", out
    assert calls(host) == ["cluster-post,unpin-leader", "unpin-leader"]

    (host / "calls.log").unlink()
    # unpin-leader itself fails inside the joined start: it is not run a second time
    rc, out = module(
        host, fail="unpin-leader", steps=["cluster-post+unpin-leader"], always=["unpin-leader"], bundle="b"
    )
    assert out["failed_steps"] == ["unpin-leader"] and calls(host) == ["cluster-post,unpin-leader"], out

    (host / "calls.log").unlink()
    # the first failure ends the steps: no node hook after a failed apply
    rc, out = module(host, fail="apply", steps=["apply", "node+member-health"], bundle="b")
    assert rc != 0 and out["failed_step"] == "apply" and calls(host) == ["apply"], out


def test_stage_is_skipped_on_a_host_already_there_and_plan_replaces_it_in_a_dry_run(host: Path) -> None:
    rc, out = module(host, steps=["role", "stage"], bundle="b", to_version="4.0.1")
    assert rc == 0 and [s["step"] for s in out["steps"]] == ["role"], out
    rc, out = module(host, steps=["role", "stage"], bundle="b", to_version="4.1.1", check=True)
    assert [s["step"] for s in out["steps"]] == ["role", "plan"], out


def test_the_installer_comes_out_of_the_bundle_only_with_the_signed_sha256(tmp_path: Path) -> None:
    payload = b"\x7fELF" + b"x" * 100_000
    bundle = tmp_path / "b.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bin/bundle-install", payload)
    sha = hashlib.sha256(payload).hexdigest()
    args = {"steps": ["extract"], "bundle": str(bundle), "installer_size": len(payload)}
    rc, out = module(tmp_path, installer_sha256="0" * 64, **args)
    assert rc != 0 and "does not match its signed manifest" in out["msg"], out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["args.json", "b.zip"]  # nothing left
    rc, out = module(tmp_path, installer_sha256=sha, **{**args, "installer_size": len(payload) - 1})
    assert rc != 0 and not (tmp_path / "bundle-install").exists(), out
    rc, out = module(tmp_path, installer_sha256=sha, **args)
    assert rc == 0 and out["steps"][0]["out"] == {"installer": "extracted"}, out
    assert (tmp_path / "bundle-install").read_bytes() == payload
    assert (tmp_path / "bundle-install").stat().st_mode & 0o777 == 0o755
    rc, out = module(tmp_path, installer_sha256=sha, **args)
    assert out["steps"][0]["out"] == {"installer": "cached"}, out


def test_its_documentation_names_every_argument() -> None:
    """ansible-doc reads the module's DOCUMENTATION; it must list what main() accepts."""
    import re

    doc = subprocess.run(
        [
            Path(sys.executable).parent / "ansible-doc",
            "-M",
            MODULE.parent,
            "-t",
            "module",
            "jumpkit",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    documented = set(json.loads(doc.stdout)["jumpkit"]["doc"]["options"])
    accepted = set(re.findall(r"^ {12}(\w+)=dict\(", MODULE.read_text(), re.M))
    assert documented == accepted and "installer_sha256" in accepted, (documented, accepted)
