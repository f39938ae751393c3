"""Diagnostic signals: the chapter's gotchas (ch07 常见陷阱) read off the run's artifacts.

Each rule looks at one artifact and says, in one line, what it saw and which gotcha it points to.
They are prompts for a closer look at the section below, not gates: the gates are `vla probe`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.report import html as h
from stages.report.load import RunData
from stages.report.series import bucket_series, gradient_stats, retrieval_keys

BUCKET_RATIO = 10.0  # p_max / p_min at the last row beyond which the buckets look unbalanced (gotcha 4)
CONFLICT_SHARE = 0.3  # share of gradient pairs with cos < 0 that calls for gradient surgery (gotcha 6)
MIN_PAIRS = 10  # fewer gradient pairs than this say nothing about conflicts
JERK_RATIO = 1.2  # ch07 §7.10 item 2: at most 1.2 × the teacher


@dataclass
class Signal:
    level: str  # "warn" | "ok"
    text: str
    anchor: str  # section id to read next


def _alignment(data: RunData) -> list[Signal]:
    out = []
    for i, (path, r) in enumerate(data.aligned):
        where = data.found.rel(path)
        bad = [s for s, st in sorted(r["streams"].items())
               if (st.get("residual_ms") or {}).get("p95") is not None and st["residual_ms"]["p95"] > r["max_residual_ms"]]
        if bad:
            out.append(Signal("warn", f"{where}：{', '.join(bad)} 的残差 P95 超过 max_residual_ms = {r['max_residual_ms']:g} ms（时间错位，陷阱 2）。", f"align-time-{i}"))
        s = r["summary"]
        if s["dropped"] or s["downweighted"]:
            out.append(Signal("warn", f"{where}：时间对齐丢弃 {s['dropped']} 个、降权 {s['downweighted']} 个回合（陷阱 2 / 5）。", f"align-time-{i}"))
        if r["action_lag"]["source"] == "default":
            out.append(Signal("warn", f"{where}：未给出执行滞后（action_lag.source = default），action 偏移中包含被控对象滞后（陷阱 2）。", f"align-time-{i}"))
    return out


def _training(data: RunData) -> list[Signal]:
    out = []
    for ck in data.checkpoints:
        skips = ck.rows("skip")
        if skips:
            out.append(Signal("warn", f"{ck.name}：非有限值守卫跳过了 {len(skips)} 步。", "losses"))
        if ck.buckets:
            series = bucket_series(ck.buckets)
            p = series.p[-1]
            p = p[np.isfinite(p) & (p > 0)]  # p = 0: switched off by the phase (difficulty, mix), not starved
            if p.size > 1 and p.max() / p.min() > BUCKET_RATIO:
                out.append(Signal("warn", f"{ck.name}：令牌桶采样概率最大/最小 = {p.max() / p.min():.3g}（桶失衡，陷阱 4）。", "buckets"))
        if ck.gradients:
            stats = gradient_stats(ck.gradients)
            if stats.cosines.size >= MIN_PAIRS and stats.conflict_share > CONFLICT_SHARE:
                out.append(Signal("warn", f"{ck.name}：{h.pct(stats.conflict_share)} 的梯度对夹角为钝角（cos < 0；损失冲突，陷阱 6）。", "gradients"))
        evals = ck.rows("eval")
        if evals:
            m = evals[-1]["metrics"]
            below = [d for d in retrieval_keys(m)[0] if m.get(f"{d}_r1") is not None and m.get(f"{d}_chance_r1") is not None
                     and m[f"{d}_r1"] <= m[f"{d}_chance_r1"]]
            if below:
                out.append(Signal("warn", f"{ck.name}：{', '.join(below)} 的 R@1 不高于随机水平（对齐未学到，陷阱 1）。", "retrieval"))
    return out


def _evaluation(data: RunData) -> list[Signal]:
    out = []
    for i, probe in enumerate(data.probes):
        s = probe.report["summary"]
        failed = [c["name"] for c in probe.report["checks"] if c["status"] == "fail"]
        level = "ok" if s["gate_passed"] else "warn"
        text = f"{data.found.rel(probe.path)}：体检 {s['passed']}/{s['run']} 项通过（及格线 {s['min_pass']}）"
        text += f"；未通过：{', '.join(failed)}（陷阱 8）。" if failed else "。"
        out.append(Signal(level, text, f"probe-{i}"))
    docs = [(ck.name, ck.closed_loop) for ck in data.checkpoints if ck.closed_loop] + \
           [(data.found.rel(p), d) for p, d in data.closed_loop]
    for name, doc in docs:
        o = doc["overall"]
        expert = o.get("expert") or {}
        if o.get("violation_rate") is not None and expert.get("violation_rate") is not None and o["violation_rate"] > expert["violation_rate"]:
            out.append(Signal("warn", f"{name}：闭环约束违例率 {h.pct(o['violation_rate'])} 高于专家 {h.pct(expert['violation_rate'])}（表面平滑、实则越界，陷阱 3）。", "closed-loop"))
        if o.get("jerk_ratio") is not None and o["jerk_ratio"] > JERK_RATIO:
            out.append(Signal("warn", f"{name}：闭环 ∫|jerk| 是专家的 {o['jerk_ratio']:.3g} 倍（> {JERK_RATIO}，陷阱 3 / 9）。", "closed-loop"))
    return out


def signals(data: RunData) -> list[Signal]:
    return _alignment(data) + _training(data) + _evaluation(data)


def signals_section(found: list[Signal]) -> h.Section:
    sec = h.Section(id="signals", title="诊断信号（对应第 7 章常见陷阱）")
    if not found:
        sec.add(h.para("未发现需要注意的信号。", "muted"))
        return sec
    items = "".join(f'<li class="{s.level}">{h.esc(s.text)} <a href="#{h.esc(s.anchor)}">查看</a></li>' for s in found)
    sec.add(f'<ul class="signals">{items}</ul>')
    return sec
