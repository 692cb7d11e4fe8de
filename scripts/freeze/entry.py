"""Entry point of the frozen ``bundle-install`` (PyInstaller runs this file)."""

import contextlib
import os

# The launcher (scripts/freeze/launcher.c) ran us from a temporary file because the kernel
# refused to execute from memory; the loaders have unpacked everything by now, so the file
# can go (an unlinked executable keeps running).
_leftover = os.environ.pop("JUMPKIT_LAUNCHER_UNLINK", None)
if _leftover and os.path.basename(_leftover).startswith(".bundle-install-"):
    with contextlib.suppress(OSError):
        os.unlink(_leftover)

import sys  # noqa: E402

if sys.argv[1:] == ["--version"]:
    # The builder probes every binary it embeds with --version, and scripts check it before
    # anything else: answer without loading typer and rich (~0.3 s of a frozen start).
    from installer import version_line

    print(version_line())
    sys.exit(0)

from installer.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
