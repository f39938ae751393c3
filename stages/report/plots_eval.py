"""Evaluation figures: held-out retrieval and MI-bound curves over training (ch05 §5.8), the probe's
final retrieval per direction, and the closed-loop evaluation, policy against the scripted expert."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stages.report.html import Figure
from stages.report.plotting import colours, figure, label, legend_right, shade_phases, to_figure
from stages.report.series import MI_KEYS, keyed_series, retrieval_keys

MI_NAMES = {"mi_vl": "V-L", "mi_la": "L-A", "mi_va": "V-A"}


def retrieval_curves_figure(rows: Sequence[dict], spans: list, fig_id: str, name: str) -> Figure | None:
    """One panel per direction (R@K over steps, chance R@1 dashed) and one of the MI bounds
    log N − L_InfoNCE with log N, the bound's ceiling."""
    if not rows:
        return None
    dirs, ks = retrieval_keys(rows[-1]["metrics"])
    if not dirs:
        return None
    steps, m = keyed_series(rows, "metrics")
    panels = len(dirs) + 1
    cols = min(3, panels)
    n_rows = -(-panels // cols)
    k_colours = dict(zip(ks, colours(len(ks))))
    with figure(n_rows, cols, height_per_row=2.4) as (fig, axes):
        for i, d in enumerate(dirs):
            ax = axes[i // cols, i % cols]
            shade_phases(ax, spans, names=False)
            for k in ks:
                ax.plot(steps, m.get(f"{d}_r{k}", np.full(len(steps), np.nan)), marker="o", markersize=3,
                        color=k_colours[k], label=f"R@{k}")
            if f"{d}_chance_r1" in m:
                ax.plot(steps, m[f"{d}_chance_r1"], color="#6b7280", linestyle="--", linewidth=1.0, label="chance R@1")
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{label(name)}: {label(d)} retrieval")
            ax.set_xlabel("step")
            if i == 0:
                ax.legend(frameon=False, fontsize=7, loc="best")
        ax = axes[len(dirs) // cols, len(dirs) % cols]
        shade_phases(ax, spans, names=False)
        for key, colour in zip(MI_KEYS, colours(3)):
            if key in m:
                ax.plot(steps, m[key], marker="o", markersize=3, color=colour, label=f"{key} ({MI_NAMES[key]})")
        if "log_n" in m:
            ax.plot(steps, m["log_n"], color="#6b7280", linestyle="--", linewidth=1.0, label="log N (ceiling)")
        ax.set_title("InfoNCE MI bound log N - L (nats)")
        ax.set_xlabel("step")
        ax.legend(frameon=False, fontsize=7)
        for j in range(panels, n_rows * cols):
            axes[j // cols, j % cols].set_visible(False)
        return to_figure(fig, fig_id, f"{name}：留出集跨模态检索 R@K（各方向，虚线为随机水平）与互信息下界 log N − L 随训练变化")


def probe_health_figure(health: dict, fig_id: str, caption: str) -> Figure | None:
    """Grouped bars of R@1/5/10 and MRR per direction, and the MI bound per modality pair."""
    retrieval = health["retrieval"]
    directions = list(retrieval)
    if not directions:
        return None
    metrics = ("R@1", "R@5", "R@10", "MRR")
    with figure(1, 2, height_per_row=3.0) as (fig, axes):
        ax = axes[0, 0]
        x = np.arange(len(directions))
        width = 0.8 / len(metrics)
        for j, (metric, colour) in enumerate(zip(metrics, colours(len(metrics)))):
            values = [retrieval[d].get(metric) for d in directions]
            ax.bar(x + (j - (len(metrics) - 1) / 2) * width, [np.nan if v is None else v for v in values], width,
                   color=colour, label=metric)
        ax.set_xticks(x, [d.replace("->", " > ") for d in directions])
        ax.set_ylim(0, 1.05)
        ax.set_title("probe: held-out retrieval per direction (task relevance)")
        ax.legend(frameon=False, ncols=4, fontsize=7, loc="upper right")
        ax = axes[0, 1]
        mi = health["mutual_information"]
        pairs = list(mi)
        bounds = [np.nan if mi[p]["mi_bound"] is None else mi[p]["mi_bound"] for p in pairs]
        ax.bar(np.arange(len(pairs)), bounds, color=colours(len(pairs)), width=0.6)
        ceilings = [np.log(mi[p]["n"]) if mi[p]["n"] > 0 else np.nan for p in pairs]
        ax.scatter(np.arange(len(pairs)), ceilings, marker="_", s=600, color="#333333", label="log N (ceiling)", zorder=3)
        ax.set_xticks(np.arange(len(pairs)), pairs)
        ax.set_title("InfoNCE MI bound log N - L (nats)")
        ax.legend(frameon=False, fontsize=7)
        return to_figure(fig, fig_id, caption)


def _rates(agg: dict, key: str) -> tuple[float, float]:
    policy = agg.get(key)
    expert = (agg.get("expert") or {}).get(key)
    return (np.nan if policy is None else policy), (np.nan if expert is None else expert)


def closed_loop_figure(doc: dict, fig_id: str, name: str) -> Figure | None:
    """Per task and overall: success rate, violation rate and ∫|jerk|, policy beside the expert."""
    groups = sorted(doc["tasks"]) + ["overall"]
    aggs = [doc["tasks"][t] for t in groups[:-1]] + [doc["overall"]]
    if not aggs:
        return None
    x = np.arange(len(groups))
    with figure(1, 3, height_per_row=2.8, legend=True) as (fig, axes):
        for ax, key, title in zip(axes[0], ("success_rate", "violation_rate", "jerk_integral"),
                                  ("success rate", "constraint violation rate (steps)", "integral |jerk| dt (m/s^2)")):
            pairs = np.array([_rates(a, key) for a in aggs])  # [G, 2]: policy, expert
            ax.bar(x - 0.2, pairs[:, 0], 0.4, color="#4c78a8", label="policy")
            ax.bar(x + 0.2, pairs[:, 1], 0.4, color="#9aa5b8", label="expert")
            ax.set_xticks(x, [label(g) for g in groups], rotation=30, ha="right")
            ax.set_title(title)
            if key != "jerk_integral":
                ax.set_ylim(0, 1.05)
        legend_right(axes[0, 2])
        return to_figure(fig, fig_id, f"{name}：闭环评测（Meta-World，同一批种子）—— 策略与脚本专家对比")
