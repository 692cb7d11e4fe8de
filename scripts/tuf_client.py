"""jumpkit's TUF fetch path behind the tuf-conformance client-under-test CLI
(theupdateframework/tuf-conformance CLIENT-CLI.md), so the standard conformance suite
can run against it:

  tuf-client --metadata-dir DIR init TRUSTED_ROOT
  tuf-client --metadata-dir DIR --metadata-url URL refresh
  tuf-client --metadata-dir DIR --metadata-url URL --target-name PATH \\
             --target-base-url URL --target-dir DIR download

It drives python-tuf's ngclient through jumpkit's StoreFetcher and stores (the code
`bundle-install fetch` uses): http(s)://, file:// and s3:// URLs. Exit 0 on success, 1 on
any failure (the reason on stderr).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from installer.fetch import StoreFetcher
    from installer.store import open_store
    from installer.tufclient import Updater

    ap = argparse.ArgumentParser(prog="tuf-client", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--metadata-dir", required=True)
    ap.add_argument("--metadata-url")
    ap.add_argument("--target-name")
    ap.add_argument("--target-base-url")
    ap.add_argument("--target-dir")
    ap.add_argument("command", choices=["init", "refresh", "download"])
    ap.add_argument("trusted_root", nargs="?")
    a = ap.parse_args()
    try:
        if a.command == "init":
            if not a.trusted_root:
                ap.error("init needs TRUSTED_ROOT")
            Path(a.metadata_dir).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(a.trusted_root, Path(a.metadata_dir) / "root.json")
            return 0
        if not a.metadata_url:
            ap.error(f"{a.command} needs --metadata-url")
        meta_url = a.metadata_url.rstrip("/")
        stores = [open_store(meta_url)]
        if a.command == "download":
            if not (a.target_name and a.target_base_url and a.target_dir):
                ap.error("download needs --target-name, --target-base-url and --target-dir")
            stores.append(open_store(a.target_base_url.rstrip("/")))
        up = Updater(
            metadata_dir=a.metadata_dir,
            metadata_base_url=meta_url + "/",
            target_dir=a.target_dir,
            target_base_url=None if a.target_base_url is None else a.target_base_url.rstrip("/") + "/",
            fetcher=StoreFetcher(stores),
            bootstrap=None,  # the root.json that init (or an earlier refresh) left in --metadata-dir
        )
        up.refresh()
        if a.command == "download":
            info = up.get_targetinfo(a.target_name)
            if info is None:
                print(f"tuf-client: {a.target_name}: no such target", file=sys.stderr)
                return 1
            if up.find_cached_target(info) is None:
                up.download_target(info)
        return 0
    except Exception as e:  # the protocol: any failure is exit 1
        print(f"tuf-client: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
