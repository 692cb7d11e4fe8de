"""One error tree (issue 37): every error jumpkit raises on purpose is a class of
``installer/errors.py`` or ``builder/errors.py``, and every exit code a class carries is in
the operator guide's exit-code table (docs/operator.md) and in each CLI's --help."""

from __future__ import annotations

import importlib
import pkgutil
import re

import builder
import installer
from installer.errors import JumpkitError
from tests.helpers import REPO


def _all_error_classes() -> set[type[JumpkitError]]:
    for pkg in (installer, builder):
        for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(mod.name)
    seen: set[type[JumpkitError]] = set()
    todo = [JumpkitError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return seen


def test_every_error_class_lives_in_an_errors_module() -> None:
    strays = sorted(
        f"{c.__module__}.{c.__name__}"
        for c in _all_error_classes()
        if c.__module__ not in ("installer.errors", "builder.errors") and not c.__module__.startswith("tests")
    )
    assert not strays, strays


def test_exit_codes_agree_between_classes_readme_and_help() -> None:
    from builder.cli import EXIT_CODES as BUILD_CODES
    from installer.cli import EXIT_CODES as INSTALL_CODES

    readme = (REPO / "docs/operator.md").read_text()
    table = readme.split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    in_table = {int(m) for m in re.findall(r"^\| (\d) \|", table, re.M)}
    in_help = {int(m) for m in re.findall(r"(?:^|[;:,] )(\d) ", INSTALL_CODES.replace("\n", " "))}
    installer_codes = {0, 1} | {
        c.exit_code for c in _all_error_classes() if c.__module__ == "installer.errors"
    }
    assert installer_codes <= in_table == in_help, (installer_codes, in_table, in_help)
    builder_help = {int(m) for m in re.findall(r"(?:^|[;:,] )(\d) ", BUILD_CODES)}
    builder_codes = {0, 1} | {c.exit_code for c in _all_error_classes() if c.__module__ == "builder.errors"}
    assert builder_codes | {3, 4} <= builder_help, (
        builder_codes,
        builder_help,
    )  # 3, 4: installer errors it meets


def _imports(pkgs: tuple[str, ...]) -> dict[str, set[str]]:
    """Every import statement of each module of ``pkgs`` (in functions too), within ``pkgs``."""
    import ast

    graph: dict[str, set[str]] = {}
    for pkg in pkgs:
        for f in sorted((REPO / pkg).rglob("*.py")):
            mod = ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            deps: set[str] = set()
            for n in ast.walk(ast.parse(f.read_text())):
                names = [n.module] if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module else []
                names += [a.name for a in n.names] if isinstance(n, ast.Import) else []
                names += (
                    [f"{n.module}.{a.name}" for a in n.names]
                    if isinstance(n, ast.ImportFrom) and n.module
                    else []
                )
                deps |= {x for x in names if x.split(".")[0] in pkgs}
            graph[mod] = deps
    return graph


def test_no_import_cycle_and_the_builder_imports_the_declared_installer_modules() -> None:
    """Lazy imports count: a function-level import is still a dependency (issue 37)."""
    from builder import INSTALLER_MODULES

    graph = _imports(("installer", "builder"))
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*path[path.index(d) :], d]))
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
    used = {
        d for m, deps in graph.items() if m.startswith("builder") for d in deps if d.startswith("installer.")
    }
    assert used <= INSTALLER_MODULES, sorted(used - INSTALLER_MODULES)
