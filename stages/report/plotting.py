"""matplotlib plumbing for the report: figures without pyplot, PNG data URIs, phase bands, labels.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly, so the report never
touches pyplot's global state or the user's backend. PNGs are written without the `Software`
metadata chunk, so the same inputs give the same bytes. Labels stay in the fonts matplotlib ships
(DejaVu Sans covers Latin, Greek and the usual symbols); a CJK font is used when one is installed,
and otherwise CJK characters in names (a Chinese task or bucket name) are shown as `\\uXXXX` escapes
rather than as empty boxes.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from stages.report.html import Figure

DPI = 100
WIDTH_IN = 11.0
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
             "Microsoft YaHei", "PingFang SC", "SimHei", "Droid Sans Fallback")
PHASE_FILL = ("#eef2f8", "#ffffff")
MAX_PHASE_BANDS = 40  # more phase changes than this (a cycling schedule) would only hide the curves


@functools.cache
def cjk_font() -> str | None:
    """The first installed CJK font family, or None (the common case on a bare server)."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def label(text: object) -> str:
    """`text` as a matplotlib label: unchanged, or with CJK characters escaped when no CJK font exists."""
    text = str(text)
    if cjk_font() is not None or all(ord(ch) < 0x2E80 for ch in text):
        return text
    return "".join(ch if ord(ch) < 0x2E80 else f"\\u{ord(ch):04x}" for ch in text)


def _rc() -> dict:
    family = ["DejaVu Sans"] + ([cjk_font()] if cjk_font() else [])
    return {"font.family": family, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
            "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
            "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.4, "svg.hashsalt": "vla",
            "axes.prop_cycle": matplotlib.cycler(color=matplotlib.colormaps["tab10"].colors)}


@contextmanager
def figure(rows: int, cols: int = 1, *, height_per_row: float = 2.4, width: float = WIDTH_IN, sharex: bool = False,
           left: float = 0.75, right: float = 0.3, legend: bool = False) -> Iterator[tuple[MplFigure, np.ndarray]]:
    """A fresh figure and its axes ([rows, cols] array), with the report's style.

    Margins are fixed in inches (`left`, `right`; `legend` reserves room for a legend outside the
    axes on the right) rather than computed by a layout engine: constrained layout doubled the time
    to render a figure, and the report draws a few dozen of them.
    """
    right = max(right, 1.9) if legend else right
    # inches: title room, x-label room, between panels (less when only the bottom row has x labels)
    top, bottom, gap_h, gap_w = 0.32, 0.5, 0.45 if sharex else 0.8, 0.7
    height = height_per_row * rows + 0.5
    with matplotlib.rc_context(_rc()):
        fig = MplFigure(figsize=(width, height), dpi=DPI)
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, sharex=sharex, squeeze=False)
        axes_h = (height - top - bottom - gap_h * (rows - 1)) / rows
        axes_w = (width - left - right - gap_w * (cols - 1)) / cols
        fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                            hspace=gap_h / axes_h, wspace=gap_w / axes_w)
        yield fig, axes


def to_figure(fig: MplFigure, fig_id: str, caption: str) -> Figure:
    """Render `fig` to a PNG data URI (deterministic bytes) wrapped as an HTML figure."""
    buf = io.BytesIO()
    with matplotlib.rc_context(_rc()):
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    width, height = (int(round(v)) for v in fig.get_size_inches() * DPI)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return Figure(id=fig_id, uri=uri, caption=caption, width=width, height=height)


def colours(n: int) -> list:
    """`n` distinguishable colours (tab10, then tab20 for more series)."""
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def points(n: int) -> dict:
    """Line style for a series of `n` logged points: markers when they are few (one point draws no line)."""
    return {"marker": "o", "markersize": 3} if n <= 30 else {}


def finite(values: Sequence[float | None]) -> np.ndarray:
    """float64 array with None as NaN."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def use_log(ax, *series: np.ndarray) -> None:
    """Log y when every finite value is positive and they span more than a decade."""
    values = np.concatenate([s[np.isfinite(s)] for s in series]) if series else np.array([])
    if values.size and values.min() > 0 and values.max() / values.min() > 10:
        ax.set_yscale("log")


def shade_phases(ax, spans: Sequence[tuple[str, float, float]], *, names: bool = True) -> None:
    """Alternate background bands for schedule phases, each named at the top of the axes."""
    if (len(spans) < 2 and not names) or len(spans) > MAX_PHASE_BANDS:
        return
    transform = ax.get_xaxis_transform()
    for i, (name, start, end) in enumerate(spans):
        ax.axvspan(start, end, color=PHASE_FILL[i % 2], zorder=0, linewidth=0)
        if i:
            ax.axvline(start, color="#9aa5b8", linewidth=0.8, linestyle=":", zorder=1)
        if names:
            ax.text((start + end) / 2, 0.98, label(name), transform=transform, ha="center", va="top", fontsize=8,
                    color="#4b5563", clip_on=True)


def legend_right(ax, max_entries: int = 14) -> None:
    """Legend outside the axes on the right; long lists are cut with a note."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if len(handles) > max_entries:
        handles, labels = handles[:max_entries], labels[:max_entries - 1] + [f"... (+{len(labels) - max_entries + 1})"]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)


def log10_safe(values: np.ndarray) -> np.ndarray:
    out = np.full(values.shape, np.nan)
    ok = np.isfinite(values) & (values > 0)
    out[ok] = np.log10(values[ok])
    return out
