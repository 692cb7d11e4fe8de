"""``bundle-build lint`` (issue 22): each mistake a new user made writing specs, reported
on its file:line with "did you mean"; a build of that jump refuses the same errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import SPECS, build

JUMP = "demo-manager/jumps/4.0.1-4.1.1.yaml"
PRODUCT = "demo-manager/product.yaml"


def _specs(tmp_path: Path, edits: dict[str, list[tuple[str, str]]]) -> Path:
    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs, symlinks=True)
    for rel, pairs in edits.items():
        path = specs / rel
        text = path.read_text()
        for old, new in pairs:
            assert old in text, (rel, old)
            text = text.replace(old, new, 1)
        path.write_text(text)
    return specs


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_the_demo_specs_are_clean() -> None:
    p = build("lint", "--specs", SPECS, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout) == {"ok": True, "errors": 0, "warnings": 0, "problems": []}


SCHEMA_CASES = {  # (text in the demo jump, replaced by, its line holds, what lint says)
    "unknown key": ("date:", "timout: 5\ndate:", "timout:", "timout: unknown key (did you mean 'timeout'?)"),
    "hook when": ("when: node,", "when: nodes,", "when: nodes", "hooks.1.when: Input should be"),
    "hook undo key": ("post, script: cluster/step.sh}", "post, script: cluster/step.sh, undo: u.sh}",
                      "undo: u.sh", "hooks.2.undo: unknown key (did you mean 'undo_script'?)"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_schema_mistakes_are_named_on_their_line(case: str, tmp_path: Path, keys: dict[str, Path]) -> None:
    old, new, marker, said = SCHEMA_CASES[case]
    specs = _specs(tmp_path, {JUMP: [(old, new)]})
    line = _line_of(specs / JUMP, marker)
    p = build("lint", "--specs", specs)
    assert p.returncode == 2, p.stdout
    assert f"{specs / JUMP}:{line}: error: {said}" in p.stdout, p.stdout
    out = tmp_path / "out"
    p = build("--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", out)
    assert p.returncode == 2 and said in p.stderr.splitlines()[0], p.stderr
    assert not out.exists() or not list(out.iterdir())


def test_a_version_yaml_reads_as_a_number_and_a_key_given_twice(tmp_path: Path) -> None:
    specs = _specs(tmp_path, {PRODUCT: [('required_stops: ["4.0.1"]', "required_stops: [4.10]")]})
    p = build("lint", "--specs", specs)
    assert p.returncode == 2
    line = _line_of(specs / PRODUCT, "required_stops")
    said = f"{specs / PRODUCT}:{line}: error: required_stops.0: 4.10 is a number to YAML (it reads 4.1); "
    assert said + 'a version is MAJOR.MINOR.PATCH, quoted: "4.10.0"' in p.stdout, p.stdout
    specs = _specs(tmp_path / "dup", {PRODUCT: [("summary:", "required_stops: []\nsummary:")]})
    p = build("lint", "--specs", specs)
    assert p.returncode == 2
    first, second = (
        _line_of(specs / PRODUCT, "required_stops: []"),
        _line_of(specs / PRODUCT, 'required_stops: ["4.0.1"]'),
    )
    want = f"{specs / PRODUCT}:{max(first, second)}: error: required_stops: given twice (the first on line "
    assert want + f"{min(first, second)}); YAML keeps only this one" in p.stdout, p.stdout


def test_each_semantic_mistake_is_an_error_the_build_refuses(tmp_path: Path, keys: dict[str, Path]) -> None:
    edits = [
        ('include: ["opt/demo-manager/*"]', 'include: ["opt/demo-manager/*", "opt/demo-manger/*"]'),
        ("  modes:", '  exclude: ["*.pyc"]\n  modes:'),
        (
            "    policy: keep-local",
            "    policy: keep-local\n    rules:\n      - {pattern: 'a', replacement: 'b'}",
        ),
        (
            "post, script: cluster/step.sh}\n",
            "post, script: cluster/stepp.sh}\njobs:\n  - {name: x, script: y.sh}\n",
        ),
    ]
    specs = _specs(tmp_path, {JUMP: edits})
    (specs / "demo-manager/releases/4.1.1/root/stray.txt").write_text("not carried\n")
    jump = specs / JUMP
    p = build("lint", "--specs", specs, "--json")
    assert p.returncode == 2
    doc = json.loads(p.stdout)
    said = {(x["line"], x["severity"], x["message"]) for x in doc["problems"] if x["file"] == str(jump)}
    want = [
        (_line_of(jump, "opt/demo-manger"), "error", "files.include: 'opt/demo-manger/*' matches nothing in "
         "release 4.1.1: the bundle would carry none of it (did you mean 'opt/demo-manager/*'?)"),
        (_line_of(jump, "exclude"), "warning", "files.exclude: '*.pyc' matches nothing"),
        (_line_of(jump, "{pattern: 'a'") - 1, "error", "configs.1.rules: etc/demo-manager/logging.ini has "
         "rules but policy keep-local: rules run only with policy: rewrite"),
        (_line_of(jump, "stepp.sh"), "error",
         f"hooks.2.script: no such file {jump.parent}/cluster/stepp.sh (relative to the jump file)"),
        (_line_of(jump, "y.sh"), "error",
         f"jobs.0.script: no such file {jump.parent}/y.sh (relative to the jump file)"),
        (_line_of(jump, "files:"), "error", "1 file(s) differ between 4.0.1 and 4.1.1 but no include pattern "
         "carries them and no exclude leaves them out: stray.txt"),
    ]  # fmt: skip
    for w in want:
        assert w in said, (w, sorted(said))
    assert doc["errors"] >= 5 and doc["warnings"] >= 1
    out = tmp_path / "out"
    p = build("--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", out)
    assert p.returncode == 2 and f"{jump}:" in p.stderr.splitlines()[0], p.stderr
    assert not out.exists() or not list(out.iterdir())


def test_specs_naming_a_product_directory_is_understood(tmp_path: Path) -> None:
    p = build("lint", "--specs", SPECS / "demo-manager")
    assert p.returncode == 0 and "no problems found" in p.stdout, p.stdout + p.stderr
    p = build("lint", "--specs", tmp_path)
    assert p.returncode == 2
    assert "holds no product (no */product.yaml): --specs names the directory" in p.stderr, p.stderr


def test_schemas_and_reference_are_generated_from_the_models_and_fit_the_demo() -> None:
    """builder/schemas/*.json and specs/REFERENCE.md are what scripts/gen-spec-docs writes
    today (a model changed without them fails here); the demo specs validate against the
    schemas they name; every field of the reference has a meaning and an example."""
    import jsonschema
    import yaml

    from builder.schema import KINDS, SCHEMA_DIR, reference_markdown, schema_text

    for kind in KINDS:
        shipped = (SCHEMA_DIR / f"{kind}.schema.json").read_text()
        assert shipped == schema_text(kind), f"{kind}.schema.json is stale: run scripts/gen-spec-docs"
    reference = (SPECS / "REFERENCE.md").read_text()
    assert reference == reference_markdown(SPECS / "demo-manager"), (
        "REFERENCE.md is stale: scripts/gen-spec-docs"
    )
    demo = SPECS / "demo-manager"
    for path in [demo / "product.yaml", *sorted((demo / "jumps").glob("*.yaml"))]:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        schema = json.loads((path.parent / first.split("=", 1)[1]).read_text())
        jsonschema.validate(_as_json(yaml.safe_load(path.read_text())), schema)
    bad = _as_json(yaml.safe_load((demo / "jumps/4.0.1-4.1.1.yaml").read_text())) | {"timout": 5}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads((SCHEMA_DIR / "jump.schema.json").read_text()))
    rows = [r.split("|") for r in reference.splitlines() if r.startswith("| `")]
    assert len(rows) > 100
    for r in rows:
        assert r[4].strip() and r[5].strip(), f"field {r[1].strip()} lacks a meaning or an example"


def _as_json(value: object) -> object:
    """A parsed YAML document as an editor's schema check sees it: dates are strings."""
    import datetime as dt

    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    return value.isoformat() if isinstance(value, dt.date) else value


def test_one_run_reports_every_independent_problem(tmp_path: Path) -> None:
    """Three seeded typos in three layers (product.yaml schema, a jump's schema, a hook file
    that jump names) come out of one lint run, text and --json alike: a schema error no
    longer hides what lies behind it (issue 35, item 9)."""
    specs = _specs(
        tmp_path,
        {
            PRODUCT: [("summary:", "sumary: x\nsummary:")],
            JUMP: [
                ("date:", "timout: 5\ndate:"),
                ("post, script: cluster/step.sh}", "post, script: cluster/stepp.sh}"),
            ],
        },
    )
    jump = specs / JUMP
    product = specs / PRODUCT
    want = [
        f"{product}:{_line_of(product, 'sumary')}: error: sumary: unknown key (did you mean 'summary'?)",
        f"{jump}:{_line_of(jump, 'timout')}: error: timout: unknown key (did you mean 'timeout'?)",
        f"{jump}:{_line_of(jump, 'stepp.sh')}: error: hooks.2.script: no such file {jump.parent}/cluster/"
        "stepp.sh",
    ]
    p = build("lint", "--specs", specs)
    assert p.returncode == 2
    for w in want:
        assert w in p.stdout, (w, p.stdout)
    doc = json.loads(build("lint", "--specs", specs, "--json").stdout)
    lines = [f"{x['file']}:{x['line']}: {x['severity']}: {x['message']}" for x in doc["problems"]]
    for w in want:
        assert any(ln.startswith(w) for ln in lines), (w, lines)


def test_a_two_part_version_is_advised_whole_and_blocks_no_other_jump(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """``to: 2.1`` in a jump named 4.1.1-4.2.yaml: lint advises "4.2.0" on the file's line
    (and the name), --json has the details, and plan and build of other jumps still work
    (issue 35, item 11)."""
    specs = _specs(tmp_path, {})
    bad = specs / "demo-manager/jumps/4.1.1-4.2.yaml"
    bad.write_text("from: 4.1.1\nto: 4.2\n")
    p = build("lint", "--specs", specs, "--json")
    assert p.returncode == 2
    said = {(x["line"], x["message"]) for x in json.loads(p.stdout)["problems"] if x["file"] == str(bad)}
    assert (
        2,
        'to: 4.2 is a number to YAML (it reads 4.2); a version is MAJOR.MINOR.PATCH, quoted: "4.2.0"',
    ) in said, said
    assert any("'4.2' in the file name is not a version" in m and '"4.2.0"' in m for _, m in said), said
    bad.write_text('from: 4.1.1\nto: "4.2"\n')
    p = build("lint", "--specs", specs, "--json")
    said = {(x["line"], x["message"]) for x in json.loads(p.stdout)["problems"] if x["file"] == str(bad)}
    assert (
        2,
        "to: Value error, not a version (want MAJOR.MINOR.PATCH): '4.2'; did you mean \"4.2.0\"?",
    ) in said, said
    p = build("plan", "--specs", specs, "--from", "4.0.1", "--to", "4.2.0")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out"
    p = build("--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", out)
    assert p.returncode == 0, p.stderr
