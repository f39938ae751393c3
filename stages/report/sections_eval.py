"""Evaluation sections: retrieval and MI curves (ch05 §5.8), the transferability check-up table
(ch07 §7.10) with each value against its gate, the closed-loop evaluation and the export bundle."""

from __future__ import annotations

from pathlib import Path

from stages.report import html as h
from stages.report.load import RunData
from stages.report.plots_eval import closed_loop_figure, probe_health_figure, retrieval_curves_figure
from stages.report.sections_training import _slug, spans_of
from stages.report.series import retrieval_keys

STATUS_TEXT = {"pass": "通过 pass", "fail": "未通过 fail", "skipped": "跳过 skipped"}


def retrieval_section(data: RunData) -> h.Section:
    sec = h.Section(id="retrieval", title="检索与互信息（R@K / MI 下界）")
    curves = [ck for ck in data.checkpoints if ck.rows("eval") and retrieval_keys(ck.rows("eval")[-1]["metrics"])[0]]
    for ck in curves:
        child = h.Section(id=f"retrieval-{_slug(ck)}", title=f"{ck.name}：训练中的留出集检索")
        child.figure(retrieval_curves_figure(ck.rows("eval"), spans_of(ck), f"retrieval-{_slug(ck)}", ck.name))
        last = ck.rows("eval")[-1]["metrics"]
        dirs, ks = retrieval_keys(last)
        rows = [[d, *(last.get(f"{d}_r{k}") for k in ks), last.get(f"{d}_mrr"), last.get(f"{d}_chance_r1")] for d in dirs]
        child.add(h.table(["direction", *(f"R@{k}" for k in ks), "MRR", "chance R@1"], rows,
                          caption=f"最后一次评测（step {ck.rows('eval')[-1]['step']}）"))
        sec.children.append(child)
    for i, probe in enumerate(data.probes):
        health = probe.report["health"]
        rel = data.found.rel(probe.path)
        child = h.Section(id=f"health-{i}", title=f"体检报告的对齐健康度：{rel}")
        child.figure(probe_health_figure(health, f"probe-health-{i}", f"{rel}：各方向检索 R@1/5/10、MRR 与互信息下界（按任务判相关）"))
        child.add(h.table(["direction", "R@1", "R@5", "R@10", "MRR", "queries"],
                          [[d, r["R@1"], r["R@5"], r["R@10"], r["MRR"], r["queries"]] for d, r in health["retrieval"].items()],
                          caption="health.retrieval"))
        child.add(h.table(["pair", "loss", "n", "mi_bound (nats)"],
                          [[p, m["loss"], m["n"], m["mi_bound"]] for p, m in health["mutual_information"].items()],
                          caption=f"health.mutual_information（logit_scale = {h.num(health['logit_scale'])}）"))
        child.add(_amat(health["amat"]), _coherence_calibration(health))
        sec.children.append(child)
    if not sec.children:
        sec.status = "missing"
        sec.add(h.missing("未找到检索指标（对齐检查点的 eval 行或体检报告 probe report 都不存在）。"))
    return sec


def _amat(amat: dict) -> str:
    mods = amat["modalities"]
    rows = [[m, *row] for m, row in zip(mods, amat["matrix"])]
    return h.table(["query \\ gallery", *mods], rows, caption=f"对齐混淆矩阵 AMat（top-{amat['k']} 跨模态命中率）")


def _coherence_calibration(health: dict) -> str:
    sc, cal = health["spectral_coherence"], health["calibration"]
    band = "–".join(f"{b:g}" for b in sc["band_hz"])
    rows = [("spectral_coherence γ_VA", sc["coherence"]), ("band_hz", band), ("episodes / segments", f"{sc['episodes']} / {sc['segments']}"),
            ("calibration ECE before → after", f"{h.num(cal['ece_before'])} → {h.num(cal['ece_after'])}"),
            ("calibration temperature", cal["temperature"])]
    if sc.get("note"):
        rows.append(("note", sc["note"]))
    return h.kv_table(rows)


def _gate(check: dict) -> str:
    unit = f" {check['unit']}" if check["unit"] else ""
    return f"{check['comparator']} {h.num(check['threshold'])}{unit}"


def probe_section(data: RunData) -> h.Section:
    sec = h.Section(id="probe", title="可迁移性体检（vla probe，十项）")
    if not data.probes:
        sec.status = "missing"
        sec.add(h.missing("未找到体检报告（没有 probe*.json 或含 checks/health 的 JSON 文件）。"))
        return sec
    for i, probe in enumerate(data.probes):
        r = probe.report
        s = r["summary"]
        child = h.Section(id=f"probe-{i}", title=f"{data.found.rel(probe.path)}（checkpoint: {r['checkpoint']['path']}，step {r['checkpoint']['step']}）")
        verdict = "pass" if s["gate_passed"] else "fail"
        child.add(f'<p class="badge {verdict}">{s["passed"]}/{s["run"]} 项通过（及格线 min_pass = {s["min_pass"]}，'
                  f'跳过 {s["skipped"]}）：{"通过" if s["gate_passed"] else "未通过"}</p>')
        rows = []
        for c in r["checks"]:
            note = "；".join(t for t in (c["reason"], c["suggestion"] if c["status"] == "fail" else None) if t)
            rows.append([c["id"], h.Cell(c["name"], title=c["what"]), c["title"], h.Cell(h.num(c["value"]), "num"),
                         h.Cell(_gate(c), "num"), h.Cell(STATUS_TEXT[c["status"]], c["status"]), c["episodes"], note])
        child.add(h.table(["#", "name", "check", "value", "threshold", "status", "episodes", "suggestion / reason"], rows,
                          cls="probe"))
        sec.children.append(child)
    return sec


def _closed_loop_docs(data: RunData) -> list[tuple[str, Path, dict]]:
    docs = [(ck.name, ck.path / "closed_loop.json", ck.closed_loop) for ck in data.checkpoints if ck.closed_loop]
    return docs + [(data.found.rel(p), p, d) for p, d in data.closed_loop]


def closed_loop_section(data: RunData) -> h.Section:
    sec = h.Section(id="closed-loop", title="闭环评测（策略 vs 专家）")
    docs = _closed_loop_docs(data)
    if not docs:
        sec.status = "missing"
        sec.add(h.missing("未找到 closed_loop.json（vla finetune 在 --eval-episodes > 0 时写入检查点）。"))
        return sec
    for i, (name, path, doc) in enumerate(docs):
        child = h.Section(id=f"closed-loop-{i}", title=f"{name}：{doc['config']['episodes_per_task']} 回合/任务，step {doc.get('step', h.MISSING)}")
        rows = []
        for group, agg in sorted(doc["tasks"].items()) + [("overall", doc["overall"])]:
            expert = agg.get("expert") or {}
            rows.append([h.Cell(group, "" if group != "overall" else "muted"), agg.get("episodes", expert.get("episodes")),
                         h.Cell(h.pct(agg.get("success_rate")), "num"), h.Cell(h.pct(expert.get("success_rate")), "num"),
                         h.Cell(h.pct(agg.get("violation_rate")), "num"), h.Cell(h.pct(expert.get("violation_rate")), "num"),
                         agg.get("jerk_integral"), expert.get("jerk_integral"), agg.get("jerk_ratio")])
        child.add(h.table(["task", "episodes", "success_rate policy", "success_rate expert", "violation_rate policy",
                           "violation_rate expert", "jerk_integral policy", "jerk_integral expert", "jerk_ratio"], rows))
        child.figure(closed_loop_figure(doc, f"closed-loop-{i}", name))
        sec.children.append(child)
    return sec


def export_section(data: RunData) -> h.Section:
    sec = h.Section(id="export", title="导出包（vla export）")
    if not data.bundles:
        sec.status = "missing"
        sec.add(h.missing("未找到导出包（没有包含 manifest.json 的目录）。"))
        return sec
    for i, b in enumerate(data.bundles):
        m = b.manifest
        child = h.Section(id=f"export-{i}", title=f"{data.found.rel(b.path)}")
        probe = m["probe"]
        child.add(h.kv_table([
            ("name", m["name"]), ("dtype", m["dtype"]), ("source checkpoint", m["source"]["checkpoint"]),
            ("source step", m["source"]["step"]), ("tau", m["training"]["tau"]), ("phase", m["training"]["phase"]),
            ("probe", f"{probe['passed']}/{probe['run']}，gate {'passed' if probe['gate_passed'] else 'FAILED'}" if probe else "未附带"),
        ]))
        child.add(h.table(["file", "bytes", "sha256"], [[f["path"], f["bytes"], h.Cell(f["sha256"][:16] + "…", "muted")]
                                                      for f in m["files"]]))
        sec.children.append(child)
    return sec
