"""A sandbox root with an SELinux policy, labelled the way a RHEL install is (restorecon,
through libselinux itself): for the label tests. The kernel here has no LSM, so labels are
plain ``security.selinux`` xattrs, as under ``rpm --root`` onto a chroot."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path

from tests.helpers import Sandbox

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
