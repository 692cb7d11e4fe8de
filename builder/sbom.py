"""A release's components as a CycloneDX SBOM, and a jump's component diff.

A release tree carries no package manager's database, so the components are read from
what each ecosystem leaves in the files themselves:

- ``python``: ``*.dist-info/METADATA``, ``*.egg-info/PKG-INFO`` (``pkg:pypi/<name>@<v>``);
- ``rpm``: a ``*.rpm`` in the tree, or a component RPM of a jump that reaches the release
  (``pkg:rpm/<name>@<v>-<r>``);
- ``library``: a file named ``libfoo.so.1.2.3`` or ``libfoo-1.2.3.so`` (``pkg:generic/<name>@<v>``);
- ``ansible-collection``: ``ansible_collections/<ns>/<name>/MANIFEST.json``
  (``pkg:generic/ansible-collection/<ns>.<name>@<v>``);

and the product itself is the SBOM's ``metadata.component``. A Python name is normalised
(PEP 503: ``Django`` and ``django`` are one project); a library's auditwheel hash
(``libgfortran-040039e1.so.5``) is no part of its name, so a rebuilt wheel's library is a
version change, not one removed and one added. A library only a symlink names
(``libfoo.so.1 -> libfoo.so.1.2.3``) is the file it points to, counted once.

The SBOM is reproducible: its serial number is derived from its content and its timestamp
is the build's (SOURCE_DATE_EPOCH or the jump's date), so two builds write the same bytes.
Every SBOM is checked against the CycloneDX 1.6 schema before it is used.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import hashlib
import json
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder import __version__
from builder.errors import BuildError
from builder.trees import TreeFile, walk_tree
from installer.errors import JumpkitError
from installer.sbom import SBOM_PREFIX, SBOM_SUFFIX, ComponentChange, ComponentKind

if TYPE_CHECKING:
    from builder.spec import JumpSpec, Product

_TEXT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+~:@!-]{0,199}$")
_DIST_DIR = re.compile(r"(?:^|/)([^/]+)\.(dist-info/METADATA|egg-info/PKG-INFO)$")
_SO_VERSION = re.compile(r"^(lib[A-Za-z0-9_+.-]*?)\.so\.(\d+(?:\.\d+)*)$")
_VERSION_SO = re.compile(r"^(lib[A-Za-z0-9_+]+(?:-[A-Za-z][A-Za-z0-9_+]*)*)-(\d+(?:\.\d+)+)\.so$")
_WHEEL_HASH = re.compile(r"-[0-9a-f]{8}$")
_COLLECTION = re.compile(r"(?:^|/)ansible_collections/[^/]+/[^/]+/MANIFEST\.json$")
MAX_METADATA = 1024 * 1024
"""A METADATA or MANIFEST.json larger than this is not read (its headers come first)."""


@dataclass(frozen=True, order=True)
class Component:
    """One component found in a release."""

    kind: ComponentKind
    name: str
    version: str
    path: str
    """Where it was found, relative to the release root (or the jump file's directory)."""
    license: str | None = None

    @property
    def purl(self) -> str:
        """Its package URL."""
        if self.kind == "python":
            return f"pkg:pypi/{self.name}@{self.version}"
        if self.kind == "rpm":
            return f"pkg:rpm/{self.name}@{self.version}"
        if self.kind == "ansible-collection":
            return f"pkg:generic/ansible-collection/{self.name}@{self.version}"
        return f"pkg:generic/{self.name}@{self.version}"


def canonical_name(name: str) -> str:
    """PEP 503's normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _read_head(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_METADATA).decode("utf-8", "replace")
    except OSError:
        return None


def _python(rel: str, tf: TreeFile) -> Component | None:
    text = _read_head(tf.path)
    if text is None:
        return None
    head = email.parser.HeaderParser().parsestr(text.split("\n\n", 1)[0] + "\n")
    name, version = head.get("Name"), head.get("Version")
    if not name or not version:
        m = _DIST_DIR.search(rel)
        stem = m.group(1) if m else ""
        name, _, version = stem.partition("-")
    lic = head.get("License-Expression") or head.get("License")
    lic = lic.strip() if lic and len(lic) < 100 and "\n" not in lic.strip() else None
    return Component("python", canonical_name(name.strip()), version.strip(), rel, lic or None)


def _rpm(rel: str, path: Path) -> Component | None:
    import rpmfile

    try:
        with rpmfile.open(path) as r:
            h = r.headers
    except Exception:  # rpmfile raises bare errors on a file that is no RPM
        return None

    def text(key: str) -> str:
        v = h.get(key, b"")
        return (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)).strip()

    name, version, release = text("name"), text("version"), text("release")
    if not name or not version:
        return None
    return Component(
        "rpm", name, f"{version}-{release}" if release else version, rel, text("copyright") or None
    )


def _library(rel: str) -> Component | None:
    base = rel.rsplit("/", 1)[-1]
    m = _SO_VERSION.match(base) or _VERSION_SO.match(base)
    if m is None:
        return None
    return Component("library", _WHEEL_HASH.sub("", m.group(1)), m.group(2), rel)


def _collection(rel: str, tf: TreeFile) -> Component | None:
    text = _read_head(tf.path)
    try:
        info = json.loads(text or "")["collection_info"]
        name, version = f"{info['namespace']}.{info['name']}", str(info["version"])
    except (ValueError, KeyError, TypeError):
        return None
    lic = info.get("license") if isinstance(info, dict) else None
    lic = " OR ".join(lic) if isinstance(lic, list) and all(isinstance(x, str) for x in lic) else None
    return Component("ansible-collection", name, version, rel, lic or None)


def _found(rel: str, tf: TreeFile) -> Component | None:
    if tf.is_link:
        return None
    if _DIST_DIR.search(rel):
        return _python(rel, tf)
    if rel.endswith(".rpm"):
        return _rpm(rel, Path(tf.path))
    if _COLLECTION.search(rel):
        return _collection(rel, tf)
    if ".so" in rel:
        return _library(rel)
    return None


def scan(tree: Mapping[str, TreeFile], rpms: Iterable[tuple[str, Path]] = ()) -> list[Component]:
    """The components of a walked release tree and of RPMs shipped beside it (``rpms``:
    (where, path)), sorted; one whose name or version holds characters no package uses is
    left out (it would reach terminals and pages)."""
    found = [_found(rel, tf) for rel, tf in tree.items()]
    found += [_rpm(rel, path) for rel, path in rpms]
    out: dict[tuple[str, str, str], Component] = {}
    for c in found:
        if c is not None and _TEXT.match(c.name) and _TEXT.match(c.version):
            out.setdefault((c.kind, c.name, c.version), c)
    return sorted(out.values())


def release_components(
    product: Product, version: str, tree: Mapping[str, TreeFile] | None = None
) -> list[Component]:
    """The components of ``product``'s release ``version``: its tree (``tree`` when walked
    already) and the component RPMs of the jumps that reach it.

    Raises:
        SpecError: the release's tree cannot be walked.
    """
    if tree is None:
        tree = walk_tree(product.release_dir(version) / "root")
    rpms: list[tuple[str, Path]] = []
    for (frm, to), path in product.jump_files().items():
        if to != version:
            continue
        try:
            jump = product.jump(frm, to)
        except JumpkitError:  # a broken jump file is lint's to report; its RPMs are unknown here
            continue
        rpms += [(f"components/{Path(rel).name}", path.parent / rel) for rel in jump.components]
    return scan(tree, (r for r in rpms if r[1].is_file()))


def chain_changes(
    product: Product, chain: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[ComponentChange, ...] | None]:
    """Each jump's component changes (None: a release of it has no directory), each
    release read once."""
    seen: dict[str, list[Component] | None] = {}

    def of(version: str) -> list[Component] | None:
        if version not in seen:
            seen[version] = (
                release_components(product, version) if product.release_dir(version).is_dir() else None
            )
        return seen[version]

    out: dict[tuple[str, str], tuple[ComponentChange, ...] | None] = {}
    for a, b in chain:
        before, after = of(a), of(b)
        out[(a, b)] = None if before is None or after is None else diff(before, after)
    return out


def diff(before: Iterable[Component], after: Iterable[Component]) -> tuple[ComponentChange, ...]:
    """What moving from ``before`` to ``after`` changes, by kind and name: a component whose
    one version becomes one other version changed; any other difference is versions added
    and removed. Sorted by name, then kind."""
    old: dict[tuple[ComponentKind, str], set[str]] = defaultdict(set)
    new: dict[tuple[ComponentKind, str], set[str]] = defaultdict(set)
    for c in before:
        old[(c.kind, c.name)].add(c.version)
    for c in after:
        new[(c.kind, c.name)].add(c.version)
    out: list[ComponentChange] = []
    for kind, name in sorted(old.keys() | new.keys(), key=lambda k: (k[1], k[0])):
        a, b = old.get((kind, name), set()), new.get((kind, name), set())
        gone, came = sorted(a - b), sorted(b - a)
        if len(gone) == 1 and len(came) == 1:
            out.append(ComponentChange(kind=kind, name=name, before=gone[0], after=came[0]))
            continue
        out += [ComponentChange(kind=kind, name=name, before=v) for v in gone]
        out += [ComponentChange(kind=kind, name=name, after=v) for v in came]
    return tuple(out)


def member_name(product: str, version: str) -> str:
    """The bundle member holding a release's SBOM."""
    return f"{SBOM_PREFIX}{product}-{version}{SBOM_SUFFIX}"


@dataclass(frozen=True)
class Bom:
    """What a bundle carries of its jump's components: the to-release's SBOM (as the member
    ``member``) and the changes from the from-release."""

    member: str
    data: bytes
    changes: tuple[ComponentChange, ...]

    @classmethod
    def of_jump(
        cls, product: Product, jump: JumpSpec, trees: tuple[Mapping[str, TreeFile], ...], epoch: int
    ) -> Bom:
        """The SBOM and changes of ``jump`` (``trees``: its from- and to-release, walked)."""
        before = release_components(product, jump.from_version, trees[0])
        after = release_components(product, jump.to_version, trees[1])
        return cls(
            member_name(product.name, jump.to_version),
            document(product.name, jump.to_version, after, epoch),
            diff(before, after),
        )


def document(product: str, version: str, components: list[Component], epoch: int) -> bytes:
    """The CycloneDX 1.6 JSON SBOM of a release, validated against the schema.

    Raises:
        BuildError: the document does not validate (a bug in this module, not in the input).
    """
    from cyclonedx.contrib.license.factories import LicenseFactory
    from cyclonedx.model import Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component as CdxComponent
    from cyclonedx.model.component import ComponentType
    from cyclonedx.model.contact import OrganizationalEntity
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    root = CdxComponent(
        name=product, version=version, type=ComponentType.APPLICATION, bom_ref=f"{product}@{version}"
    )
    digest = hashlib.sha256(f"{product}\0{version}\0{epoch}".encode())
    parts: list[CdxComponent] = []
    refs: set[str] = set()
    for c in components:
        ref = c.purl if c.purl not in refs else f"{c.purl}#{c.path}"
        refs.add(ref)
        digest.update(f"\0{c.kind}\0{c.name}\0{c.version}\0{c.path}".encode())
        licenses = [LicenseFactory().make_from_string(c.license)] if c.license else []
        parts.append(
            CdxComponent(
                name=c.name,
                version=c.version,
                type=ComponentType.LIBRARY,
                bom_ref=ref,
                purl=PackageURL.from_string(c.purl),
                licenses=licenses,
                supplier=None,
                properties=[
                    Property(name="jumpkit:kind", value=c.kind),
                    Property(name="jumpkit:path", value=c.path),
                ],
            )
        )
    bom = Bom(serial_number=uuid.UUID(bytes=digest.digest()[:16], version=5))
    bom.metadata.timestamp = dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
    bom.metadata.component = root
    bom.metadata.tools.components.add(
        CdxComponent(name="jumpkit", version=__version__, type=ComponentType.APPLICATION,
                     supplier=OrganizationalEntity(name="jumpkit"))
    )  # fmt: skip
    for p in parts:
        bom.components.add(p)
    bom.register_dependency(root, parts)
    text = JsonV1Dot6(bom).output_as_string(indent=1)
    if (problem := validation_error(text)) is not None:
        raise BuildError(f"the SBOM of {product} {version} is not valid CycloneDX 1.6: {problem}")
    return text.encode() + b"\n"


def validation_error(text: str) -> str | None:
    """Why ``text`` is not a valid CycloneDX 1.6 JSON document (None: it is)."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    return None if error is None else str(error)[:300]
