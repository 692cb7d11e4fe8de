"""A jump's databases: revisions from the release trees, the linear-path check, the
rehearsal, and the script files that ship in ``migrations/<name>/versions/``."""

from __future__ import annotations

import ast
import contextlib
import json
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from builder.errors import BuildError, SpecError
from builder.spec import DatabaseSpec, JumpSpec, Product
from builder.zipwriter import Source
from installer.errors import JumpkitError
from installer.format import Database
from installer.migrate import MIGRATION_MODULES, revision_path


def estimate_bucket(seconds: float) -> float:
    """Round a measured duration up to 0.5, 1, 2, 5, 10, 20, 50, ... seconds.

    The manifest records this bucket, not the raw timing, so that two builds of the same
    inputs stay byte-identical (a timing differs run to run; a bucket only when the
    migrations' speed changes by a step). It serves as an upper-bound outage estimate."""
    ladder = (1.0, 2.0, 5.0)
    scale = 0.1
    while True:
        for m in ladder:
            step = m * scale
            if step >= 0.5 and seconds <= step:
                return step
        scale *= 10


def check_graph(script_dir: Path) -> None:
    """Every ``down_revision`` names a revision of the directory (alembic itself ends in a
    bare ``KeyError`` otherwise). Reads the assignments with ``ast``: nothing is imported.

    Raises:
        SpecError: a file that does not parse, has no ``revision``, repeats one, or points
            at a revision that is not there (the file is named).
    """
    revs: dict[str, Path] = {}
    downs: list[tuple[Path, object]] = []
    for f in sorted((script_dir / "versions").glob("*.py")):
        try:
            tree = ast.parse(f.read_bytes(), filename=str(f))
        except (SyntaxError, ValueError, OSError) as e:
            raise SpecError(f"{f}: does not parse: {e}") from e
        found: dict[str, object] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                try:
                    found[target.id] = ast.literal_eval(value)
                except ValueError as e:
                    raise SpecError(f"{f}: {target.id} is not a literal") from e
        rev = found.get("revision")
        if not isinstance(rev, str):
            raise SpecError(f"{f}: no revision = '...' (is it an alembic migration?)")
        if rev in revs:
            raise SpecError(f"{f}: revision {rev!r} is also in {revs[rev].name}")
        revs[rev] = f
        downs.append((f, found.get("down_revision")))
    for f, down in downs:
        for d in down if isinstance(down, (tuple, list)) else [down]:
            if d is not None and d not in revs:
                raise SpecError(f"{f}: down_revision {d!r} is not a revision in {script_dir / 'versions'}")


@contextlib.contextmanager
def _loading(what: str) -> Iterator[None]:
    """Alembic loads every revision file as a module, in the builder's own process: a
    migration importing a module that is not installed is the spec's mistake, named with its
    file, not an internal error."""
    try:
        yield
    except ImportError as e:
        files = [
            f.filename
            for f in traceback.extract_tb(e.__traceback__)
            if Path(f.filename).parent.name == "versions"
        ]
        where = Path(files[-1]).name if files else "a revision"
        raise SpecError(
            f"{what}: migration {where} imports {e.name or str(e)!r}, which is not installed here; "
            f"migrations may import only {', '.join(sorted(MIGRATION_MODULES))} "
            "(what the frozen installer ships)"
        ) from e


def _head(script_dir: Path) -> str | None:
    from alembic.script import ScriptDirectory

    if not (script_dir / "versions").is_dir():
        return None
    check_graph(script_dir)
    heads = ScriptDirectory(str(script_dir)).get_heads()
    if len(heads) > 1:
        raise SpecError(f"{script_dir}: several heads ({', '.join(sorted(heads))}); merge them first")
    return heads[0] if heads else None


def plan_database(
    product: Product, jump: JumpSpec, spec: DatabaseSpec, *, rehearse: bool
) -> tuple[Database, list[Source]]:
    """The manifest entry and the files to ship for one database.

    Raises:
        SpecError: no script dir, several heads, or no linear path (branches/merges named).
        BuildError: the rehearsal failed (the message says which step and why).
    """
    to_dir = product.release_dir(jump.to_version) / spec.script_dir
    from_dir = product.release_dir(jump.from_version) / spec.script_dir
    if not (to_dir / "versions").is_dir():
        raise SpecError(f"databases: {spec.name}: {to_dir}/versions does not exist")
    with _loading(f"databases: {spec.name}"):
        from_rev = _head(from_dir)
        to_rev = jump.revisions.get(spec.name) or _head(to_dir)
        if to_rev is None:
            raise SpecError(f"databases: {spec.name}: {to_dir} has no revisions")
        try:
            revisions = revision_path(to_dir, from_rev, to_rev)
        except JumpkitError as e:
            raise SpecError(f"databases: {spec.name}: {e.message}") from e
    seconds = 0.0
    if rehearse and revisions:
        p = subprocess.run(
            [sys.executable, "-m", "builder.rehearse", str(to_dir), from_rev or "-", to_rev],
            capture_output=True,
            text=True,
        )
        try:
            result = json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError) as e:
            raise BuildError(f"rehearsal of {spec.name} crashed: {p.stderr.strip()[-300:]}") from e
        if not result["ok"]:
            raise BuildError(f"rehearsal of {spec.name} {from_rev} -> {to_rev} failed: {result['error']}")
        seconds = estimate_bucket(result["seconds"])
    sources = [
        Source(f"migrations/{spec.name}/versions/{f.name}", 0o644, path=f)
        for f in sorted((to_dir / "versions").glob("*.py"))
    ]
    db = Database(
        name=spec.name,
        url=spec.url,
        url_kind=spec.url_kind,
        from_revision=from_rev,
        to_revision=to_rev,
        revisions=tuple(revisions),
        rehearsal_seconds=seconds,
    )
    return db, sources
