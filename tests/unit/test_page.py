"""The stats page's files: what proxyd.admin.page serves for which path, and the rules the page
keeps so that it works under `Content-Security-Policy: default-src 'self'` with no CDN."""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from proxyd.admin import page

ROOT = Path(__file__).resolve().parents[2]
PAGE_DIR = ROOT / "proxyd" / "admin" / "page"


class _Tags(HTMLParser):
    """The start tags of a document with their attributes, and the text inside <script> and
    <style> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._inside: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._inside = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == self._inside:
            self._inside = None

    def handle_data(self, data: str) -> None:
        if self._inside is not None and data.strip():
            self.inline.append(data)


def _index() -> _Tags:
    found = page.asset("/")
    assert found is not None
    parser = _Tags()
    parser.feed(found[1].decode())
    return parser


def test_root_is_the_html_page() -> None:
    found = page.asset("/")
    assert found is not None
    content_type, body = found
    assert content_type == b"text/html; charset=utf-8"
    assert body.startswith(b"<!doctype html>")
    assert body == (PAGE_DIR / "index.html").read_bytes()


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("stats.js", b"text/javascript; charset=utf-8"),
        ("stats.css", b"text/css; charset=utf-8"),
        ("favicon.svg", b"image/svg+xml"),
        ("index.html", b"text/html; charset=utf-8"),
    ],
)
def test_assets_are_served_under_stats_with_their_type(name: str, content_type: bytes) -> None:
    assert page.asset(f"/stats/{name}") == (content_type, (PAGE_DIR / name).read_bytes())


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/index.html",
        "/stats.js",
        "/stats/",
        "/stats",
        "/stats/missing.js",
        "/stats/../page.py",
        "/stats/..%2fpage.py",
        "/stats//stats.js",
        "/stats/./stats.js",
        "/stats/stats.js/",
        "/stats/STATS.JS",
        "/api/v1/status",
        "/metrics",
    ],
)
def test_other_paths_are_not_assets(path: str) -> None:
    assert page.asset(path) is None


def test_every_file_the_page_links_is_served_from_proxyd() -> None:
    linked = [
        attrs.get("src") or attrs.get("href")
        for tag, attrs in _index().tags
        if tag in ("script", "link")
    ]
    assert sorted(linked) == ["stats/favicon.svg", "stats/stats.css", "stats/stats.js"]
    for link in linked:
        assert page.asset(f"/{link}") is not None, link


def test_page_has_no_inline_script_or_style() -> None:
    """`default-src 'self'` refuses inline scripts, style elements and style attributes, and
    event-handler attributes."""
    index = _index()
    assert index.inline == []
    for tag, attrs in index.tags:
        assert "style" not in attrs, tag
        assert not [name for name in attrs if name.startswith("on")], tag
        if tag == "script":
            assert attrs.get("src"), "a script without src is inline"


@pytest.mark.parametrize("name", ["index.html", "stats.js", "stats.css", "favicon.svg"])
def test_nothing_is_loaded_from_elsewhere(name: str) -> None:
    text = (PAGE_DIR / name).read_text()
    # The SVG namespace is a name, not something fetched.
    text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text), name


def test_script_never_turns_data_into_html() -> None:
    script = (PAGE_DIR / "stats.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    for risky in ("new Function", 'setTimeout("', "setInterval("):
        assert risky not in script, risky


def test_script_polls_the_status_and_changes_servers_as_the_api_says() -> None:
    script = (PAGE_DIR / "stats.js").read_text()
    assert 'STATUS_URL = "api/v1/status"' in script
    assert "const POLL_MS = 2000;" in script
    assert "AbortController" in script
    assert "sessionStorage" in script
    assert (
        '"api/v1/pools/" + encodeURIComponent(pool) + "/servers/" + encodeURIComponent(server)'
        in script
    )


def test_page_is_accessible_without_a_script_and_to_screen_readers() -> None:
    index = _index()
    tags = [tag for tag, _ in index.tags]
    assert "noscript" in tags
    banner = next(attrs for tag, attrs in index.tags if attrs.get("id") == "banner")
    assert banner.get("aria-live") == "assertive"
    assert banner.get("role") == "alert"
    headers = [attrs for tag, attrs in index.tags if tag == "th"]
    assert headers
    assert all(attrs.get("scope") == "col" for attrs in headers)
    label = next(attrs for tag, attrs in index.tags if tag == "label")
    assert label.get("for") == "token"
    html = next(attrs for tag, attrs in index.tags if tag == "html")
    assert html.get("lang") == "en"


def test_every_page_file_ships_in_the_package() -> None:
    """A file the package-data patterns miss would be absent from an installed proxyd."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["proxyd.admin"]
    for file in PAGE_DIR.iterdir():
        assert any(file.match(pattern) for pattern in patterns), file.name
        assert page.asset(f"/stats/{file.name}") is not None, file.name
