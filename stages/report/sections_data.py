"""Data-quality section: what `vla clean` found and fixed, and how `vla align-time` aligned the clocks."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import schemas
from stages.report import html as h
from stages.report.load import RunData
from stages.report.plots_data import clean_rules_figure, offsets_figure

LIST_LIMIT = 20  # dropped / downweighted episodes listed by name; the rest are counted


def _truth_for(data: RunData, report: dict) -> dict | None:
    """The injected truth of the dataset `report` cleaned (matched by the truth file's dataset name)."""
    return data.truth.get(Path(report["input"]).name)


def _injected(truth: dict) -> Counter:
    return Counter(f["kind"] for ep in truth["episodes"].values() for f in ep["faults"])


def clean_section(data: RunData, path: Path, report: dict, index: int) -> h.Section:
    rel = data.found.rel(path)
    sec = h.Section(id=f"clean-{index}", title=f"清洗（vla clean）：{rel}")
    s = report["summary"]
    sec.add(h.kv_table([
        ("episodes（回合）", s["episodes"]), ("kept（保留）", s["kept"]), ("dropped（丢弃）", s["dropped"]),
        ("findings（发现）", s["findings"]), ("rows_in → rows_out", f"{s['rows_in']} → {s['rows_out']}"),
        ("values_fixed（修复数值）", s["values_fixed"]), ("masked_s（遮挡秒数）", s["masked_s"]),
        ("eval_episodes（评测集回合）", s["eval_episodes"]),
    ]))
    truth = _truth_for(data, report)
    injected = _injected(truth) if truth is not None else None
    headers = ["rule", "kind", "enabled", "findings", "episodes", "actions"]
    if injected is not None:
        headers.append("injected (truth)")
    rows = []
    for rule in sorted(report["counts"]):
        c = report["counts"][rule]
        actions = ", ".join(f"{a}: {n}" for a, n in sorted(c["actions"].items())) or h.MISSING
        row = [h.Cell(rule), c["kind"], "yes" if c["enabled"] else "off", c["findings"], c["episodes"], actions]
        if injected is not None:
            row.append(injected.get(c["kind"], 0) if c["kind"] in truth_kinds() else None)
        rows.append(row)
    sec.add("<h4>规则命中（counts）</h4>", h.table(headers, rows))
    sec.figure(clean_rules_figure(report, f"clean-rules-{index}"))
    if injected is not None:
        found = report["kinds"]
        kinds = sorted(set(injected) | set(found))
        sec.add(f"<h4>注入故障 vs 发现（truth：{h.esc(truth['dataset'])}.truth.json）</h4>",
                h.table(["kind", "injected (truth)", "found (clean kinds)"],
                        [[k, injected.get(k, 0) if k in truth_kinds() else None, found.get(k, 0)] for k in kinds]))
    extra = []
    if report["drop_reasons"]:
        extra.append(h.table(["drop reason (rule)", "episodes"], sorted(report["drop_reasons"].items()),
                             caption="丢弃原因（drop_reasons）"))
    if report["tasks"]:
        extra.append(h.table(["task", "kept episodes"], sorted(report["tasks"].items()), caption="各任务保留回合（tasks）"))
    if extra:
        sec.add('<div class="row">' + "".join(extra) + "</div>")
    return sec


@functools.cache
def truth_kinds() -> frozenset[str]:
    """The fault vocabulary of the truth file: only these kinds can be injected (others show —)."""
    return frozenset(schemas.load("truth")["$defs"]["fault"]["properties"]["kind"]["enum"])


def _pct_cells(p: dict | None) -> list:
    p = p or {}
    return [p.get("p50"), p.get("p95")]


def align_section(data: RunData, path: Path, report: dict, index: int) -> h.Section:
    rel = data.found.rel(path)
    sec = h.Section(id=f"align-time-{index}", title=f"时间对齐（vla align-time）：{rel}")
    s = report["summary"]
    lag = report["action_lag"]
    sec.add(h.kv_table([
        ("reference（参考流）", report["reference"]), ("fps", report["fps"]),
        ("episodes kept / downweighted / dropped", f"{s['kept']} / {s['downweighted']} / {s['dropped']}（共 {s['episodes']}）"),
        ("valid_frames / frames", f"{s.get('valid_frames', h.MISSING)} / {s['frames']}"),
        ("max_residual_ms（残差门限）", report["max_residual_ms"]),
        ("action_lag.ms（执行滞后）", f"{h.num(lag['ms'])} ms（source: {lag['source']}）"),
    ]))
    rows = []
    for name in sorted(report["streams"]):
        st = report["streams"][name]
        conf = (st.get("confidence") or {}).get("p50")
        rows.append([name, st["kind"], st["rate_hz"], h.Cell(st["status"], "muted" if st["status"] == "left_out" else ""),
                     st.get("feature"), *_pct_cells(st.get("offset_abs_ms")), *_pct_cells(st.get("residual_ms")), conf,
                     st.get("reason")])
    sec.add("<h4>各数据流偏移（offset_abs_ms / residual_ms，单位 ms）</h4>",
            h.table(["stream", "kind", "rate_hz", "status", "feature", "|offset| P50", "|offset| P95", "residual P50",
                     "residual P95", "confidence P50", "reason"], rows))
    sec.figure(offsets_figure(report, f"align-offsets-{index}"))
    for key, title, cols in (("dropped", "丢弃的回合（dropped）", ("episode_id", "reason")),
                             ("downweighted", "降权的回合（downweighted）", ("episode_id", "weight", "reason"))):
        items = report[key]
        if items:
            shown = [[it[c] for c in cols] for it in items[:LIST_LIMIT]]
            more = f"（另有 {len(items) - LIST_LIMIT} 个未列出）" if len(items) > LIST_LIMIT else ""
            sec.add(h.table(list(cols), shown, caption=title + more))
    return sec


def data_quality_section(data: RunData) -> h.Section:
    sec = h.Section(id="data-quality", title="数据质量")
    if not data.clean and not data.aligned:
        sec.status = "missing"
        sec.add(h.missing("未找到清洗或时间对齐的产物（没有包含 clean_report.json 或 align_report.json 的目录）。"))
        return sec
    if data.clean:
        sec.children += [clean_section(data, p, r, i) for i, (p, r) in enumerate(data.clean)]
    else:
        sec.add(h.missing("未找到清洗产物（没有包含 clean_report.json 的目录）。"))
    if data.aligned:
        sec.children += [align_section(data, p, r, i) for i, (p, r) in enumerate(data.aligned)]
    else:
        sec.add(h.missing("未找到时间对齐产物（没有包含 align_report.json 的目录）。"))
    if not data.clean or not data.aligned:
        sec.status = "partial"
    return sec
