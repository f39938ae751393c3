"""Training figures of one checkpoint: loss curves per phase with the annealed weights and the
temperature, held-out metrics, token buckets (ch07 §7.6) and gradient statistics (ch07 §7.8)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stages.report.html import Figure
from stages.report.plotting import (colours, figure, label, legend_right, log10_safe, points, shade_phases, to_figure,
                                    use_log)
from stages.report.series import BucketSeries, GradientStats, keyed_series, scalar_series

MAX_EVAL_PANELS = 12


def loss_figure(rows: Sequence[dict], spans: list, fig_id: str, name: str) -> Figure | None:
    """Three panels over steps, phases shaded: losses (and the weighted total), the effective loss
    weights after annealing and floors, and the InfoNCE temperature with the learning rate."""
    if not rows:
        return None
    steps, losses = keyed_series(rows, "losses")
    _, weights = keyed_series(rows, "loss_weights")
    total = scalar_series(rows, "loss")
    temperature = scalar_series(rows, "temperature")
    lr = scalar_series(rows, "lr")
    names = sorted(set(losses) | set(weights))
    dots = points(len(steps))
    palette = dict(zip(names, colours(len(names))))
    # a legend entry is ~0.15 in: long lists of terms get taller panels rather than a cut legend
    with figure(3, height_per_row=max(2.3, 0.155 * (len(names) + 1) + 0.5), sharex=True, legend=True) as (fig, axes):
        ax = axes[0, 0]
        for key, values in losses.items():
            ax.plot(steps, values, color=palette[key], label=label(key), **dots)
        if np.isfinite(total).any():
            ax.plot(steps, total, color="black", linestyle="--", linewidth=1.2, label="loss (weighted sum)", **dots)
        use_log(ax, total, *losses.values())
        ax.set_ylabel("loss")
        ax.set_title(f"{label(name)}: training losses per phase")
        ax = axes[1, 0]
        for key, values in weights.items():
            ax.plot(steps, values, color=palette[key], label=label(key), **dots)
        ax.set_ylabel("effective weight")
        ax.set_title("loss weights (annealed, after floors / combiner)")
        ax = axes[2, 0]
        if np.isfinite(temperature).any():
            ax.plot(steps, temperature, color="#b279a2", label="temperature (tau)", **dots)
            ax.set_ylabel("tau")
        else:
            ax.text(0.01, 0.9, "no schedule temperature: the model's learnable logit scale rules", transform=ax.transAxes,
                    fontsize=8, color="#6b7280", va="top")
        ax.set_title("InfoNCE temperature and learning rate")
        ax.set_xlabel("step")
        twin = ax.twinx()
        twin.plot(steps, lr, color="#54a24b", linestyle="-.", label="lr", **dots)
        twin.set_ylabel("lr")
        twin.grid(False)
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], loc="upper left", bbox_to_anchor=(1.1, 1.0), frameon=False)
        for row in axes[:2, 0]:
            legend_right(row, max_entries=30)
        for ax in axes[:, 0]:
            shade_phases(ax, spans, names=ax is axes[0, 0])
        return to_figure(fig, fig_id, f"{name}：各阶段损失曲线（背景色块为日程阶段）、退火后的有效损失权重、温度 τ 与学习率")


def eval_figure(rows: Sequence[dict], keys: Sequence[str], spans: list, fig_id: str, name: str) -> Figure | None:
    """Small multiples of held-out metrics over steps (at most MAX_EVAL_PANELS)."""
    keys = list(keys)[:MAX_EVAL_PANELS]
    if len(rows) < 2 or not keys:
        return None
    steps, metrics = keyed_series(rows, "metrics")
    cols = min(4, len(keys))
    n_rows = -(-len(keys) // cols)
    with figure(n_rows, cols, height_per_row=2.0) as (fig, axes):
        for i, key in enumerate(keys):
            ax = axes[i // cols, i % cols]
            shade_phases(ax, spans, names=False)
            ax.plot(steps, metrics[key], marker="o", markersize=3, color="#4c78a8")
            ax.set_title(label(key), fontsize=9)
        for j in range(len(keys), n_rows * cols):
            axes[j // cols, j % cols].set_visible(False)
        return to_figure(fig, fig_id, f"{name}：留出集评测指标随训练步数变化")


def bucket_figure(series: BucketSeries, spans: list, fig_id: str, name: str) -> Figure | None:
    """p_k(t), the share of B_k still available and the tokens drawn so far, per bucket."""
    if not series.names or len(series.steps) == 0:
        return None
    palette = colours(len(series.names))
    with figure(3, height_per_row=2.2, sharex=True, legend=True) as (fig, axes):
        fill = series.remaining / np.where(series.capacity > 0, series.capacity, np.nan)
        dots = points(len(series.steps))
        for k, bucket in enumerate(series.names):
            axes[0, 0].plot(series.steps, series.p[:, k], color=palette[k], label=label(bucket), **dots)
            axes[1, 0].plot(series.steps, fill[:, k], color=palette[k], **dots)
            axes[2, 0].plot(series.steps, series.consumed[:, k], color=palette[k], **dots)
        axes[0, 0].set_ylabel("p_k")
        axes[0, 0].set_title(f"{label(name)}: sampling probability per bucket, p_k ~ max(0, B_k - u_k)^gamma * q_k")
        axes[1, 0].set_ylabel("remaining / B_k")
        axes[1, 0].set_ylim(-0.03, 1.03)
        axes[1, 0].set_title("tokens still available, max(0, B_k - u_k) / B_k")
        axes[2, 0].set_ylabel("tokens")
        axes[2, 0].set_title("tokens consumed since the start")
        axes[2, 0].set_xlabel("step")
        legend_right(axes[0, 0], max_entries=18)
        for ax in axes[:, 0]:
            shade_phases(ax, spans, names=ax is axes[0, 0])
        return to_figure(fig, fig_id, f"{name}：Token Buckets —— 各桶采样概率 p_k、剩余令牌比例与累计消耗随步数变化")


def gradient_figure(stats: GradientStats, spans: list, fig_id: str, name: str) -> Figure | None:
    """Per-loss gradient norms over steps and as a histogram, the pooled pairwise-cosine histogram,
    and the PCGrad hit rate (or the conflict share when another combiner ran)."""
    if stats.rows == 0 or not stats.norms:
        return None
    keys = sorted(stats.norms)
    palette = dict(zip(keys, colours(len(keys))))
    with figure(2, 2, height_per_row=2.8, legend=True) as (fig, axes):
        ax = axes[0, 0]
        shade_phases(ax, spans, names=False)
        for key in keys:
            ax.plot(stats.steps, stats.norms[key], color=palette[key], label=label(key), **points(stats.rows))
        use_log(ax, *stats.norms.values())
        ax.set_title(f"{label(name)}: per-loss gradient norm ||grad L_i||")
        ax.set_xlabel("step")
        ax = axes[0, 1]
        logs = {k: log10_safe(v) for k, v in stats.norms.items()}
        every = np.concatenate([v[np.isfinite(v)] for v in logs.values()])
        if every.size:
            lo, hi = float(every.min()), float(every.max())
            bins = np.linspace(lo - 0.05, hi + 0.05, 31)
            for key in keys:
                v = logs[key][np.isfinite(logs[key])]
                if v.size:
                    ax.hist(v, bins=bins, histtype="step", linewidth=1.3, color=palette[key], label=label(key))
        ax.set_title("gradient norm histogram")
        ax.set_xlabel("log10 ||grad L_i||")
        ax.set_ylabel("rows")
        legend_right(ax)
        ax = axes[1, 0]
        if stats.cosines.size:
            ax.hist(stats.cosines, bins=np.linspace(-1, 1, 41), color="#4c78a8", alpha=0.85)
            ax.axvspan(-1, 0, color="#fde4e4", zorder=0)
            ax.axvline(0, color="#d64545", linewidth=1.0)
            note = f"cos < 0: {100 * stats.conflict_share:.1f}% of {stats.cosines.size} pairs"
            if stats.disjoint:
                note += f"\n{stats.disjoint} disjoint pairs (cos = 0) left out"
            ax.text(0.02, 0.95, note, transform=ax.transAxes, va="top", fontsize=8)
        ax.set_xlim(-1, 1)
        ax.set_title("pairwise gradient cosine (angle) histogram")
        ax.set_xlabel("cos(grad L_i, grad L_j)")
        ax = axes[1, 1]
        shade_phases(ax, spans, names=False)
        if np.isfinite(stats.hit_rate).any():
            ax.plot(stats.steps, stats.hit_rate, color="#e45756", marker=".", markersize=3, label="PCGrad hit rate")
            ax.set_title("PCGrad hit rate (share of ordered pairs projected)")
        else:
            ax.text(0.5, 0.5, f"combiner: {', '.join(stats.combiner)} (no PCGrad projections)", transform=ax.transAxes,
                    ha="center", fontsize=8, color="#6b7280")
            ax.set_title("PCGrad hit rate")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("step")
        return to_figure(fig, fig_id, f"{name}：梯度统计 —— 各损失梯度范数（曲线与直方图）、两两梯度夹角余弦直方图、PCGrad 命中率")
