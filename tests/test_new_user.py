"""A product of someone else's, written only from specs/REFERENCE.md as a new release
engineer would (issue 35): "ledger", three releases of a Python HTTP service under
supervisord, an operator-edited config, a SQLite database migrated by Alembic, and a
``#!/bin/sh`` hook in each jump. It is applied, chained, rolled back and interrupted by
the installer, then proven by ``test-jumps`` as ZIPs and as RPMs (where the hook runs
inside the chrooted %posttrans and must find its /bin/sh)."""

from __future__ import annotations

import itertools
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import HARNESS, build, db_state, free_port, install, short_tmp, tree_hash

DB = "var/lib/ledger/ledger.db"
SKIP = (*HARNESS, DB, DB + "-journal")  # the database is compared by its rows and revision


def rows(root: Path) -> dict[str, object]:
    """The revision and every table's columns and rows (a batch migration's downgrade
    rebuilds a table: equal data, other DDL text)."""
    return db_state(f"sqlite:///{root / DB}")


pytestmark = pytest.mark.slow

VERSIONS = ("1.0.0", "1.1.0", "2.0.0")

PRODUCT = """\
product: ledger
summary: A small bookkeeping service (jumpkit's new-user test)
version_file: opt/ledger/VERSION
variables: {port: 8080}
lookups:
  port: {file: etc/ledger/ledger.ini, key: server.port}
services:
  backend: supervisord
  socket: var/run/supervisor.sock
  services:
    - {name: ledger, stop_timeout: 10, start_timeout: 10}
  health:
    - {name: answers, kind: http, url: "http://127.0.0.1:{port}/", expect_body: "ledger {version}",
       timeout: 1, interval: 0.02, retries: 300}
databases:
  - name: main
    script_dir: migrations/main
    url: {file: etc/ledger/ledger.ini, key: database.path}
    url_kind: sqlite-path
sandbox:
  init: init.py
  programs:
    ledger: ["{python}", "{root}/opt/ledger/server.py", "{root}"]
"""

INIT = """\
import os, sqlite3, sys
from pathlib import Path
from installer.migrate import create_at_head

root = Path(sys.argv[1])
db = root / "var/lib/ledger/ledger.db"
db.parent.mkdir(parents=True, exist_ok=True)
create_at_head(Path(os.environ["JUMPKIT_RELEASE"]) / "migrations/main", f"sqlite:///{db}")
with sqlite3.connect(db) as con:
    con.executemany("INSERT INTO entries (amount, note) VALUES (?, ?)", [(12.5, "rent"), (3.25, "tea")])
"""

SERVER = """\
import configparser, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
root = sys.argv[1]
cfg = configparser.ConfigParser()
cfg.read(root + "/etc/ledger/ledger.ini")
version = open(root + "/opt/ledger/VERSION").read().strip()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"ledger {version} ok\\n".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", cfg.getint("server", "port")), H).serve_forever()
"""

MIGRATIONS = {  # each release carries the revisions up to its own
    "0001_entries.py": ("1.0.0", None, """\
    op.create_table("entries", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("amount", sa.Float, nullable=False), sa.Column("note", sa.Text))""",
                        '    op.drop_table("entries")'),
    "0002_category.py": ("1.1.0", "0001", """\
    op.add_column("entries", sa.Column("category", sa.Text, server_default="misc"))""", """\
    with op.batch_alter_table("entries") as b:
        b.drop_column("category")"""),
    "0003_cents.py": ("2.0.0", "0002", """\
    op.add_column("entries", sa.Column("amount_cents", sa.Integer))
    op.execute("UPDATE entries SET amount_cents = CAST(ROUND(amount * 100) AS INTEGER)")""", """\
    with op.batch_alter_table("entries") as b:
        b.drop_column("amount_cents")"""),
}  # fmt: skip

HOOK = '#!/bin/sh\necho "ledger: $JUMPKIT_FROM -> $JUMPKIT_TO"\n'


def ledger_specs(top: Path) -> Path:
    """specs/ledger as a new user lays it out."""
    d = top / "specs" / "ledger"
    (d / "jumps").mkdir(parents=True)
    (d / "product.yaml").write_text(PRODUCT)
    (d / "init.py").write_text(INIT)
    for i, v in enumerate(VERSIONS):
        r = d / "releases" / v
        (r / "root/opt/ledger").mkdir(parents=True)
        (r / "root/opt/ledger/VERSION").write_text(v + "\n")
        (r / "root/opt/ledger/server.py").write_text(SERVER)
        (r / "config/etc/ledger").mkdir(parents=True)
        workers = "workers = 4\n" if v != "1.0.0" else ""
        (r / "config/etc/ledger/ledger.ini.j2").write_text(
            f"[server]\nport = {{{{ port }}}}\n{workers}[database]\npath = var/lib/ledger/ledger.db\n"
        )
        versions = r / "migrations/main/versions"
        versions.mkdir(parents=True)
        for name, (since, down, up, undo) in MIGRATIONS.items():
            if VERSIONS.index(since) <= i:
                rev = name.split("_")[0]
                (versions / name).write_text(
                    f"import sqlalchemy as sa\nfrom alembic import op\n\nrevision = {rev!r}\n"
                    f"down_revision = {down!r}\n\n\ndef upgrade():\n{up}\n\n\ndef downgrade():\n{undo}\n"
                )
    for frm, to in itertools.pairwise(VERSIONS):
        (d / "jumps/pre-note.sh").write_text(HOOK)
        (d / "jumps/pre-note.sh").chmod(0o755)
        (d / f"jumps/{frm}-{to}.yaml").write_text(
            textwrap.dedent(f"""\
            from: {frm}
            to: {to}
            date: 2026-12-01
            files:
              include: ["opt/ledger/*"]
            configs:
              - {{path: etc/ledger/ledger.ini, policy: keep-local}}
            hooks:
              - {{name: pre-note, when: pre, script: pre-note.sh}}
            """)
        )
    return top / "specs"


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], frozen: Path) -> Iterator[Path]:
    top = tmp_path_factory.mktemp("ledger")
    specs = ledger_specs(top)
    p = build("lint", "--specs", specs)
    assert p.returncode == 0, p.stdout + p.stderr  # what REFERENCE.md says is what lint accepts
    for frm, to in itertools.pairwise(VERSIONS):
        p = build("--specs", specs, "--from", frm, "--to", to, "--key", keys["key"],
                  "--installer", frozen, "--out", top / "dist")  # fmt: skip
        assert p.returncode == 0, p.stderr
    yield specs


def _sandbox(specs: Path, keys: dict[str, Path]) -> tuple[Path, int]:
    from tests.helpers import Sandbox

    port = free_port()
    root = short_tmp("jk-ledger-") / "r"
    p = build("sandbox", "--specs", specs, "--version", "1.0.0", "--root", root, "--trust", keys["pub"],
              "--set", f"server.port={port}")  # fmt: skip
    assert p.returncode == 0, p.stderr
    sb = Sandbox(root, port)
    sb.start_supervisord()
    return root, port


def test_ledger_applied_chained_rolled_back_and_interrupted(ledger: Path, keys: dict[str, Path]) -> None:
    from tests.helpers import Sandbox, terminate

    root, port = _sandbox(ledger, keys)
    sb = Sandbox(root, port, int((root / "var/run/supervisord.pid").read_text()))
    dist = ledger.parent / "dist"
    first, second = dist / "ledger-1.0.0-to-1.1.0.zip", dist / "ledger-1.1.0-to-2.0.0.zip"
    try:
        assert sb.wait_version("ledger 1.0.0 ok") == "ledger 1.0.0 ok"
        before, data = tree_hash(root, SKIP), rows(root)
        # interrupted in the outage: exactly 1.0.0 again, the service back
        p = install("--root", root, "apply", first, env={"JUMPKIT_FAILPOINT": "run:migrate=int"})
        assert p.returncode == 5, p.stderr
        assert tree_hash(root, SKIP) == before and rows(root) == data
        assert sb.wait_version("ledger 1.0.0 ok") == "ledger 1.0.0 ok"
        # one jump, its #!/bin/sh hook, the operator's port kept and the new default beside it
        p = install("--root", root, "apply", first)
        assert p.returncode == 0, p.stderr
        assert "pre-note: ledger: 1.0.0 -> 1.1.0" in p.stderr, p.stderr
        assert f"port = {port}" in (root / "etc/ledger/ledger.ini").read_text()
        assert "workers = 4" in (root / "etc/ledger/ledger.ini.jumpkit-new").read_text()
        assert sb.wait_version("ledger 1.1.0 ok") == "ledger 1.1.0 ok"
        assert install("--root", root, "rollback").returncode == 0
        assert tree_hash(root, SKIP) == before and rows(root) == data
        # the chain to 2.0.0 in one outage, then all the way back
        p = install("--root", root, "apply", first, second)
        assert p.returncode == 0, p.stderr
        assert "chain of 2 jumps" in p.stderr and sb.wait_version("ledger 2.0.0 ok") == "ledger 2.0.0 ok"
        status = json.loads(install("--root", root, "status", "--json").stdout)
        assert status["status"] == "finished" and status["to"] == "2.0.0", status
        import sqlite3

        with sqlite3.connect(root / "var/lib/ledger/ledger.db") as con:
            assert con.execute("SELECT amount_cents FROM entries ORDER BY id").fetchall() == [(1250,), (325,)]
        assert install("--root", root, "rollback").returncode == 0
        assert tree_hash(root, SKIP) == before and rows(root) == data
        assert sb.wait_version("ledger 1.0.0 ok") == "ledger 1.0.0 ok"
    finally:
        terminate(sb.supervisord_pid)


@pytest.mark.parametrize("fmt", ["zip", "rpm"])
def test_test_jumps_proves_ledger(ledger: Path, frozen: Path, fmt: str) -> None:
    """Every jump and the chain, as the release would ship them (with --format rpm: rpm -U
    into each sandbox, the hook's #!/bin/sh inside the chrooted %posttrans)."""
    p = build("test-jumps", "--specs", ledger, "--all", "--format", fmt, "--installer", frozen, "--json")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    doc = json.loads(p.stdout)
    assert [c["case"] for c in doc["cases"]][:2] == ["1.0.0 -> 1.1.0", "1.1.0 -> 2.0.0"], doc
    assert len(doc["cases"]) == 3 and all(set(c["cells"].values()) == {"pass"} for c in doc["cases"]), doc
