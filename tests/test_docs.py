"""README.md is the manual's front page and docs/ the rest: links resolve, nothing points outside
the repository, and the lines CI and other pages rely on stay."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_keeps_the_two_commands_and_the_python_api():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make demo    # set up .venv, then the whole pipeline on the built-in synthetic data\n" in text
    assert "make test    # set up .venv, then the test suite" in text
    api = text.split("\n## Python API\n", 1)
    assert len(api) == 2, "README.md has no '## Python API' section"
    assert "```python\nimport dynamicdet_cli as dd\n" in api[1].split("\n## ", 1)[0]  # run by test_bad_inputs_2


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert REPO in dest.parents or dest == REPO, f"{page.name}: {target} points outside the repository"
        assert dest.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in _anchors(dest), f"{page.name}: {target}: no heading with that anchor in {dest.name}"
    assert "../shared" not in text, f"{page.name} points at a file outside the repository"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    unlinked = [p.name for p in PAGES[1:] if f"](docs/{p.name})" not in readme]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
