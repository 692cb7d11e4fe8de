#!/usr/bin/python
# jumpkit's rollout module: one task runs one phase's installer calls on a host.
#
# Why a module: every Ansible task costs a module start over SSH (measured 0.5-0.9 s a
# task with three hosts on two cores, even for a stat); a phase of the rollout used to be
# three to four tasks per host. Here a phase is one task: the steps run in order on the
# host and stop at the first failure; the result carries each step's JSON and seconds, so
# the controller's report is the same as with a task per step.
#
# The installer is not copied: it is taken out of the bundle already on the host, and must
# have the sha256 and size the controller read from the bundle's verified manifest. After
# an apply has made it the manager's own (var/lib/jumpkit/bin/bundle-install, kept
# unpacked), the steps run that copy, which starts without unpacking.
#
# Runs under the host's Python (3.6 or newer): no annotations, no walrus.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: jumpkit
short_description: run one phase of a jumpkit rollout on a manager host
description:
  - Runs C(bundle-install) steps in order and stops at the first failure.
options:
  always:
    description: steps run after those of I(steps) even when one of them failed, unless
      they ran already (as part of a joined step).
    type: list
    elements: str
    default: []
  steps:
    description: extract, role, stage, pin-leader, cluster-pre, apply, node, member-health,
      cluster-post, unpin-leader, status; cluster actions joined by + run in one installer
      start (node+member-health).
    type: list
    elements: str
    required: true
  root: {description: the manager root, type: str, default: /}
  dir: {description: where the rollout keeps the bundle and installer, type: str, required: true}
  bundle: {description: the bundle's path on the host, type: str, default: ""}
  installer_sha256: {description: sha256 of the bundle's bin/bundle-install, type: str, default: ""}
  installer_size: {description: its size in bytes, type: int, default: 0}
  to_version: {description: the bundle's to-version (stage and plan skip a host on it), type: str, default: ""}
  check: {description: plan instead of stage, type: bool, default: false}
  host: {description: "this host's inventory name (JUMPKIT_HOST of cluster hooks)", type: str, default: ""}
  version_file: {description: the product's version file under root, type: str, default: ""}
"""

import hashlib
import json
import os
import subprocess
import time
import zipfile

from ansible.module_utils.basic import AnsibleModule

INSTALLER_MEMBER = "bin/bundle-install"
MANAGED = "var/lib/jumpkit/bin/bundle-install"
CHUNK = 1 << 20
CLUSTER = ("role", "pin-leader", "cluster-pre", "node", "member-health", "cluster-post", "unpin-leader")


class StepFailed(Exception):
    def __init__(self, msg, out=None, stderr=""):
        Exception.__init__(self, msg)
        self.out = out or {}
        self.stderr = stderr


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def extract(bundle, dest, sha, size):
    """The bundle's installer at dest, checked against the signed manifest's sha256."""
    if not sha or size <= 0:
        raise StepFailed("no installer sha256 given: run by bundle-build rollout only")
    if os.path.isfile(dest) and os.path.getsize(dest) == size and sha256_of(dest) == sha:
        return "cached"
    tmp = dest + ".tmp"
    h = hashlib.sha256()
    seen = 0
    try:
        with zipfile.ZipFile(bundle) as z, z.open(INSTALLER_MEMBER) as src, open(tmp, "wb") as out:
            while True:
                chunk = src.read(min(CHUNK, size + 1 - seen))
                if not chunk:
                    break
                seen += len(chunk)
                if seen > size:
                    break
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if seen != size or h.hexdigest() != sha:
            raise StepFailed("the bundle's %s does not match its signed manifest" % INSTALLER_MEMBER)
    except (OSError, KeyError, zipfile.BadZipfile) as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise StepFailed("cannot take the installer out of %s: %s" % (bundle, e))
    except StepFailed:
        os.unlink(tmp)
        raise
    os.chmod(tmp, 0o755)
    os.rename(tmp, dest)
    return "extracted"


def installer_for(p, any_managed=False):
    """The manager's own installer when it is this bundle's (kept unpacked) or, with
    ``any_managed``, whichever it is; else the rollout's copy; None when there is neither."""
    managed = os.path.join(p["root"], MANAGED)
    try:
        with open(managed + ".json") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = {}
    if os.path.isfile(managed) and (any_managed or meta.get("sha256") == p["installer_sha256"]):
        return managed
    own = os.path.join(p["dir"], "bundle-install")
    return own if os.path.isfile(own) else None


def run(p, args, any_managed=False):
    binary = installer_for(p, any_managed)
    if binary is None:
        raise StepFailed("no bundle-install on the host")
    proc = subprocess.Popen(
        [binary, "--root", p["root"], "--json"] + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    stdout, stderr = proc.communicate()
    try:
        out = json.loads(stdout or "{}")
    except ValueError:
        out = {}
    if not isinstance(out, dict):
        out = {}
    if proc.returncode != 0:
        text = (stderr or "").strip()
        msg = out.get("error") or (text.splitlines()[-1][:300] if text else "exit %d" % proc.returncode)
        raise StepFailed(str(msg), out, stderr[-4000:])
    return out


def status(p):
    out = {"version": None}
    if p["version_file"]:
        try:
            with open(os.path.join(p["root"], p["version_file"].lstrip("/"))) as f:
                out["version"] = f.read().strip()
        except (OSError, UnicodeDecodeError):
            pass
    try:
        out["status"] = run(p, ["status"], any_managed=True).get("status")
    except StepFailed as e:
        out["status"] = "unknown: " + str(e)
    return out


def step(p, name, role):
    if name == "extract":
        dest = os.path.join(p["dir"], "bundle-install")
        return {"installer": extract(p["bundle"], dest, p["installer_sha256"], p["installer_size"])}
    if name == "status":
        return status(p)
    if name in ("stage", "plan") and role is not None and role.get("installed") == p["to_version"]:
        return None  # already on the to-version: nothing to stage
    actions = name.split("+")
    if all(a in CLUSTER for a in actions):  # several in one installer start: node+member-health
        return run(p, ["cluster", ",".join(actions), p["bundle"], "--host", p["host"]])
    if name in ("stage", "plan", "apply"):
        return run(p, [name, p["bundle"]])
    raise StepFailed("unknown step %r" % name)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            steps=dict(type="list", elements="str", required=True),
            always=dict(type="list", elements="str", default=[]),
            root=dict(type="str", default="/"),
            dir=dict(type="str", required=True),
            bundle=dict(type="str", default=""),
            installer_sha256=dict(type="str", default=""),
            installer_size=dict(type="int", default=0),
            to_version=dict(type="str", default=""),
            check=dict(type="bool", default=False),
            host=dict(type="str", default=""),
            version_file=dict(type="str", default=""),
        ),
        supports_check_mode=False,
    )
    p = module.params
    done = []
    failed = []  # (step, message, stderr): the first ends the steps, not the ``always`` ones
    role = None
    changed = False
    ran = set()  # actions that ran, ok or not: an ``always`` step runs only if its did not
    for i, name in enumerate(p["steps"] + p["always"]):
        is_always = i >= len(p["steps"])
        if (failed and not is_always) or (is_always and set(name.split("+")) <= ran):
            continue
        if name == "stage" and p["check"]:
            name = "plan"  # a dry run: what would happen, nothing staged
        parts = name.split("+")
        t0 = time.monotonic()
        try:
            out = step(p, name, role)
        except StepFailed as e:
            # a joined step's installer names the action that failed: "member-health: ..."
            head = str(e).split(":", 1)[0]
            where = head if len(parts) > 1 and head in parts else parts[0]
            msg = str(e)[len(head) + 1 :].strip() if where == head else str(e)
            ran.update(parts[: parts.index(where) + 1])
            done.append({"step": where, "seconds": round(time.monotonic() - t0, 3), "out": e.out})
            failed.append((where, msg, e.stderr))
            continue
        ran.update(parts)
        if out is None:
            continue
        if name == "role":
            role = out
        changed = changed or name not in ("role", "status", "member-health", "plan")
        if len(parts) > 1:
            for each in out.get("actions", []):
                done.append({"step": each.get("action"), "seconds": each.get("took", 0), "out": each})
        else:
            done.append({"step": name, "seconds": round(time.monotonic() - t0, 3), "out": out})
    if failed:
        module.fail_json(
            msg=failed[0][1],
            steps=done,
            failed_step=failed[0][0],
            failed_steps=[f[0] for f in failed],
            errors=[f[1] for f in failed],
            stderr=failed[0][2],
            changed=changed,
        )
    module.exit_json(changed=changed, steps=done)


if __name__ == "__main__":
    main()
