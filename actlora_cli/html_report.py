"""A report's Markdown as one self-contained HTML page, written beside it: the same text and tables (rendered
by markdown-it, already here as rich's Markdown parser), its PNG charts inline as base64 data URIs and the
style inline, so the page opens offline, can be mailed as one file, and fetches nothing. Links are kept as
their text: a report page links nowhere."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from .artifacts import atomic_write_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1f24;
       max-width: 1180px; margin: 2em auto; padding: 0 1.5em; }
h1, h2, h3 { line-height: 1.2; margin: 1.4em 0 0.5em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; } h3 { font-size: 1.1em; }
/* a table wider than the page scrolls sideways (its headers wrap first) */
table { border-collapse: collapse; margin: 0.8em 0 1.2em; font-size: 13px; display: block; overflow-x: auto;
        max-width: 100%; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; white-space: normal; vertical-align: bottom; }
th:first-child, td:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; border: 1px solid #eaeef2; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f3f5f7; padding: 1px 4px; }
footer { margin-top: 3em; color: #656d76; font-size: 12px; }
"""


def _parser():
    from markdown_it import MarkdownIt

    # commonmark with GitHub's tables; raw HTML in the Markdown is shown as text, never passed through
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def _inline_image(token, folder: Path) -> bool:
    """Point an image token at its PNG's bytes (a data URI); False when there is no such PNG beside the
    report (the token is then shown as its alt text)."""
    src = token.attrGet("src") or ""
    path = folder / src
    if "/" in src or "\\" in src or not src.endswith(".png") or not path.is_file():
        return False
    data = path.read_bytes()
    if not data.startswith(PNG_MAGIC):
        return False
    token.attrSet("src", "data:image/png;base64," + base64.b64encode(data).decode("ascii"))
    return True


def render(markdown: str, folder: Path, title: str) -> str:
    """The HTML page of ``markdown``, whose images are PNG files named relative to ``folder``; titled by its
    first top-level heading, else by ``title`` (then shown as the page's heading too)."""
    from markdown_it.token import Token

    parser = _parser()
    tokens = parser.parse(markdown)
    heading = next((i for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h1"), None)
    if heading is not None:
        title = tokens[heading + 1].content
    for block in tokens:
        if block.type != "inline" or not block.children:
            continue
        children = []
        for token in block.children:
            if token.type in ("link_open", "link_close"):
                continue  # keep the link's text, drop the address
            if token.type == "image" and not _inline_image(token, folder):
                token = Token("text", "", 0, content=token.content)  # its alt text
            children.append(token)
        block.children = children
    body = parser.renderer.render(tokens, parser.options, {})
    if heading is None:
        body = f"<h1>{html.escape(title)}</h1>\n{body}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}"
        f"<footer>{html.escape(title)}: rendered by actlora from the Markdown beside this page.</footer>\n"
        "</body>\n</html>\n"
    )


def write(md_path: Path, markdown: str, title: str | None = None) -> Path:
    """Write ``<md_path stem>.html`` beside ``md_path`` (atomically) from ``markdown``; returns its path."""
    md_path = Path(md_path)
    page = md_path.with_suffix(".html")
    atomic_write_text(page, render(markdown, md_path.parent, title or md_path.stem))
    return page
