"""Reading a spec YAML file with the line of every key, so that each problem found in it
(schema errors from :mod:`builder.spec`, the checks of :mod:`builder.lint`) is reported
as ``file:line: message``, with "did you mean" for a misspelt key or value."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from builder.errors import SpecError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding in a spec: where, what, and whether it stops a build."""

    file: Path
    line: int | None
    message: str
    severity: Literal["error", "warning"] = "error"

    def render(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.severity}: {self.message}"


@dataclass(frozen=True, slots=True)
class Located:
    """A parsed YAML document and, per key path, the line it is on (1-based) and the
    scalar's text as written (``1.10`` where YAML reads the number 1.1)."""

    path: Path
    data: Any
    lines: dict[Loc, int]
    raw: dict[Loc, str]
    duplicates: tuple[Problem, ...] = ()
    """Keys given twice in one mapping (YAML keeps the last one silently)."""

    def line(self, loc: Iterable[str | int]) -> int | None:
        """The line of ``loc``, else of its nearest ancestor that is in the file."""
        parts = tuple(loc)
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return self.lines.get((), None)

    def problem(
        self, loc: Iterable[str | int], message: str, severity: Literal["error", "warning"] = "error"
    ) -> Problem:
        return Problem(self.path, self.line(loc), message, severity)


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it: the demo specs parsed in 0.11 s
with the pure-Python one (lint's largest cost), in a tenth of that with it."""


def load(path: Path) -> Located:
    """Parse ``path`` (safe loader) keeping lines.

    Raises:
        OSError: unreadable. yaml.YAMLError: not YAML (its mark names the line).
    """
    text = path.read_text()
    node = yaml.compose(text, Loader=_LOADER)
    data = yaml.load(text, Loader=_LOADER)  # a safe loader: libyaml's, else PyYAML's
    lines: dict[Loc, int] = {}
    raw: dict[Loc, str] = {}
    dups: list[Problem] = []

    def walk(n: yaml.Node, loc: Loc) -> None:
        lines.setdefault(loc, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = (*loc, str(k.value))
                if key in lines and key != loc:
                    said = f"{'.'.join(map(str, key))}: given twice (the first on line {lines[key]})"
                    dups.append(Problem(path, k.start_mark.line + 1, said + "; YAML keeps only this one"))
                    for old in [p for p in lines if p[: len(key)] == key]:  # the first value's keys
                        del lines[old]
                        raw.pop(old, None)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*loc, i))
        elif isinstance(n, yaml.ScalarNode):
            raw[loc] = str(n.value)

    if node is not None:
        walk(node, ())
    return Located(path, data, lines, raw, tuple(dups))


def _fields(model: type[BaseModel]) -> Iterator[str]:
    """Every key name a model and the models inside it accept (aliases as written)."""
    seen: set[type[BaseModel]] = set()
    stack = [model]
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        for name, f in m.model_fields.items():
            yield f.alias or name
            for t in _models_in(f.annotation):
                stack.append(t)


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        yield from _models_in(arg)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ``""``."""
    close = closest(word, choices)
    return f" (did you mean {close!r}?)" if close is not None else ""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to ``word`` (difflib, else one that extends it), or None."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6) or [
        c for c in options if word and (c.startswith(word) or word.startswith(c))
    ]
    return close[0] if close else None


def validation_problems(doc: Located, model: type[BaseModel], e: ValidationError) -> list[Problem]:
    """Each pydantic error as a problem on its line, misspellings with a suggestion."""
    out = []
    for err in e.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(x) for x in loc) or "(top)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and loc:
            msg = "unknown key" + did_you_mean(str(loc[-1]), _fields(model))
        elif err["type"] == "literal_error":
            expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            msg += did_you_mean(str(err.get("input")), expected)
        out.append(doc.problem(loc, f"{field}: {msg}"))
    return out


def refuse(problems: Iterable[Problem]) -> None:
    """Raise the errors among ``problems`` (warnings pass) as one SpecError (exit 2): the
    first on its line, ``(+N more)``, every one in ``details``.

    Raises:
        SpecError: at least one error.
    """
    found = [p for p in problems if p.severity == "error"]
    if found:
        errors = [p.render() for p in found]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SpecError(errors[0] + more, problems=errors, found=found)


_DROPPED = object()


def salvage(model: type[M], data: Any, fill: dict[str, Any] | None = None) -> M | None:
    """``data`` validated with what fails taken out, for lint to check the rest of a file
    in the same run (a misspelt key must not hide a hook script that does not exist): each
    failing value is dropped, or the list item or mapping holding it when the failure is
    a missing key; a failing top-level key named in ``fill`` takes that value instead (a
    jump's from/to: its file name's). None when nothing valid remains."""
    import copy

    fill = fill or {}
    data = copy.deepcopy(data) if isinstance(data, dict) else {}
    for _ in range(16):  # each round takes out at least one value
        try:
            return model.model_validate(data, strict=False)
        except ValidationError as e:
            changed = False
            for err in e.errors():
                loc = tuple(err["loc"])
                if loc and loc[0] in fill and data.get(loc[0]) != fill[loc[0]]:
                    data[loc[0]] = fill[loc[0]]
                    changed = True
                elif loc and not (len(loc) == 1 and err["type"] == "missing"):
                    changed = _drop(data, loc[:-1] if err["type"] == "missing" else loc) or changed
            data = _compact(data)
            if not changed:
                return None
        except Exception:  # a validator that raises something else: nothing to salvage
            return None
    return None


def _drop(data: Any, loc: Loc) -> bool:
    """Mark the value at ``loc`` dropped (the deepest part of ``loc`` that exists)."""
    parent: Any = None
    key: str | int | None = None
    node: Any = data
    for k in loc:
        if isinstance(node, list) and isinstance(k, int) and k < len(node):
            nxt = node[k]
        elif isinstance(node, dict) and k in node:
            nxt = node.get(k)
        else:
            break
        parent, key, node = node, k, nxt
    if parent is None or key is None:
        return False
    parent[key] = _DROPPED
    return True


def _compact(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _compact(v) for k, v in data.items() if v is not _DROPPED}
    if isinstance(data, list):
        return [_compact(v) for v in data if v is not _DROPPED]
    return data
