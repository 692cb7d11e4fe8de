"""File metadata of the production world: SELinux labels from the root's own policy, owners
and modes kept, file capabilities carried. The kernel here has no LSM, so labels are plain
``security.selinux`` xattrs (set, read back, kept by a rename), as under ``rpm --root``
onto a chroot; the sandbox root gets a small targeted-style policy and is labelled the way
a RHEL install is (restorecon, through libselinux itself)."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from installer.attrs import FileContexts, load_policy
from tests.counts import count
from tests.crash.test_points import CRASH_POINTS
from tests.helpers import Sandbox, build, db_state, install, laid_out, sqlite_url, tree_diff, tree_listing

FILE_CONTEXTS = r"""
# a targeted-style policy for the demo manager: generic rules first, specific ones later
/.*                                        system_u:object_r:default_t:s0
/opt(/.*)?                                 system_u:object_r:usr_t:s0
/opt/demo-manager/bin(/.*)?                system_u:object_r:bin_t:s0
/opt/demo-manager/lib(/.*)?                system_u:object_r:lib_t:s0
/opt/demo-manager/lib/.*\.py       --      system_u:object_r:demo_exec_t:s0
/opt/demo-manager/share/doc(/.*)?          <<none>>
/opt/demo-manager/VERSION          --      system_u:object_r:demo_version_t:s0
/etc(/.*)?                                 system_u:object_r:etc_t:s0
/etc/demo-manager(/.*)?                    system_u:object_r:demo_conf_t:s0
/etc/demo-manager/manager\.ini     --      system_u:object_r:demo_secret_t:s0
/etc/systemd/system(/.*)?                  system_u:object_r:systemd_unit_file_t:s0
/var/lib(/.*)?                             system_u:object_r:var_lib_t:s0
/var/lib/demo-manager(/.*)?                system_u:object_r:demo_var_t:s0
"""
SUBS = "/srv/old /opt\n"
XATTR = "security.selinux"


def write_policy(root: Path) -> Path:
    (root / "etc/selinux/targeted/contexts/files").mkdir(parents=True, exist_ok=True)
    (root / "etc/selinux/config").write_text("# as RHEL ships it\nSELINUX=enforcing\nSELINUXTYPE=targeted\n")
    fc = root / "etc/selinux/targeted/contexts/files/file_contexts"
    fc.write_text(FILE_CONTEXTS)
    (fc.parent / "file_contexts.subs").write_text(SUBS)
    return fc


class LibSelinux:
    """libselinux's own file-context lookup (selabel_lookup_raw), through ctypes."""

    def __init__(self, file_contexts: Path) -> None:
        name = ctypes.util.find_library("selinux") or "libselinux.so.1"
        self.lib = ctypes.CDLL(name, use_errno=True)
        self.lib.selabel_open.restype = ctypes.c_void_p

        class Opt(ctypes.Structure):
            _fields_ = [("type", ctypes.c_int), ("value", ctypes.c_char_p)]

        opts = (Opt * 1)(Opt(3, str(file_contexts).encode()))  # SELABEL_OPT_PATH
        self.handle = self.lib.selabel_open(0, opts, 1)  # SELABEL_CTX_FILE
        assert self.handle, f"selabel_open failed: errno {ctypes.get_errno()}"

    def lookup(self, path: str, mode: int) -> str | None:
        con = ctypes.c_char_p()
        rc = self.lib.selabel_lookup_raw(ctypes.c_void_p(self.handle), ctypes.byref(con), path.encode(), mode)
        if rc != 0:
            return None
        value = con.value.decode() if con.value else None
        self.lib.freecon(con)
        return None if value == "<<none>>" else value

    def restorecon(self, root: Path) -> None:
        """Label every path under ``root`` as the policy says (as a RHEL install is)."""
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames, ""]:
                p = Path(dirpath) / name if name else Path(dirpath)
                rel = "/" + p.relative_to(root).as_posix() if p != root else "/"
                con = self.lookup(rel.replace("//", "/"), os.lstat(p).st_mode)
                if con is not None:
                    os.setxattr(p, XATTR, con.encode() + b"\0", follow_symlinks=False)


def label(path: Path) -> str | None:
    try:
        return os.getxattr(path, XATTR, follow_symlinks=False).rstrip(b"\0").decode()
    except OSError:
        return None


def labelled(sandbox: Callable[..., Sandbox]) -> tuple[Sandbox, LibSelinux]:
    sb = sandbox()
    lib = LibSelinux(write_policy(sb.root))
    lib.restorecon(sb.root)
    return sb, lib


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


@pytest.fixture(scope="module")
def labelled_expected(keys: dict[str, Path], port: int, bundle: Path) -> dict[str, object]:
    from tests.helpers import make_sandbox

    sb = make_sandbox("4.0.1", keys["pub"], port)
    try:
        LibSelinux(write_policy(sb.root)).restorecon(sb.root)
        old = tree_listing(sb.root), db_state(sqlite_url(sb.root))
        assert install("--root", sb.root, "apply", bundle).returncode == 0
        return {"old": old, "new": (tree_listing(sb.root), db_state(sqlite_url(sb.root)))}
    finally:
        sb.destroy()


@pytest.mark.parametrize("recover", ["resume", "rollback"])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_matrix_on_a_labelled_root(
    point: str,
    recover: str,
    sandbox: Callable[..., Sandbox],
    bundle: Path,
    labelled_expected: dict[str, object],
) -> None:
    """SIGKILL at every failpoint of an apply to a labelled root, then resume or rollback:
    every label (and owner, mode, content) exactly as after a clean apply, or as before."""
    sb, _ = labelled(sandbox)
    p = install("--root", sb.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": point})
    assert p.returncode == -9, p.stderr
    p = install("--root", sb.root, recover)
    if p.returncode != 0:
        assert "nothing to" in p.stderr or "no jumpkit state" in p.stderr, p.stderr
        if recover == "resume" and tree_listing(sb.root) != labelled_expected["new"][0]:  # type: ignore[index]
            assert install("--root", sb.root, "apply", bundle).returncode == 0
    files, db = labelled_expected["new" if recover == "resume" else "old"]  # type: ignore[misc]
    now = tree_listing(sb.root)
    assert now == files, f"kill at {point}, {recover}:\n{tree_diff(files, now)}"
    assert db_state(sqlite_url(sb.root)) == db
    count(f"labelled-root crash matrix: kill at a failpoint, then {recover} (labels exact)")


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
