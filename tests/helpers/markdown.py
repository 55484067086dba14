"""The README's and docs/'s Markdown as the tests read it: code blocks with the marker before
each, links, and headings' anchors (GitHub's rules)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from helpers import REPO

DOCS = REPO / "docs"
# The Markdown files whose code blocks and links the tests check: the README, then docs/.
PAGES = (REPO / "README.md", *sorted(DOCS.glob("*.md")))

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*([a-z ]+?)\s*(?::\s*(.*?))?\s*-->\s*$")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_EXITS = re.compile(r"\s+#\s*exits\s+(\d+)\s*$")


@dataclass
class Block:
    """A fenced code block: its page, first line (the fence's), language, text, and the
    ``<!-- name: value -->`` marker on the line before it, if any."""

    page: Path
    line: int
    lang: str
    text: str
    marker: str = ""
    marker_value: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


@dataclass
class Command:
    """A shell command of a block: its environment assignments, words, the exit status it is
    shown with, and the output lines shown after it (console blocks)."""

    env: dict[str, str]
    words: list[str]
    exit_status: int = 0
    expected: list[str] = field(default_factory=list)


def blocks(page: Path) -> list[Block]:
    """The page's fenced code blocks, in order."""
    lines = page.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{page}:{start + 1}: code block not closed")
        marker = _MARKER.match(lines[start - 1]) if start > 0 else None
        found.append(
            Block(
                page,
                start + 1,
                match.group(1),
                "\n".join(body) + "\n",
                marker.group(1) if marker else "",
                (marker.group(2) or "") if marker else "",
            )
        )
        i += 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page)]


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    joined, pending = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    if pending:
        joined.append(pending)
    return joined


def _command(line: str) -> Command:
    exits = _EXITS.search(line)
    status = int(exits.group(1)) if exits else 0
    words = shlex.split(line, comments=True)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return Command(env, words, status)


def commands(block: Block) -> list[Command]:
    """The commands of a ``sh`` block (one a line, ``#`` comments) or a ``console`` block (after
    ``$ ``, each followed by the output it is shown with)."""
    found: list[Command] = []
    for line in _logical_lines(block.text):
        if block.lang == "console":
            if line.startswith("$ "):
                found.append(_command(line[2:]))
            elif found and line.strip():
                found[-1].expected.append(line.rstrip())
            continue
        if line.strip() and not line.lstrip().startswith("#"):
            found.append(_command(line))
    return [command for command in found if command.words]


def output_block(page_blocks: list[Block], block: Block) -> Block | None:
    """The ``<!-- output -->`` block right after ``block``, if there is one."""
    index = page_blocks.index(block)
    if index + 1 < len(page_blocks) and page_blocks[index + 1].marker == "output":
        return page_blocks[index + 1]
    return None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than - and _ dropped,
    spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _prose_lines(page: Path) -> list[str]:
    """The page's lines, with code blocks blanked (so line numbers stay)."""
    lines = page.read_text().splitlines()
    in_code = False
    for number, line in enumerate(lines):
        if _FENCE.match(line):
            in_code = not in_code
            lines[number] = ""
        elif in_code:
            lines[number] = ""
    return lines


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, duplicates numbered as GitHub does."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in _prose_lines(page):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        number = counts.get(base, 0)
        counts[base] = number + 1
        found.add(base if number == 0 else f"{base}-{number}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of each link and image outside code blocks and inline code."""
    prose = "\n".join(re.sub(r"`[^`]*`", "", line) for line in _prose_lines(page))
    return [
        (prose.count("\n", 0, match.start()) + 1, match.group(1) or match.group(2))
        for match in _LINK.finditer(prose)
    ]
