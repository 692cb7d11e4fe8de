"""The upgrade-path site (issue 39), opened in a real headless Chromium (Debian's chromium
and chromium-driver, driven by selenium) from file://, with no network."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from installer.store import open_store
from tests.helpers import REPO, SPECS, build

JUMPS = [("3.4.2", "4.0.1"), ("4.0.1", "4.1.1"), ("4.1.1", "4.2.0")]
CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts"
"""Where the picker's screenshot is written (CI keeps it; git ignores it)."""
RESULTS = {
    "ok": False, "seconds": 41.0,
    "cells": ["build", "apply", "health", "version", "schema", "rollback", "exact"],
    "cases": [
        {"case": "4.0.1 -> 4.1.1", "cells": dict.fromkeys(
            ["build", "apply", "health", "version", "schema", "rollback", "exact"], "pass"),
         "failure": None, "seconds": 12.5},
        {"case": "4.1.1 -> 4.2.0", "cells": {"build": "pass", "apply": "pass", "health": "pass",
                                             "version": "pass", "schema": "pass", "rollback": "fail",
                                             "exact": "skip"},
         "failure": "rollback: <script>alert(1)</script> left var/x", "seconds": 9.0},
    ],
}  # fmt: skip


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def links_of(page: Path) -> list[str]:
    p = _Links()
    p.feed(page.read_text())
    return p.links


def resolves(page: Path, link: str, top: Path) -> bool:
    """A relative link of ``page`` names a file inside ``top``."""
    target = (page.parent / unquote(link.split("#", 1)[0])).resolve()
    return target.is_file() and target.is_relative_to(top.resolve())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> Path:
    """The demo product's site with the three bundles of 3.4.2 -> 4.2.0 and a test-jumps run."""
    work = tmp_path_factory.mktemp("site")
    p = build(
        "--specs", SPECS, "--from", "3.4.2", "--to", "4.2.0", "--key", keys["key"], "--out", work / "dist"
    )
    assert p.returncode == 0, p.stderr
    (work / "results.json").write_text(json.dumps(RESULTS))
    p = build("site", "--specs", SPECS, "--out", work / "site", "--dist", work / "dist",
              "--results", work / "results.json", "--trust", keys["pub"], "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["bundles"] == 3 and doc["problems"] == [], doc
    assert doc["files"] == [
        *(f"bundles/demo-manager-{a}-to-{b}.zip" for a, b in JUMPS),
        "data.js", "graph.svg", "index.html", *(f"jumps/{a}-to-{b}.html" for a, b in JUMPS), "picker.js",
        *(f"sbom/demo-manager-{v}.cdx.json" for v in ("3.4.2", "4.0.1", "4.1.1", "4.2.0")), "site.css",
    ]  # fmt: skip
    return work


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.is_file() and DRIVER.is_file(), "scripts/test installs chromium and chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    # no network: Chromium's background services would be refused (and slow the start)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,1400",
        "--host-resolver-rules=MAP * ~NOTFOUND"):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _pick(driver: object, frm: str, to: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "from")).select_by_value(frm)  # type: ignore[attr-defined]
    Select(driver.find_element(By.ID, "to")).select_by_value(to)  # type: ignore[attr-defined]


def test_the_picker_shows_the_path_with_each_bundles_size_and_sha256(site: Path, browser: object) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get((site / "site/index.html").as_uri())  # type: ignore[attr-defined]
    _pick(d, "3.4.2", "4.2.0")
    rows = d.find_elements(By.CSS_SELECTOR, "#path tbody tr.jump")  # type: ignore[attr-defined]
    assert [(r.get_attribute("data-from"), r.get_attribute("data-to")) for r in rows] == [
        ("3.4.2", "4.0.1"), ("4.0.1", "4.1.1"), ("4.1.1", "4.2.0")]  # fmt: skip
    headline = d.find_element(By.ID, "path-headline").text  # type: ignore[attr-defined]
    assert headline == "demo-manager 3.4.2 → 4.2.0: 3 jumps (required stop 4.0.1)"
    why = d.find_element(By.ID, "path-why").text  # type: ignore[attr-defined]
    assert "a major upgrade goes to 4.0.0, not 4.2.0" in why  # why the policy wants the stops
    for row, (a, b) in zip(rows, [("3.4.2", "4.0.1"), ("4.0.1", "4.1.1"), ("4.1.1", "4.2.0")], strict=True):
        bundle = site / f"dist/demo-manager-{a}-to-{b}.zip"
        data = bundle.read_bytes()
        assert row.find_element(By.CSS_SELECTOR, "code.sha256").text == hashlib.sha256(data).hexdigest()
        assert row.find_element(By.CSS_SELECTOR, ".size").get_attribute("data-bytes") == str(len(data))
        assert re.fullmatch(r"\d+(\.\d)? [kM]?B", row.find_element(By.CSS_SELECTOR, ".size").text)
        assert row.find_element(By.CSS_SELECTOR, "code.verify").text == f"bundle-install verify {bundle.name}"
        assert "at most" in row.find_element(By.CSS_SELECTOR, ".outage").text
    ARTIFACTS.mkdir(exist_ok=True)
    assert d.save_screenshot(str(ARTIFACTS / "site-picker.png"))  # type: ignore[attr-defined]
    # the graph lights the path: its three jumps and four versions
    on = d.find_elements(By.CSS_SELECTOR, "svg.graph .edge.on")  # type: ignore[attr-defined]
    assert sorted(e.get_attribute("data-jump") for e in on) == [
        "3.4.2->4.0.1",
        "4.0.1->4.1.1",
        "4.1.1->4.2.0",
    ]


def test_a_pick_the_policy_forbids_says_why(site: Path, browser: object) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get((site / "site/index.html").as_uri())  # type: ignore[attr-defined]
    _pick(d, "4.2.0", "3.4.2")
    text = d.find_element(By.ID, "path-error").text  # type: ignore[attr-defined]
    assert text.startswith("No upgrade path 4.2.0 → 3.4.2: 4.2.0 -> 3.4.2 is a downgrade"), text
    assert not d.find_elements(By.CSS_SELECTOR, "#path tr.jump")  # type: ignore[attr-defined]
    # a deep link picks for the reader (what support sends a customer)
    d.get((site / "site/index.html").as_uri() + "#from=4.0.1&to=4.2.0")  # type: ignore[attr-defined]
    rows = d.find_elements(By.CSS_SELECTOR, "#path tbody tr.jump")  # type: ignore[attr-defined]
    assert [r.get_attribute("data-from") for r in rows] == ["4.0.1", "4.1.1"]


def test_every_link_resolves_to_a_file_of_the_site_and_nothing_comes_from_the_network(
    site: Path, browser: object
) -> None:

    top = site / "site"
    pages = sorted(top.rglob("*.html"))
    assert len(pages) == 4  # the index and one page per jump
    for page in pages:
        for link in links_of(page):
            assert "://" not in link, f"{page.name}: {link} leaves the site"
            assert resolves(page, link, top), f"{page.name}: {link} names no file of the site"
    d = browser
    d.get((top / "index.html").as_uri())  # type: ignore[attr-defined]
    _pick(d, "3.4.2", "4.2.0")  # the links the script writes too
    hrefs = d.execute_script(  # type: ignore[attr-defined]  # the SVG's links too (an SVGAnimatedString)
        "return Array.from(document.querySelectorAll('a')).map(function (a) {"
        " return typeof a.href === 'string' ? a.href : new URL(a.href.baseVal, document.baseURI).href; })"
    )
    broken = [
        h for h in hrefs if urlparse(h).scheme != "file" or not Path(unquote(urlparse(h).path)).is_file()
    ]
    assert hrefs and not broken, broken
    for f in top.rglob("*"):  # no script, style, font or image is fetched from elsewhere
        text = f.read_text() if f.suffix in (".html", ".svg", ".css", ".js") else ""
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:[a-z]+:)?//""", text), f
        assert not re.search(r"url\(|@import|fetch\(|XMLHttpRequest|https?:", text if f.suffix != ".html" and
                             f.suffix != ".svg" else ""), f  # fmt: skip


def test_each_jump_page_has_notes_changes_bundles_and_its_test_matrix(site: Path) -> None:
    page = (site / "site/jumps/4.0.1-to-4.1.1.html").read_text()
    assert "Cluster endpoints move from tcp://host:port" in page  # the jump spec's notes
    assert "<li>Items gain an owner and a title (migrations 0003 and 0004).</li>" in page
    assert re.search(r"<td>-</td><td>six</td><td>python</td><td>1\.16\.0</td><td></td>", page)
    assert re.search(r"<td>~</td><td>idna</td><td>python</td><td>3\.7</td><td>3\.10</td>", page)
    assert page.count('<td class="pass">ok</td>') == 7
    failed = (site / "site/jumps/4.1.1-to-4.2.0.html").read_text()
    assert '<td class="fail">FAIL</td>' in failed and "&lt;script&gt;alert(1)&lt;/script&gt;" in failed
    assert "<script>alert" not in failed  # a failure's text is escaped like every other input
    index = (site / "site/index.html").read_text()
    assert '<span class="fail">failed</span>' in index and '<span class="pass">passed</span>' in index
    for v in ("3.4.2", "4.0.1", "4.1.1", "4.2.0"):
        doc = json.loads((site / f"site/sbom/demo-manager-{v}.cdx.json").read_text())
        assert doc["metadata"]["component"]["version"] == v
    svg = (site / "site/graph.svg").read_text()
    assert svg.count('class="node') == 4 and 'class="node stop"' in svg and 'class="edge exception"' in svg


def test_site_links_to_the_repositorys_targets_and_publish_uploads_it(
    site: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    url = repo.as_uri()
    assert build("repo", "init", "--repo", url, "--keys", tmp_path / "tuf").returncode == 0
    bundles = sorted((site / "dist").glob("*.zip"))
    p = build("publish", *bundles, "--repo", url, "--keys", tmp_path / "tuf")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "site"
    p = build("site", "--specs", SPECS, "--out", out, "--dist", tmp_path / "nothing", "--repo", url)
    assert p.returncode == 0, p.stderr
    assert not (out / "bundles").exists()  # the repository has them
    p = build("publish", "--repo", url, "--keys", tmp_path / "tuf", "--site", out)
    assert p.returncode == 0, p.stderr
    top = repo / "site"
    assert (top / "index.html").read_bytes() == (out / "index.html").read_bytes()
    data = (top / "data.js").read_text()
    assert data.count("../targets/") == 3
    for page in top.rglob("*.html"):
        for link in links_of(page):
            assert resolves(page, link, repo), f"{page}: {link} names no file of the repository"
    store = open_store(url)
    assert b"".join(store.read("site/graph.svg")).startswith(b"<svg")


def test_bad_input_ends_in_one_line_and_writes_nothing(site: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    p = build("site", "--specs", SPECS, "--out", mine)
    assert p.returncode == 2 and "is not a site bundle-build wrote" in p.stderr, p.stderr
    assert [x.name for x in mine.iterdir()] == ["notes.txt"]
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    p = build("site", "--specs", SPECS, "--out", tmp_path / "new", "--results", bad)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "not the JSON of 'bundle-build test-jumps --json'" in p.stderr
    assert not (tmp_path / "new").exists()
    shutil.rmtree(tmp_path / "new", ignore_errors=True)
