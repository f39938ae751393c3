"""HTML building blocks of the run report: escaping, numbers, tables, figures and the page itself.

The page is self-contained: one file, inline CSS, figures as `data:image/png;base64` URIs, no script,
no external font, stylesheet or image, so it opens offline and can be mailed or attached to a CI run.
Headings are Chinese (the page is user-facing); metric names appear exactly as the artifacts spell
them, so that a reader can grep the JSON for what the page shows.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

MISSING = "—"


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def num(value: Any, digits: int = 4) -> str:
    """A number as the page prints it: `digits` significant digits, integers as they are, None as —."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return MISSING
        return f"{value:.{digits}g}"
    return str(value)


def pct(value: float | None, digits: int = 1) -> str:
    """A rate in [0, 1] as a percentage (None as —)."""
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{100.0 * value:.{digits}f}%"


@dataclass
class Cell:
    """A table cell with an optional CSS class (pass / fail / skipped / num / muted) and a tooltip."""

    text: str
    cls: str = ""
    title: str = ""
    raw: bool = False  # text is already HTML

    def render(self, tag: str = "td") -> str:
        attrs = f' class="{esc(self.cls)}"' if self.cls else ""
        attrs += f' title="{esc(self.title)}"' if self.title else ""
        body = self.text if self.raw else esc(self.text)
        return f"<{tag}{attrs}>{body}</{tag}>"


def _cell(value: Any) -> Cell:
    if isinstance(value, Cell):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Cell(num(value), "num")
    if value is None:
        return Cell(MISSING, "muted")
    return Cell(str(value))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "", caption: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v).render() for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    klass = f' class="{esc(cls)}"' if cls else ""
    return f"<table{klass}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column key/value table (keys as row headers)."""
    body = "".join(f"<tr><th>{esc(k)}</th>{_cell(v).render()}</tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def para(text: str, cls: str = "") -> str:
    klass = f' class="{esc(cls)}"' if cls else ""
    return f"<p{klass}>{esc(text)}</p>"


def missing(text: str) -> str:
    """The one line a section shows when its artifact is not in the run directory."""
    return f'<p class="missing">{esc(text)}</p>'


@dataclass
class Figure:
    """One embedded plot: `uri` is a data: URI (PNG)."""

    id: str
    uri: str
    caption: str
    width: int
    height: int

    def render(self) -> str:
        return (f'<figure id="fig-{esc(self.id)}"><img class="plot" data-fig="{esc(self.id)}" src="{self.uri}" '
                f'width="{self.width}" height="{self.height}" alt="{esc(self.caption)}">'
                f"<figcaption>{esc(self.caption)}</figcaption></figure>")


@dataclass
class Section:
    """One section of the page. `status` is `ok`, `partial` or `missing` (its artifact was not found)."""

    id: str
    title: str
    body: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    status: str = "ok"
    children: list[Section] = field(default_factory=list)

    def add(self, *parts: str) -> None:
        self.body.extend(parts)

    def figure(self, fig: Figure | None) -> None:
        """Embed `fig` at the current position (None: nothing to plot, nothing added)."""
        if fig is not None:
            self.figures.append(fig)
            self.body.append(fig.render())

    def all_figures(self) -> list[Figure]:
        return self.figures + [f for c in self.children for f in c.all_figures()]

    def render(self, level: int = 2) -> str:
        inner = "".join(self.body) + "".join(c.render(level + 1) for c in self.children)
        return (f'<section id="{esc(self.id)}" data-status="{esc(self.status)}">'
                f"<h{level}>{esc(self.title)}</h{level}>{inner}</section>")


CSS = """
:root { --fg: #1d2330; --muted: #6b7280; --line: #d9dde5; --bg: #ffffff; --band: #f5f7fa;
        --pass: #e3f5e8; --pass-fg: #15652f; --fail: #fde4e4; --fail-fg: #a11d1d; --skip: #fff4d6; --skip-fg: #7a5a00; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: var(--bg); line-height: 1.5;
       font-family: system-ui, -apple-system, "Segoe UI", "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei",
                    "Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", Roboto, Arial, sans-serif; }
header { padding: 20px 32px 12px; border-bottom: 1px solid var(--line); background: var(--band); }
header h1 { margin: 0 0 4px; font-size: 24px; }
header .sub { color: var(--muted); font-size: 13px; }
nav { padding: 8px 32px; border-bottom: 1px solid var(--line); font-size: 14px; }
nav a { margin-right: 16px; color: #1f5fbf; text-decoration: none; white-space: nowrap; }
nav a.missing { color: var(--muted); }
main { padding: 8px 32px 48px; max-width: 1280px; }
section { margin-top: 20px; }
h2 { font-size: 20px; border-bottom: 2px solid var(--line); padding-bottom: 4px; margin: 28px 0 10px; }
h3 { font-size: 17px; margin: 22px 0 8px; }
h4 { font-size: 15px; margin: 16px 0 6px; color: #374151; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
caption { text-align: left; color: var(--muted); padding-bottom: 4px; white-space: nowrap; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
thead th { background: var(--band); }
table.kv th { background: var(--band); font-weight: 600; white-space: nowrap; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; }
td.pass, td.fail, td.skipped { white-space: nowrap; }
td.pass { background: var(--pass); color: var(--pass-fg); font-weight: 600; }
td.fail { background: var(--fail); color: var(--fail-fg); font-weight: 600; }
td.skipped { background: var(--skip); color: var(--skip-fg); font-weight: 600; }
td.muted, .muted { color: var(--muted); }
p.missing { color: var(--muted); font-style: italic; margin: 6px 0; }
p.badge { display: inline-block; padding: 4px 10px; border-radius: 4px; font-weight: 600; margin: 6px 0; }
p.badge.pass { background: var(--pass); color: var(--pass-fg); }
p.badge.fail { background: var(--fail); color: var(--fail-fg); }
ul.signals li { margin: 4px 0; }
ul.signals li.warn::marker { color: #c2410c; }
ul.signals li.ok::marker { color: #15803d; }
div.row { display: flex; gap: 28px; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; }
code { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 12px; background: var(--band); padding: 0 3px; }
footer { color: var(--muted); font-size: 12px; padding: 16px 32px; border-top: 1px solid var(--line); }
"""


def _missing_cls(section: Section) -> str:
    return ' class="missing"' if section.status == "missing" else ""


def page(title: str, subtitle: str, sections: Sequence[Section], footer: str) -> str:
    """The whole document: header, table of contents, sections, footer."""
    nav = "".join(f'<a href="#{esc(s.id)}"{_missing_cls(s)}>{esc(s.title)}</a>' for s in sections)
    body = "".join(s.render() for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f'<body><header><h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div></header>'
        f"<nav>{nav}</nav><main>{body}</main><footer>{esc(footer)}</footer></body></html>\n"
    )
