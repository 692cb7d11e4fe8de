"""Writing the upgrade-path site (:mod:`builder.site` gathers what it says).

The site is static: HTML from jinja2 templates (``templates/site/``, autoescaped), one
stylesheet, one script and the picker's data as a script (``data.js``: a page opened from
``file://`` may not ``fetch()`` a JSON file, but it may load a script). No font, image
or script comes from elsewhere, so it works offline, from a bucket or from a CDN. Every
link is relative (or under ``--base-url``).

It is written into a new directory beside ``--out`` and renamed into place, so a failed
run leaves the previous site whole; a directory that is not a site (no ``.jumpkit-site``
marker) is never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from builder import __version__
from builder.errors import BuildError
from builder.resources import templates
from builder.sbom import document, member_name, release_components
from builder.site import JumpInfo, SiteModel
from installer.errors import UsageError

MARKER = ".jumpkit-site"
STATIC = ("site.css", "picker.js")


def human(n: int) -> str:
    """``24.3 MB``: a size for a person (the exact bytes are beside it)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Edge:
    """A jump drawn in the graph."""

    jump: JumpInfo
    path: str
    kind: str  # jump, exception or forbidden


def layout(model: SiteModel) -> dict[str, Any]:
    """Coordinates of the jump graph: versions left to right, a jump to the next version a
    straight arrow, a longer jump an arc above that rises with its span."""
    gap, left = 150, 60
    spans = [model.versions.index(b) - model.versions.index(a) for a, b in model.jumps]
    rise = 34 * max([s for s in spans if s > 1], default=0)
    base = 40 + rise
    xs = {v: left + i * gap for i, v in enumerate(model.versions)}
    edges = []
    for (a, b), info in model.jumps.items():
        x1, x2 = xs[a] + 14, xs[b] - 14
        span = model.versions.index(b) - model.versions.index(a)
        kind = "forbidden" if info.broken else "exception" if info.exception else "jump"
        if span <= 1:
            edges.append(Edge(info, f"M {x1} {base} L {x2} {base}", kind))
        else:
            h = 34 * span
            edges.append(
                Edge(info, f"M {x1} {base - 6} Q {(x1 + x2) / 2} {base - 6 - 2 * h} {x2} {base - 6}", kind)
            )
    return {
        "width": left * 2 + gap * max(len(model.versions) - 1, 0),
        "height": base + 60,
        "base": base,
        "nodes": [(v, xs[v], v in model.product.graph().required_stops) for v in model.versions],
        "edges": edges,
    }


def picker_data(model: SiteModel) -> dict[str, Any]:
    """What the picker's script reads: versions, each jump's bundles, every path."""
    return {
        "product": model.product.name,
        "versions": model.versions,
        "jumps": {
            info.key: {
                "from": info.frm, "to": info.to, "page": f"jumps/{info.slug}.html",
                "exception": info.exception, "changes": info.summary,
                "outage": info.outage,
                "downloads": [{"kind": d.kind, "name": d.name, "size": d.size, "size_text": human(d.size),
                               "sha256": d.sha256, "href": d.href, "verify": d.verify}
                              for d in info.downloads],
                "tested": info.tested,
            }
            for info in model.jumps.values()
        },
        "paths": model.paths,
    }  # fmt: skip


def script_json(doc: Any) -> str:
    """``doc`` as JSON safe inside ``<script>``: no ``</script>`` or ``<!--`` can close it."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates() / "site"),
        autoescape=jinja2.select_autoescape(["html", "svg", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["human"] = human
    return env


def notes_blocks(text: str | None) -> list[tuple[str, list[str]]]:
    """Release notes as blocks: ``("p", [text])`` paragraphs and ``("ul", items)`` lists."""
    out: list[tuple[str, list[str]]] = []
    for para in (text or "").strip().split("\n\n"):
        lines = [x.strip() for x in para.splitlines() if x.strip()]
        if not lines:
            continue
        if all(x.startswith("- ") for x in lines):
            out.append(("ul", [x[2:] for x in lines]))
        else:
            out.append(("p", [" ".join(lines)]))
    return out


def write(model: SiteModel, out: Path) -> list[str]:
    """Write the site to ``out`` (see the module docstring); returns its files, sorted.

    Raises:
        UsageError: ``out`` is something other than an earlier site. BuildError: it cannot
            be written.
    """
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not a site bundle-build wrote: give an empty or new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        _write_all(model, work)
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(work, ignore_errors=True)
        raise BuildError(f"cannot write the site to {out}: {e}") from e
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MARKER)


def _write_all(model: SiteModel, work: Path) -> None:
    env = _environment()
    (work / "jumps").mkdir(parents=True)
    graph = layout(model)
    common = {"model": model, "graph": graph, "version": __version__}
    _render(env, "graph.svg.j2", work / "graph.svg", root="", **{**common, "standalone": True})
    common["standalone"] = False
    _render(env, "index.html.j2", work / "index.html", root="", **common)
    for info in model.jumps.values():
        _render(env, "jump.html.j2", work / "jumps" / f"{info.slug}.html", root="../", jump=info,
                notes=notes_blocks(info.notes), **common)  # fmt: skip
    (work / "data.js").write_text(f"window.JUMPKIT_SITE = {script_json(picker_data(model))};\n")
    for name in STATIC:
        shutil.copyfile(templates() / "site" / name, work / name)
    (work / "sbom").mkdir()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    for v in model.releases:
        doc = document(model.product.name, v, release_components(model.product, v), epoch)
        (work / member_name(model.product.name, v)).write_bytes(doc)
    copied = [d for info in model.jumps.values() for d in info.downloads if d.source is not None]
    if copied:
        (work / "bundles").mkdir()
    for d in copied:
        assert d.source is not None
        try:
            os.link(d.source, work / d.href)  # a bundle is large and immutable: share it
        except OSError:
            shutil.copyfile(d.source, work / d.href)
    (work / MARKER).write_text(f"written by bundle-build {__version__}\n")


def _render(env: jinja2.Environment, template: str, dest: Path, **context: Any) -> None:
    try:
        text = env.get_template(template).render(**context)
    except jinja2.TemplateError as e:
        raise BuildError(f"site template {template}: {e}") from e
    dest.write_text(text)
