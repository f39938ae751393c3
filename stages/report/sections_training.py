"""Training sections, one child per checkpoint: loss curves (with annealed weights and temperature),
token buckets (ch07 §7.6) and gradient statistics with the PCGrad hit rate (ch07 §7.8)."""

from __future__ import annotations

import numpy as np

from stages.report import html as h
from stages.report.load import Checkpoint, RunData
from stages.report.plots_training import bucket_figure, eval_figure, gradient_figure, loss_figure
from stages.report.series import bucket_series, gradient_stats, phase_spans, retrieval_metric_names

PAIR_LIMIT = 15  # most conflicting loss pairs listed


def spans_of(ck: Checkpoint) -> list[tuple[str, float, float]]:
    return phase_spans(ck.rows("train"), schedule=ck.schedule)


def _slug(ck: Checkpoint) -> str:
    return ck.slug


def _state_rows(ck: Checkpoint) -> list[tuple[str, object]]:
    s = ck.state
    rows: list[tuple[str, object]] = [("path", h.Cell(str(ck.path)))]
    if s is None:
        return rows + [("trainer_state.json", h.Cell("未找到", "muted"))]
    combiners = sorted({c["name"] for c in s["combiners"].values()})
    rows += [("step", s["step"]), ("phase", s["phase"]), ("temperature", s["temperature"]),
             ("skipped_steps（非有限值跳过）", s["skipped_steps"]), ("elapsed_s", s["elapsed_s"]),
             ("world_size", s["world_size"]), ("combiners", ", ".join(combiners) or h.MISSING)]
    if ck.schedule is not None:
        rows.append(("schedule", f"{ck.schedule.get('name', h.MISSING)}（total_steps {ck.schedule['total_steps']}）"))
    return rows


def _phase_table(spans: list) -> str:
    return h.table(["phase", "from step", "to step"], [[n, int(a), int(b)] for n, a, b in spans], caption="日程阶段（按日志）")


def loss_child(ck: Checkpoint) -> h.Section:
    sec = h.Section(id=f"loss-{_slug(ck)}", title=f"{ck.name}")
    sec.add(h.kv_table(_state_rows(ck)))
    train, evals, skips = ck.rows("train"), ck.rows("eval"), ck.rows("skip")
    if ck.metrics is None:
        sec.status = "missing"
        sec.add(h.missing(f"未找到 {ck.name}/logs/metrics.jsonl：没有损失曲线。"))
        return sec
    spans = spans_of(ck)
    if skips:
        names = sorted({n for r in skips for n in r["nonfinite"]})
        sec.add(h.para(f"非有限值守卫跳过了 {len(skips)} 步（nonfinite: {', '.join(names)}）。", "muted"))
    if spans:
        sec.add(_phase_table(spans))
    sec.figure(loss_figure(train, spans, f"loss-{_slug(ck)}", ck.name))
    if train:
        losses, weights = train[-1].get("losses") or {}, train[-1].get("loss_weights") or {}
        rows = [[k, losses.get(k), weights.get(k)] for k in sorted(set(losses) | set(weights))]
        sec.add(h.table(["loss", f"value @ step {train[-1]['step']}", "weight"], rows, caption="最后一个训练窗口的损失与权重"))
    if evals:
        elsewhere = retrieval_metric_names(evals[-1]["metrics"])  # drawn in the retrieval section
        others = [k for k in sorted(evals[-1]["metrics"]) if k not in elsewhere]
        sec.figure(eval_figure(evals, [k for k in others if _varies(evals, k)], spans, f"eval-{_slug(ck)}", ck.name))
        last = evals[-1]["metrics"]
        caption = "最后一次留出集评测（eval）" + ("；检索与互信息指标见「检索与互信息」" if elsewhere else "")
        sec.add(h.table(["metric", f"value @ step {evals[-1]['step']}"], [[k, last[k]] for k in others], caption=caption))
    return sec


def _varies(rows: list[dict], key: str) -> bool:
    """Whether metric `key` has two or more distinct values over the eval rows (a constant, or a value
    logged once such as the final closed-loop rates, goes to the table only)."""
    return len({r["metrics"][key] for r in rows if r["metrics"].get(key) is not None}) > 1


def losses_section(data: RunData) -> h.Section:
    sec = h.Section(id="losses", title="训练损失（各阶段）")
    if not data.checkpoints:
        sec.status = "missing"
        sec.add(h.missing("未找到检查点（没有包含 trainer_state.json 或 logs/metrics.jsonl 的目录）。"))
        return sec
    sec.children = [loss_child(ck) for ck in data.checkpoints]
    return sec


def buckets_section(data: RunData) -> h.Section:
    sec = h.Section(id="buckets", title="Token Buckets（令牌桶）")
    with_logs = [ck for ck in data.checkpoints if ck.buckets]
    if not with_logs:
        sec.status = "missing"
        sec.add(h.missing("未找到 logs/buckets.jsonl（只有带 buckets 的对齐日程会写它）。"))
        return sec
    for ck in with_logs:
        child = h.Section(id=f"buckets-{_slug(ck)}", title=ck.name)
        series = bucket_series(ck.buckets)
        child.figure(bucket_figure(series, spans_of(ck), f"buckets-{_slug(ck)}", ck.name))
        final = series.final()
        p = np.array([f[4] for f in final])
        p = p[p > 0]  # p = 0: the phase switches the cluster off
        child.add(h.table(["bucket", "capacity B_k", "remaining", "consumed_total", "p"], [list(f) for f in final],
                          caption=f"最后一行（step {int(series.steps[-1])}）的桶状态"))
        if p.size > 1:
            child.add(h.para(f"在用的桶 p_k 最大/最小 = {p.max() / p.min():.3g}（桶失衡的信号，见第 7 章陷阱 4）。", "muted"))
        sec.children.append(child)
    return sec


def gradients_child(ck: Checkpoint) -> h.Section:
    child = h.Section(id=f"gradients-{_slug(ck)}", title=ck.name)
    stats = gradient_stats(ck.gradients)
    hit = stats.mean_hit_rate
    child.add(h.kv_table([
        ("combiner", ", ".join(stats.combiner)), ("rows", stats.rows),
        ("pcgrad_hit_rate（均值）", h.pct(hit) if hit is not None else h.MISSING),
        ("cos < 0 的梯度对占比", h.pct(stats.conflict_share)),
        ("参数不相交的梯度对（cos = 0，不计入）", stats.disjoint),
    ]))
    child.figure(gradient_figure(stats, spans_of(ck), f"gradients-{_slug(ck)}", ck.name))
    norms = [[k, float(np.nanmean(v)) if np.isfinite(v).any() else None, float(v[np.isfinite(v)][-1]) if np.isfinite(v).any() else None]
             for k, v in sorted(stats.norms.items())]
    child.add(h.table(["loss", "mean ||grad||", "last ||grad||"], norms, caption="各损失梯度范数"))
    pairs = sorted(stats.pairs, key=lambda p: p[2])[:PAIR_LIMIT]
    if pairs:
        child.add(h.table(["a", "b", "mean cos", "share cos < 0", "rows"],
                          [[a, b, c, h.Cell(h.pct(s), "num"), n] for a, b, c, s, n in pairs],
                          caption=f"冲突最多的梯度对（按平均余弦升序，最多 {PAIR_LIMIT} 对）"))
    return child


def gradients_section(data: RunData) -> h.Section:
    sec = h.Section(id="gradients", title="梯度统计（范数 / 夹角 / PCGrad）")
    with_logs = [ck for ck in data.checkpoints if ck.gradients]
    if not with_logs:
        sec.status = "missing"
        sec.add(h.missing("未找到 logs/gradients.jsonl（多损失组合器按步记录梯度时才会写它）。"))
        return sec
    sec.children = [gradients_child(ck) for ck in with_logs]
    return sec
