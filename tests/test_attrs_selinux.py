"""File metadata of the production world: SELinux labels from the root's own policy, owners
and modes kept, file capabilities carried. The kernel here has no LSM, so labels are plain
``security.selinux`` xattrs (set, read back, kept by a rename), as under ``rpm --root``
onto a chroot; the sandbox root gets a small targeted-style policy and is labelled the way
a RHEL install is (restorecon, through libselinux itself)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from installer.attrs import FileContexts, load_policy
from tests.helpers import Sandbox, build, install, laid_out, tree_diff, tree_listing
from tests.selinux import XATTR, LibSelinux, label, labelled, write_policy


def test_lookups_match_libselinux(tmp_path: Path) -> None:
    """Our matcher (RE2, no native library in the frozen installer) against libselinux's
    selabel_lookup on the same policy: exact paths over regexes, the last match, file
    types, <<none>>, .subs aliases."""
    fc = write_policy(tmp_path)
    ours = load_policy(tmp_path)
    assert isinstance(ours, FileContexts)
    lib = LibSelinux(fc)
    f, d, ln = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK
    lib_dir, py = "/opt/demo-manager/lib", "/opt/demo-manager/lib/demo_manager/server.py"
    cases = [
        ("/", d), ("/opt", d), ("/opt/demo-manager/bin/demo-manager", f), ("/opt/demo-manager/bin", d),
        (py, f), (py, ln), (lib_dir + "/x", d), ("/opt/demo-manager/VERSION", f),
        ("/opt/demo-manager/VERSION", d), ("/opt/demo-manager/share/doc/README.txt", f),
        ("/etc/demo-manager/manager.ini", f), ("/etc/demo-manager/manager.ini.jumpkit-new", f),
        ("/etc/demo-manager", d), ("/etc/systemd/system/demo.service", f),
        ("/var/lib/jumpkit/x/staging/f", f), ("/srv/old/demo-manager/bin/x", f), ("/srv/oldish", f),
        ("/usr/bin/x", 0),
    ]  # fmt: skip
    for path, mode in cases:
        matched, context = ours.lookup(path, mode)
        assert (context if matched else None) == lib.lookup(path, mode), (path, oct(mode))


def test_apply_labels_every_placed_path_and_rollback_restores_them(
    sandbox: Callable[..., Sandbox], bundle: Path
) -> None:
    """After the apply every path the jump placed carries the policy's label for its final
    path (none keeps the staging directory's var_lib_t), the merged config too; after the
    rollback every label, owner and mode is as before."""
    sb, lib = labelled(sandbox)
    before = tree_listing(sb.root)
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    manifest = json.loads(install("--root", sb.root, "status", "--json").stdout)
    assert manifest["status"] == "finished"
    listed = subprocess.run(["unzip", "-p", str(bundle), "manifest.json"], capture_output=True, check=True)
    placed = [f["path"] for f in json.loads(listed.stdout)["files"]]
    assert "etc/demo-manager/manager.ini" in placed
    for rel in placed:
        p_ = sb.root / rel
        want = lib.lookup("/" + rel, os.lstat(p_).st_mode)
        assert label(p_) == want, (rel, label(p_), want)
    for dirpath, dirnames, filenames in os.walk(sb.root):
        for name in dirnames + filenames:
            rel = (Path(dirpath) / name).relative_to(sb.root).as_posix()
            if not rel.startswith(("var/lib", "etc/jumpkit")):
                assert label(Path(dirpath) / name) != "system_u:object_r:var_lib_t:s0", rel
    p = install("--root", sb.root, "rollback")
    assert p.returncode == 0, p.stderr
    after = tree_listing(sb.root)
    assert after == before, tree_diff(before, after)


def test_unreadable_policy_refused_before_anything_changes(
    sandbox: Callable[..., Sandbox], bundle: Path
) -> None:
    sb, _ = labelled(sandbox)
    fc = sb.root / "etc/selinux/targeted/contexts/files/file_contexts"
    fc.unlink()
    fc.mkdir()  # a policy file that cannot be read as one
    before = tree_listing(sb.root)
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 4, p.stderr
    assert "file_contexts" in p.stderr and "--no-selinux" in p.stderr, p.stderr
    assert tree_listing(sb.root) == before
    p = install("--root", sb.root, "--no-selinux", "plan", bundle)
    assert p.returncode == 0 and "--no-selinux: placed files are NOT labelled" in p.stdout, p.stdout


# --- owners and modes ------------------------------------------------------------------


def ls_ln(path: Path) -> str:
    st = os.lstat(path)
    return f"{stat.filemode(st.st_mode)} {st.st_uid} {st.st_gid} {path.name}"


def test_operator_config_keeps_its_owner_and_mode(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    """manager.ini at 0640 root:<the service's group> (it holds a password): the jump
    rewrites it in place (a merge), and it stays 0640 with its group; the rollback too."""
    sb = sandbox()
    ini = sb.root / "etc/demo-manager/manager.ini"
    os.chown(ini, 0, 4242)
    os.chmod(ini, 0o640)
    before = ls_ln(ini)
    assert install("--root", sb.root, "apply", bundle).returncode == 0
    applied = ls_ln(ini)
    assert "tcp://" not in ini.read_text()  # rewritten, as the jump does
    assert install("--root", sb.root, "rollback").returncode == 0
    assert (before, applied, ls_ln(ini)) == (before, before, before), (before, applied, ls_ln(ini))
    print(f"manager.ini: before {before} | after apply {applied} | after rollback {ls_ln(ini)}")


def _attrs_product(tmp: Path, jump_modes: str = "", passwd: bool = True) -> Path:
    specs = tmp / "specs"
    d = specs / "svc"
    (d / "jumps").mkdir(parents=True)
    (d / "product.yaml").write_text("product: svc\nversion_file: opt/svc/VERSION\n")
    for v in ("1.0.0", "1.1.0"):
        r = d / f"releases/{v}"
        (r / "root/opt/svc/bin").mkdir(parents=True)
        (r / "root/opt/svc/VERSION").write_text(v + "\n")
        (r / "root/opt/svc/bin/server").write_text(f"#!/bin/sh\necho {v}\n")
        (r / "root/opt/svc/bin/server").chmod(0o755)
        (r / "config/etc/svc").mkdir(parents=True)
        (r / "config/etc/svc/app.ini.j2").write_text(f"[app]\nversion = {v}\n")
    (d / "releases/1.1.0/root/opt/svc/plugins").mkdir()
    (d / "releases/1.1.0/root/opt/svc/plugins/p.py").write_text("# a plugin\n")
    (d / "jumps/1.0.0-1.1.0.yaml").write_text(
        "from: 1.0.0\nto: 1.1.0\ndate: 2026-12-01\n"
        + (f"files:\n  modes:\n{jump_modes}" if jump_modes else "")
    )
    return specs


def _with_users(root: Path) -> None:
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nsvc:x:990:990::/opt/svc:/sbin/nologin\n")
    (root / "etc/group").write_text("root:x:0:\nsvc:x:990:\n")


def test_replaced_files_never_widen_and_the_spec_sets_owners(tmp_path: Path, keys: dict[str, Path]) -> None:
    """A config the operator narrowed to 0600 and replaced by the jump stays 0600 (plan
    lists it); files get the spec's owner and group, resolved in the manager's etc/passwd;
    a new directory gets the spec's mode and owner; the rollback restores all exactly."""
    modes = (
        "    'opt/svc/bin/*': {owner: svc, group: svc}\n"
        "    'opt/svc/plugins': {mode: '0750', owner: svc, group: svc}\n"
        "    'opt/svc/plugins/*': {group: svc}\n"
    )
    specs = _attrs_product(tmp_path, modes)
    root, bundle = laid_out(specs, "svc", "1.0.0", "1.1.0", tmp_path, keys)
    _with_users(root)
    app = root / "etc/svc/app.ini"
    os.chmod(app, 0o600)
    before = tree_listing(root)
    p = install("--root", root, "plan", bundle)
    assert "etc/svc/app.ini: keeps mode 0600, narrower than the release's 0644" in p.stdout, p.stdout
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert ls_ln(app).startswith("-rw------- 0 0 "), ls_ln(app)
    assert ls_ln(root / "opt/svc/bin/server").startswith("-rwxr-xr-x 990 990 "), ls_ln(
        root / "opt/svc/bin/server"
    )
    assert ls_ln(root / "opt/svc/plugins").startswith("drwxr-x--- 990 990 "), ls_ln(root / "opt/svc/plugins")
    assert ls_ln(root / "opt/svc/plugins/p.py").startswith("-rw-r--r-- 0 990 "), ls_ln(
        root / "opt/svc/plugins/p.py"
    )
    assert install("--root", root, "rollback").returncode == 0
    assert tree_listing(root) == before, tree_diff(before, tree_listing(root))


def test_an_owner_the_manager_lacks_is_refused_before_anything_stops(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    specs = _attrs_product(tmp_path, "    'opt/svc/bin/*': {owner: nosuch, group: svc}\n")
    root, bundle = laid_out(specs, "svc", "1.0.0", "1.1.0", tmp_path, keys)
    _with_users(root)
    before = tree_listing(root)
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 4, p.stderr
    assert "owner 'nosuch' does not exist on this manager" in p.stderr, p.stderr
    assert tree_listing(root) == before and not (root / "var/lib/jumpkit/svc/journal.jsonl").exists()


# --- file capabilities -------------------------------------------------------------------


def test_file_capabilities_travel_with_the_file(tmp_path: Path, keys: dict[str, Path]) -> None:
    """1.1.0's server has cap_net_bind_service (setcap on the release tree): refused at
    build unless the product spec allows it for that exact path; then carried in the
    manifest, shown by plan and inspect, set on the placed file, gone after the rollback."""
    specs = _attrs_product(tmp_path)
    server = specs / "svc/releases/1.1.0/root/opt/svc/bin/server"
    subprocess.run(["setcap", "cap_net_bind_service=ep", str(server)], check=True)
    out = tmp_path / "refused"
    p = build("--specs", specs, "--from", "1.0.0", "--to", "1.1.0", "--key", keys["key"], "--out", out)
    assert p.returncode == 2 and "cap_net_bind_service=ep" in p.stderr and "allow_caps" in p.stderr, p.stderr
    jump = specs / "svc/jumps/1.0.0-1.1.0.yaml"
    jump.write_text(jump.read_text() + "files:\n  modes:\n    opt/svc/bin/server: {allow_caps: true}\n")
    root, bundle = laid_out(specs, "svc", "1.0.0", "1.1.0", tmp_path, keys)
    before = tree_listing(root)
    p = install("--root", root, "plan", bundle)
    assert "FILE CAPABILITIES opt/svc/bin/server: cap_net_bind_service=ep" in p.stdout, p.stdout
    p = build("inspect", bundle)
    assert "cap_net_bind_service=ep" in p.stdout, p.stdout
    assert install("--root", root, "apply", bundle).returncode == 0
    got = subprocess.run(["getcap", str(root / "opt/svc/bin/server")], capture_output=True, text=True).stdout
    assert "cap_net_bind_service=ep" in got, got
    assert install("--root", root, "rollback").returncode == 0
    assert tree_listing(root) == before


def test_report_drift_names_files_whose_label_differs_from_the_policy(
    sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    """A file relabelled by hand (chcon) after the apply: the support report's drift.txt
    names it with the label the policy gives it."""
    import tarfile

    sb, _ = labelled(sandbox)
    assert install("--root", sb.root, "apply", bundle).returncode == 0
    os.setxattr(sb.root / "opt/demo-manager/VERSION", XATTR, b"system_u:object_r:tmp_t:s0\0")
    out = tmp_path / "r.tar.gz"
    assert install("--root", sb.root, "report", "--out", out).returncode == 0
    with tarfile.open(out) as t:
        m = next(x for x in t.getmembers() if x.name.endswith("drift.txt"))
        text = t.extractfile(m).read().decode()  # type: ignore[union-attr]
    assert "1 file(s) differ from the policy" in text, text
    assert "opt/demo-manager/VERSION: label system_u:object_r:tmp_t:s0, the policy says " in text, text


def test_the_kept_installer_gets_the_policy_label(
    sandbox: Callable[..., Sandbox], release_bundle: Path
) -> None:
    """The bundle's frozen installer becomes the manager's, written in place under
    var/lib/jumpkit/bin (not renamed from staging): it and its unpacked tree get the label
    the policy gives that path too."""
    sb, lib = labelled(sandbox)
    assert install("--root", sb.root, "apply", release_bundle).returncode == 0
    kept = sb.root / "var/lib/jumpkit/bin"
    files = [*[p for p in kept.rglob("*") if not p.is_symlink()][:50], kept / "bundle-install"]
    for p in files:
        assert label(p) == lib.lookup("/" + p.relative_to(sb.root).as_posix(), os.lstat(p).st_mode), p
