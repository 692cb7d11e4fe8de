"""The code stays a house a newcomer can find their way in: no module over 700 lines, no
function body over 60 (a typer command's signature is its option table, so bodies are
what is counted)."""

from __future__ import annotations

import ast

from tests.helpers import REPO

MAX_MODULE_LINES = 700
MAX_BODY_LINES = 60


def _modules() -> list[tuple[str, str]]:
    return [(p.relative_to(REPO).as_posix(), p.read_text())
            for pkg in ("installer", "builder") for p in sorted((REPO / pkg).glob("*.py"))]  # fmt: skip


def test_no_module_over_700_lines() -> None:
    long = {name: text.count("\n") for name, text in _modules() if text.count("\n") > MAX_MODULE_LINES}
    assert not long, long


def test_no_function_body_over_60_lines() -> None:
    long = {}
    for name, text in _modules():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = node.body[0]
                documented = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                if documented and len(node.body) > 1:
                    first = node.body[1]  # the docstring says why: no code to find one's way in
                body = (node.end_lineno or node.lineno) - first.lineno + 1
                if body > MAX_BODY_LINES:
                    long[f"{name}:{node.lineno} {node.name}"] = body
    assert not long, long
