"""Data-quality figures: findings per cleaning rule, and clock offsets / residuals per stream."""

from __future__ import annotations

import numpy as np

from stages.report.html import Figure
from stages.report.plotting import figure, finite, label, legend_right, to_figure

ACTION_COLOURS = {"fix": "#4c78a8", "mask": "#f2a541", "drop": "#d64545", "flag": "#9aa5b8"}


def clean_rules_figure(report: dict, fig_id: str) -> Figure | None:
    """Horizontal bars: findings per rule id, stacked by the action taken (fix / mask / drop / flag)."""
    counts = report["counts"]
    rules = sorted(counts)
    if not rules:
        return None
    actions = list(ACTION_COLOURS) + sorted({a for c in counts.values() for a in c["actions"]} - set(ACTION_COLOURS))
    left = 0.3 + 0.075 * max(len(label(r)) + 6 for r in rules)  # inches: room for the rule ids
    with figure(1, height_per_row=max(2.2, 0.24 * len(rules) + 0.6), width=10.0, left=left, legend=True) as (fig, axes):
        ax = axes[0, 0]
        y = np.arange(len(rules))[::-1]
        left = np.zeros(len(rules))
        for action in actions:
            widths = np.array([counts[r]["actions"].get(action, 0) for r in rules], dtype=float)
            if widths.any():
                ax.barh(y, widths, left=left, color=ACTION_COLOURS.get(action, "#7f7f7f"), label=action, height=0.7)
                left += widths
        unaccounted = np.array([counts[r]["findings"] for r in rules], dtype=float) - left
        if (unaccounted > 0).any():
            ax.barh(y, np.maximum(unaccounted, 0), left=left, color="#cccccc", label="(no action)", height=0.7)
        ax.set_yticks(y, [label(r) + ("" if counts[r]["enabled"] else " (off)") for r in rules])
        ax.set_xlabel("findings")
        ax.set_title("clean: findings per rule, by action taken")
        ax.grid(axis="y", visible=False)
        legend_right(ax)
        return to_figure(fig, fig_id, "清洗规则命中数（按处理动作堆叠：fix 修复 / mask 遮挡 / drop 丢弃 / flag 仅标记）")


def _bins(*series: np.ndarray, include: tuple[float, ...] = ()) -> np.ndarray | None:
    """Shared histogram bins over every finite value of `series` (and the points in `include`)."""
    values = np.concatenate([v[np.isfinite(v)] for v in series] + [np.array(include, dtype=float)])
    if not values.size:
        return None
    lo, hi = float(values.min()), float(values.max())
    pad = max(1.0, 0.05 * (hi - lo))  # ms: one shared offset (a session's) still gets a visible bar
    n = int(np.clip(np.sqrt(max(len(v) for v in series)) * 2, 10, 40))
    return np.linspace(lo - pad, hi + pad, n + 1)


def _hist(ax, values: np.ndarray, bins: np.ndarray, *, colour: str, name: str, filled: bool = True) -> None:
    v = values[np.isfinite(values)]
    if v.size:
        ax.hist(v, bins=bins, color=colour, alpha=0.75 if filled else 1.0, histtype="stepfilled" if filled else "step",
                linewidth=1.2, label=f"{name} (n={v.size})")


def _percentile_lines(ax, pct: dict, applied: np.ndarray) -> None:
    """P50/P95 of |offset| drawn on the side(s) of zero where the applied offsets lie."""
    v = applied[np.isfinite(applied)]
    signs = [s for s in (1, -1) if (v * s > 0).any()] or [1]
    for key, style in (("p50", "-"), ("p95", "--")):
        if pct.get(key) is None:
            continue
        for i, sign in enumerate(signs):
            ax.axvline(sign * pct[key], color="#333333", linestyle=style, linewidth=0.9,
                       label=f"|offset| {key.upper()} = {pct[key]:.1f} ms" if i == 0 else None)


def offsets_figure(report: dict, fig_id: str) -> Figure | None:
    """Per aligned stream: histograms of the per-episode offset (applied and the episode's own peak)
    with |offset| P50/P95 marked, and of the residual against the `max_residual_ms` gate."""
    streams = [s for s, info in sorted(report["streams"].items()) if info["status"] == "aligned"]
    if not streams:
        return None
    episodes = report["episodes"]
    with figure(2, len(streams), height_per_row=2.5, width=max(7.0, 3.6 * len(streams))) as (fig, axes):
        for j, name in enumerate(streams):
            info = report["streams"][name]
            rows = [e["streams"].get(name, {}) for e in episodes]
            applied = finite([r.get("offset_ms") for r in rows])
            own = finite([r.get("own_ms") for r in rows])
            ax = axes[0, j]
            bins = _bins(applied, own)
            if bins is not None:
                _hist(ax, applied, bins, colour="#4c78a8", name="applied offset")
                _hist(ax, own, bins, colour="#e45756", name="episode's own peak", filled=False)
            _percentile_lines(ax, info.get("offset_abs_ms") or {}, applied)
            ax.set_title(f"{label(name)}: offset vs {label(report['reference'])} (ms)")
            ax.legend(frameon=False, fontsize=7)
            ax = axes[1, j]
            residual = finite([r.get("residual_ms") for r in rows])
            bins = _bins(residual, include=(0.0, report["max_residual_ms"]))
            _hist(ax, residual, bins, colour="#72b7b2", name="residual")
            ax.axvline(report["max_residual_ms"], color="#d64545", linestyle="--", linewidth=1.0,
                       label=f"max_residual_ms = {report['max_residual_ms']:g}")
            rp = info.get("residual_ms") or {}
            if rp.get("p95") is not None:
                ax.axvline(rp["p95"], color="#333333", linestyle=":", linewidth=0.9, label=f"P95 = {rp['p95']:.1f} ms")
            ax.set_title(f"{label(name)}: residual after correction (ms)")
            ax.set_xlabel("ms")
            ax.legend(frameon=False, fontsize=7)
        for ax in axes[:, 0]:
            ax.set_ylabel("episodes")
        return to_figure(fig, fig_id, "时间对齐：各数据流相对参考流的时钟偏移直方图（每回合），标出 |offset| 的 P50/P95；下排为校正后残差与门限")
