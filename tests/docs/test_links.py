"""The README's and docs/'s links lead somewhere: a relative link to a file or folder of the
repository that exists, and its #anchor to a heading of that page."""

from __future__ import annotations

import pytest
from helpers import REPO
from helpers.markdown import PAGES, anchors, links


def test_the_docs_have_a_page_for_each_topic_and_the_readme_is_a_front_page() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "index.md", "installing.md", "scaling.md", "lazyconfig.md"} <= names
    assert {"training.md", "failures.md", "solver.md", "tools.md", "config-keys.md"} <= names
    assert "own-code.md" in names
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_link_resolves(page) -> None:
    broken = []
    for line, target in links(page):
        if target.startswith(("http://", "https://", "mailto:")):
            continue  # no network here
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{page.name}:{line}: {target}: no such file")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{page.name}:{line}: {target}: no heading #{anchor} there")
    assert broken == []


def test_every_page_of_the_docs_is_linked_from_the_index() -> None:
    index = REPO / "docs" / "index.md"
    linked = {(index.parent / target.partition("#")[0]).resolve() for _, target in links(index)}
    pages = [page for page in PAGES if page.parent == index.parent and page != index]
    assert [page.name for page in pages if page not in linked] == []
