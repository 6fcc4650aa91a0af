"""The manual holds together: relative links resolve, the layout map names every package, the README is short."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "benchmarks" / "README.md",
                ROOT / "docker" / "README.md", ROOT / "tasks" / "README.md"])
PACKAGE_ROOTS = ("event_service", "payload_runner", "plugins")
README_LINES = (150, 260)

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s()]+(?:\([^\s()]*\)[^\s()]*)*)"
                         r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=[\"']([^\"']+)[\"']", re.IGNORECASE)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)  # http:, https:, mailto:, any scheme


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, with their 1-based numbers."""
    lines: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation but '-' and '_' dropped, spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page offers: its headings' slugs (repeats numbered -1, -2, … as GitHub does) and HTML ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[tuple[int, str]]:
    """The page's links to files of the repository (external ones and links inside code are left out)."""
    links: list[tuple[int, str]] = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        if (match := REFERENCE_LINK.match(line)) is not None:
            targets.append(match.group(1))
        for target in targets:
            target = target.strip("<>")
            if target and not EXTERNAL.match(target):
                links.append((number, target))
    return links


def shown(path: Path) -> str:
    """A path as the repository names it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_link(page: Path, target: str) -> str | None:
    """Why a relative link does not resolve, or None when it does."""
    path_part, _, anchor = target.partition("#")
    dest = (page.parent / path_part).resolve() if path_part else page
    if not dest.exists():
        return f"{target}: no such file ({shown(dest)})"
    if anchor:
        if not dest.is_file() or dest.suffix != ".md":
            return f"{target}: an anchor into something that is not a Markdown file"
        if anchor not in anchors(dest):
            return f"{target}: {shown(dest)} has no heading with the anchor #{anchor}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=shown)
def test_relative_links_resolve(page: Path) -> None:
    assert page.is_file(), f"{shown(page)} is missing"
    broken = [f"line {number}: {why}" for number, target in relative_links(page)
              if (why := broken_link(page, target)) is not None]
    assert broken == [], f"{shown(page)}: broken links:\n" + "\n".join(broken)


def layout_map() -> str:
    """The fenced block under the README's "Layout" heading."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines)
                  if (m := HEADING.match(line)) and m.group(2).strip().lower() == "layout"), None)
    assert start is not None, "README.md has no Layout heading"
    block: list[str] = []
    inside = False
    for line in lines[start + 1:]:
        if FENCE.match(line):
            if inside:
                return "\n".join(block)
            inside = True
        elif inside:
            block.append(line)
        elif HEADING.match(line):
            break
    raise AssertionError("README.md: no fenced block under the Layout heading")


def packages() -> list[Path]:
    """Every directory under the package roots that holds an __init__.py (the roots included)."""
    found: list[Path] = []
    for name in PACKAGE_ROOTS:
        for folder, subfolders, files in os.walk(ROOT / name):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith((".", "__")))
            if "__init__.py" in files:
                found.append(Path(folder))
    return found


def indent(line: str) -> int:
    """The number of spaces a line starts with."""
    return len(line) - len(line.lstrip(" "))


def entry_scope(lines: list[str], start: int) -> list[str]:
    """An entry of the map and what belongs to it: its line and the lines after it indented deeper."""
    scope = [lines[start]]
    for line in lines[start + 1:]:
        if line.strip() and indent(line) <= indent(lines[start]):
            break
        scope.append(line)
    return scope


def names(text: str, folder: str) -> bool:
    """Whether the text names a folder as ``folder/`` (not as the tail of a longer name)."""
    return re.search(rf"(?<![\w.-]){re.escape(folder)}/", text) is not None


def misplaced(package: Path, lines: list[str]) -> str | None:
    """Why the map does not name a package at its place, or None when it does.

    Its root must be an entry of the map's top level; each folder below it is named inside its parent's part of
    the map: as an entry of its own (``  api/  …``, whose deeper-indented lines then become the place to look),
    or in the parent's description (``… monitor/ (the page and its JSON) …``)."""
    root, *below = package.relative_to(ROOT).parts
    top = min((indent(line) for line in lines if line.strip()), default=0)
    start = next((i for i, line in enumerate(lines)
                  if line.strip() and indent(line) == top and line.split()[0] == f"{root}/"), None)
    if start is None:
        return f"{root}/ is not an entry at the top of the map"
    scope, place = entry_scope(lines, start), f"{root}/"
    for folder in below:
        entry = next((i for i, line in enumerate(scope) if i > 0 and line.split()[:1] == [f"{folder}/"]), None)
        if entry is not None:
            scope = entry_scope(scope, entry)
        elif not names("\n".join(scope), folder):
            return f"{folder}/ is not named in the part of the map for {place}"
        place = f"{place}{folder}/"
    return None


def test_layout_map_names_every_package() -> None:
    lines = layout_map().splitlines()
    found = packages()
    assert {p.relative_to(ROOT).parts[0] for p in found} == set(PACKAGE_ROOTS)
    wrong = [f"{shown(p)}: {why}" for p in found if (why := misplaced(p, lines)) is not None]
    assert wrong == [], "README.md's layout map does not name these packages at their place:\n" + "\n".join(wrong)


def test_layout_check_wants_each_package_at_its_place() -> None:
    sample = ["event_service/   the core",
              "  api/           the app: routes/,",
              "                 the client; monitor/ (the page)",
              "  merge/         the merge; panda/",
              "payload_runner/  the worker; payloads/"]
    assert misplaced(ROOT / "event_service" / "api" / "routes", sample) is None
    assert misplaced(ROOT / "event_service" / "api" / "monitor", sample) is None
    assert misplaced(ROOT / "payload_runner" / "payloads", sample) is None
    assert misplaced(ROOT / "event_service" / "api" / "panda", sample) == (
        "panda/ is not named in the part of the map for event_service/api/")
    assert misplaced(ROOT / "event_service" / "stores", sample) == (
        "stores/ is not named in the part of the map for event_service/")
    assert misplaced(ROOT / "plugins", sample) == "plugins/ is not an entry at the top of the map"


def test_readme_is_short() -> None:
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    low, high = README_LINES
    assert low <= lines <= high, f"README.md has {lines} lines; keep it between {low} and {high} (the rest: docs/)"
