"""The spec files' JSON Schema and field reference, generated from the models of
:mod:`builder.spec` (which validate every build) so they cannot drift from them.

- ``builder/schemas/{product,jump}.schema.json``: shipped in the package; the demo specs
  name them (``# yaml-language-server: $schema=...``) so editors validate and complete.
- ``specs/REFERENCE.md``: every field of ``product.yaml`` and of a jump file with its
  type, default, meaning (the model's attribute docstring) and an example (taken from
  the demo product's specs where it uses the field).

``scripts/gen-spec-docs`` writes both; ``tests/test_lint.py`` fails when they are stale.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from builder.spec import JumpSpec, ProductSpec
from builder.specfile import _models_in

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
KINDS: dict[str, type[BaseModel]] = {"product": ProductSpec, "jump": JumpSpec}
TITLES = {"product": "product.yaml", "jump": "jumps/<from>-<to>.yaml"}
EXAMPLES: dict[str, Any] = {
    # fields the demo product does not use: an example each, by model and key
    "Check.command": ["test", "-d", "var/lib/app"],
    "ConfigSpec.required": True,
    "Check.timeout": 30,
    "HealthCheck.expect_status": 204,
    "HealthCheck.host": "127.0.0.1",
    "HealthCheck.port": "{port}",
    "Lookup.env": "APP_DATABASE_URL",
    "Lookup.default": "8080",
    "Policy.skip_major": False,
    "Service.start": ["/opt/app/bin/appctl", "start"],
    "Service.stop": ["/opt/app/bin/appctl", "stop"],
    "Service.status": ["/opt/app/bin/appctl", "status"],
    "Service.added": True,
    "Service.depends_on": ["app-db"],
    "JumpSpec.variables": {"workers": 4},
    "JumpSpec.notes": "Adds the worker service.\n\n- Items gain an owner.\n",
    "JumpSpec.jobs": [{"name": "reindex", "script": "jobs/reindex.sh", "retries": 5}],
    "JumpSpec.services": {
        "backend": "systemd",
        "services": [{"name": "app"}, {"name": "app-worker", "added": True}],
    },
    "JumpSpec.units": {"app-worker": {"exec_start": ["/opt/app/bin/worker"], "user": "app"}},
    "JumpSpec.revisions": {"main": "0004"},
    "JumpSpec.components": ["components/app-agent-2.1.0-1.x86_64.rpm"],
    "FilesSpec.exclude": ["**/__pycache__/*", "*.pyc"],
    "FilesSpec.remove": ["opt/app/lib/obsolete.so"],
    "HookSpec.undo_script": "hooks/reindex-undo.sh",
    "HookSpec.timeout": 120,
    "JobSpec.name": "reindex",
    "JobSpec.script": "jobs/reindex.sh",
    "JobSpec.retries": 5,
    "JobSpec.backoff": 10,
    "JobSpec.timeout": 1800,
    "ModeSpec.mode": "4755",
    "ModeSpec.allow_setuid": True,
    "UnitSpec.exec_start": ["/opt/app/bin/worker", "--config", "/etc/app/worker.ini"],
    "UnitSpec.description": "App background worker",
    "UnitSpec.type": "notify",
    "UnitSpec.user": "app",
    "UnitSpec.working_directory": "/var/lib/app",
    "UnitSpec.environment": {"APP_MODE": "worker"},
    "UnitSpec.after": ["network-online.target", "app.service"],
    "UnitSpec.requires": ["app.service"],
    "UnitSpec.restart": "always",
    "UnitSpec.wanted_by": "multi-user.target",
    "UnitSpec.wants": ["app-db.service"],
    "UnitSpec.restart_sec": 0.5,
    "UnitSpec.exec_reload": ["/bin/kill", "-HUP", "$MAINPID"],
    "UnitSpec.socket": {"listen_stream": ["127.0.0.1:8080"]},
    "SocketSpec.listen_stream": ["127.0.0.1:8080", "/run/app/app.sock"],
    "SocketSpec.backlog": 1024,
    "Service.socket": "app.socket",
    "Service.removed": True,
    "ServicesSpec.settle": 2.0,
    "ModeSpec.owner": "app",
    "ModeSpec.group": "app",
    "ModeSpec.allow_caps": True,
}


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a class's fields (``x: int = 0`` then ``\"\"\"...\"\"\"``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out = {}
    for a, b in itertools.pairwise(body):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):  # fmt: skip
            out[a.target.id] = " ".join(b.value.value.split())
    return out


def _all_models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}
    stack = [root]
    while stack:
        m = stack.pop()
        if m.__name__ in out:
            continue
        out[m.__name__] = m
        for f in m.model_fields.values():
            stack += list(_models_in(f.annotation))
    return out


def spec_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one kind of spec file, field docs included."""
    model = KINDS[kind]
    schema = model.model_json_schema(by_alias=True)
    models = _all_models(model)
    for name, part in [(model.__name__, schema), *schema.get("$defs", {}).items()]:
        cls = models.get(name)
        if cls is None:
            continue
        docs = attribute_docs(cls)
        for fname, f in cls.model_fields.items():
            prop = part.get("properties", {}).get(f.alias or fname)
            if prop is not None and "description" not in prop and fname in docs:
                prop["description"] = docs[fname]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://jumpkit.dev/schemas/{kind}.schema.json", **schema}  # fmt: skip


def schema_text(kind: str) -> str:
    return json.dumps(spec_schema(kind), indent=2, sort_keys=False) + "\n"


def _type_of(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in prop:
        return " or ".join(_type_of(p) for p in prop["anyOf"])
    t = prop.get("type", "any")
    if t == "array":
        return f"list of {_type_of(prop.get('items', {}))}"
    if t == "object":
        extra = prop.get("additionalProperties")
        return f"map of {_type_of(extra)}" if isinstance(extra, dict) else "map"
    return str(t)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
    text = text.removesuffix("\n...").strip()
    return text if len(text) <= 90 else text[:87] + "..."


def _examples(model: type[BaseModel], docs: list[Any], seen: dict[str, dict[str, Any]]) -> None:
    """For each model under ``model``, the first value each field has in ``docs`` (the
    demo specs' parsed YAML at this model's place), by model name and field alias."""
    mine = seen.setdefault(model.__name__, {})
    for name, f in model.model_fields.items():
        key = f.alias or name
        values = [d[key] for d in docs if isinstance(d, dict) and key in d]
        if values and key not in mine:
            mine[key] = values[0]
        children: list[Any] = []
        for v in values:
            if isinstance(v, list | tuple):
                children += list(v)
            elif isinstance(v, dict) and any(_is_map_of_models(f.annotation)):
                children += list(v.values())
            else:
                children.append(v)
        for sub in _models_in(f.annotation):
            _examples(sub, children, seen)


def _is_map_of_models(annotation: Any) -> Iterator[bool]:
    if getattr(annotation, "__origin__", None) is dict:
        yield bool(list(_models_in(annotation.__args__[1])))


def reference_markdown(demo: Path) -> str:
    """specs/REFERENCE.md: a table per model of each kind of spec file."""
    product_docs = [yaml.safe_load((demo / "product.yaml").read_text())]
    jump_docs = [yaml.safe_load(p.read_text()) for p in sorted((demo / "jumps").glob("*.yaml"))]
    lines = [
        "# Spec reference",
        "",
        "Generated from the models that validate every build (`scripts/gen-spec-docs`; do not edit).",
        "Editors validate and complete spec files with the JSON Schemas in `builder/schemas/`:",
        "put `# yaml-language-server: $schema=<path to>/product.schema.json` (or `jump.schema.json`)",
        "at the top of the file, as the demo product's specs do. `bundle-build lint` checks what a",
        "schema cannot (files, patterns against the release trees); examples are the demo's.",
    ]
    done: set[str] = set()
    for kind, docs in (("product", product_docs), ("jump", jump_docs)):
        model = KINDS[kind]
        schema = spec_schema(kind)
        seen: dict[str, dict[str, Any]] = {}
        _examples(model, docs, seen)
        parts = [(model.__name__, schema), *sorted(schema.get("$defs", {}).items())]
        lines += ["", f"## {TITLES[kind]}", ""]
        for name, part in parts:
            if name in done:
                lines += [f"### {name}", "", "See above.", ""] if name != model.__name__ else []
                continue
            done.add(name)
            if name != model.__name__:
                lines += [f"### {name}", ""]
            if part.get("description"):
                lines += [" ".join(str(part["description"]).split()), ""]
            lines += ["| field | type | default | meaning | example |", "|---|---|---|---|---|"]
            required = set(part.get("required", []))
            for key, prop in part.get("properties", {}).items():
                if key in required:
                    default = "required"
                else:
                    default = f"`{_flow(prop['default'])}`" if "default" in prop else ""
                example = seen.get(name, {}).get(key, EXAMPLES.get(f"{name}.{key}"))
                shown = _cell(f"`{key}: {_flow(example)}`") if example is not None else ""
                meaning = _cell(str(prop.get("description", "")))
                lines.append(f"| `{key}` | {_type_of(prop)} | {default} | {meaning} | {shown} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
