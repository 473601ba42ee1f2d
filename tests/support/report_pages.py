"""Stage HTML read as a browser would (html.parser, not regexes): what every stage's page must
be (tests/test_report_html.py on synthetic notebooks, tests/test_notebooks.py on a real run)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path


class Page(HTMLParser):
    """The elements of a page: the first element inside <body>, every element's classes, the
    parameter tables and the visible text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.in_body = False
        self.first: tuple[str, dict[str, str]] | None = None
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.in_body = True
        elif self.in_body:
            self.elements.append((tag, attributes))
            if self.first is None:
                self.first = (tag, attributes)

    def handle_data(self, data: str) -> None:
        if self.in_body and data.strip() and self.first is None:
            self.first = ("#text", {"text": data.strip()})
        self.text.append(data)

    def classes(self) -> set[str]:
        return {c for _, a in self.elements for c in a.get("class", "").split()}

    def count(self, tag: str, cls: str) -> int:
        return sum(1 for t, a in self.elements if t == tag and cls in a.get("class", "").split())


def check_stage_html(path: Path) -> Page:
    """What every stage's HTML must be: it opens with its verdict block, and shows no input
    cell and no stderr output."""
    page = Page(path.read_text(encoding="utf-8"))
    assert page.first is not None, f"{path.name}: empty body"
    tag, attributes = page.first
    assert (tag, attributes.get("class")) == ("section", "verdict"), f"{path.name}: {page.first}"
    classes = page.classes()
    assert not classes & {"input", "input_area", "jp-InputArea", "input_prompt"}, path.name
    assert not classes & {"output_stderr"}, f"{path.name}: stderr output shown"
    assert page.count("details", "parameters") <= 1, f"{path.name}: parameters twice"
    return page
