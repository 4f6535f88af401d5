"""Report rendering: ``report.json`` -> ``report.md`` (markdown) -> ``report.html`` (that markdown as HTML).

The markdown is built from blocks (``(kind, payload)``: ``h1``, ``h2``, ``list``, ``table``, ``text``, ``images``,
``plots``) that the report's sections return; the HTML page is the same markdown rendered by markdown-it-py
(CommonMark + tables, raw HTML off, so a path or class name in a cell is shown, never run), every image embedded as
a data URI so that the page is one file, and long lines (paths, commands) wrapped instead of running off the page.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from evaluation.report.tables import md_table

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;"
    "overflow-wrap:anywhere}"
    "table{border-collapse:collapse;display:block;overflow-x:auto;max-width:100%}"
    "td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top}"
    "code{background:#f4f4f4;padding:0 2px;white-space:pre-wrap;overflow-wrap:anywhere}"
    "pre{white-space:pre-wrap;overflow-wrap:anywhere}img{max-width:100%}"
)


def blocks_to_markdown(blocks: list[tuple[str, Any]]) -> str:
    """The markdown text of ``(kind, payload)`` blocks; ``images`` / ``plots`` are relative links to PNG files."""
    md: list[str] = []
    for kind, payload in blocks:
        if kind == "h1":
            md.append(f"# {payload}\n")
        elif kind == "h2":
            md.append(f"## {payload}\n")
        elif kind == "list":
            md.append("\n".join(f"- {x}" for x in payload) + "\n")
        elif kind == "table":
            md.append(md_table(*payload) + "\n")
        elif kind in ("plots", "images"):
            md.append("\n".join(f"![{p}]({p})" for p in payload) + "\n")
        else:
            md.append(payload + "\n")
    return "\n".join(md)


def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def html_page(markdown: str, out: Path, images: list[str], *, title: str = "selfsup report") -> str:
    """``markdown`` (a ``report.md``) as one self-contained HTML page; ``images`` (PNG names in ``out``) linked
    from it are embedded as data URIs."""
    for name in images:
        data = base64.b64encode((out / name).read_bytes()).decode()
        markdown = markdown.replace(f"![{name}]({name})", f"![{name}](data:image/png;base64,{data})")
    body = _markdown().render(markdown)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")
