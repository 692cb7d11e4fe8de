"""``bundle-install report`` (issue 24): one tar.gz for support, from a finished, a
failed-and-rolled-back and an interrupted manager; nothing secret in clear; the manager
unchanged by making it."""

from __future__ import annotations

import gzip
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Sandbox, install, tree_hash

SECRETS = {
    "config": "hunter2-in-config",
    "url": "pg-s3cret-in-url",
    "env": "tok-s3cret-in-env",
}


def _plant(sb: Sandbox) -> None:
    """Secrets where a support report might pick them up: a config, a URL, the environment."""
    ini = sb.root / "etc/demo-manager/manager.ini"
    ini.write_text(
        ini.read_text()
        + f"\n[secrets]\npassword = {SECRETS['config']}\n"
        + f"replica = postgresql://admin:{SECRETS['url']}@db.example:5432/manager\n"
    )


def _report(sb: Sandbox, tmp_path: Path, name: str) -> tuple[Path, dict[str, str]]:
    out = tmp_path / f"{name}.tar.gz"
    env = {"JUMPKIT_API_TOKEN": SECRETS["env"], "JUMPKIT_SITE": "lab-7"}
    before = tree_hash(sb.root)
    p = install("--root", sb.root, "report", "--out", out, "--json", env=env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["ok"] and doc["report"] == str(out)
    assert tree_hash(sb.root) == before, "making a report changed the manager"
    listing = subprocess.run(["tar", "-tzf", str(out)], capture_output=True, text=True, check=True)
    assert sorted(listing.stdout.split()) == sorted(doc["files"])
    raw = gzip.decompress(out.read_bytes())
    for where, secret in SECRETS.items():
        assert secret.encode() not in raw, f"the {where} secret is in the report"
    with tarfile.open(out) as tar:
        files = {
            m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }
    readme = files["README.txt"]
    for name in files:
        top = name.split("/", 1)[0] + ("/" if "/" in name else "")
        assert f"\n{top} " in readme, f"README.txt does not say what {name} is"
    return out, files


def test_report_after_a_finished_apply(sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path) -> None:
    sb = sandbox()
    _plant(sb)
    assert install("--root", sb.root, "apply", bundle).returncode == 0
    _, files = _report(sb, tmp_path, "finished")
    assert json.loads(files["status.json"])["status"] == "finished"
    assert json.loads(files["versions.json"])["installed_version"] == "4.1.1"
    assert files["drift.txt"].startswith("0 of ")
    ini = files["configs/etc/demo-manager/manager.ini"]
    assert "password = ***" in ini and "postgresql://admin:***@db.example" in ini
    assert (
        "JUMPKIT_API_TOKEN=***" in files["environment.txt"]
        and "JUMPKIT_SITE=lab-7" in files["environment.txt"]
    )
    assert "== demo-manager: running" in files["services.txt"]
    assert "kernel: Linux" in files["system.txt"] and "glibc: glibc" in files["system.txt"]
    assert {"journal.jsonl", "history.jsonl", "manifests/demo-manager-4.0.1-to-4.1.1.json"} <= set(files)


def test_report_after_a_failed_and_rolled_back_apply(
    sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    sb = sandbox()
    _plant(sb)
    p = install("--root", sb.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": "run:health=fail"})
    assert p.returncode == 5, p.stderr
    _, files = _report(sb, tmp_path, "rolled-back")
    status = json.loads(files["status.json"])
    assert status["status"] == "rolled-back", status
    assert any("failpoint" in line for line in status["log"])
    versions = json.loads(files["versions.json"])
    assert versions["installed_version"] == "4.0.1"
    # the rollback dropped the staging: nothing is staged, the run's bundle is the last run's
    assert versions["staged"] == [] and versions["last_run_bundles"] == ["demo-manager-4.0.1-to-4.1.1"], (
        versions
    )


def test_report_of_an_interrupted_apply_reads_only(
    sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    sb = sandbox()
    _plant(sb)
    p = install("--root", sb.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": "swap:files"})
    assert p.returncode == -9
    _, files = _report(sb, tmp_path, "interrupted")
    assert json.loads(files["status.json"])["status"] == "working"
    assert '"event":"begin"' in files["journal.jsonl"] and '"commit"' not in files["journal.jsonl"]
    assert install("--root", sb.root, "rollback").returncode == 0


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("password = x1\n", "password = ***\n"),
        ("DB_PASSWORD=x1\n", "DB_PASSWORD=***\n"),
        ("export API_TOKEN='x1'\n", "export API_TOKEN=***\n"),
        ("  client_secret: x1\n", "  client_secret: ***\n"),
        ('{"token": "x1", "name": "n"}', '{"token": "***", "name": "n"}'),
        (
            "url = https://u:x1@h/p and mysql://root:x1@db\n",
            "url = https://u:***@h/p and mysql://root:***@db\n",
        ),
        ("private_key = x1\nkey = x1\nport = 80\n", "private_key = ***\nkey = ***\nport = 80\n"),
        ("monkey = banana\nkeyboard = us\n", "monkey = banana\nkeyboard = us\n"),
    ],
)
def test_mask(text: str, want: str) -> None:
    from installer.report import mask

    assert mask(text) == want


def test_a_refused_run_names_the_report_command_in_json(
    sandbox: Callable[..., Sandbox], bundle: Path
) -> None:
    sb = sandbox()
    server = sb.root / "opt/demo-manager/lib/demo_manager/server.py"
    server.write_text(server.read_text() + "# a local fix\n")  # drift: exit 4
    p = install("--root", sb.root, "--json", "apply", bundle)
    assert p.returncode == 4
    assert json.loads(p.stdout)["hint"] == f"for support: bundle-install --root {sb.root} report"
