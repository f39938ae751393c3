"""`vla report`: one self-contained HTML page that makes a whole pipeline run visible.

    index = render_report("runs/demo", "runs/demo/report.html")

The page, in order: an overview of what was found, diagnostic signals (ch07 gotchas), data quality
(clean rule counts, align-time offsets with P50/P95), training losses per phase with the annealed
weights and the temperature, token buckets, gradient norms / angles / PCGrad hit rate, retrieval
R@K and MI-bound curves, the probe table against its thresholds, the closed-loop evaluation and the
export bundle. A section whose artifact is missing says so in one line. Everything is read and
validated before the page is written (atomically); the same inputs give the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

from stages.artifacts import atomic_file, check_writable_parent, schema_errors
from stages.errors import BadInput, VlaError
from stages.progress import NullReporter, Reporter
from stages.report import html as h
from stages.report.discover import MAX_DEPTH, RunArtifacts, discover
from stages.report.load import RunData, load_run
from stages.report.sections_data import data_quality_section
from stages.report.sections_eval import closed_loop_section, export_section, probe_section, retrieval_section
from stages.report.sections_training import buckets_section, gradients_section, losses_section
from stages.report.signals import Signal, signals, signals_section

SECTIONS = (data_quality_section, losses_section, buckets_section, gradients_section, retrieval_section, probe_section,
            closed_loop_section, export_section)


def check_output(out: Path, *, overwrite: bool) -> None:
    """Exit 2 before any work when OUT cannot (or must not) be written."""
    if out.is_dir():
        raise BadInput(f"--out `{out}` is a directory", caused_by="expected a file path, e.g. report.html")
    if out.exists() and not overwrite:
        raise BadInput(f"output `{out}` already exists", hint="choose another --out, or pass --overwrite")
    check_writable_parent(out, what="report")
    if out.exists() and not os.access(out, os.W_OK):
        raise BadInput(f"cannot write report `{out}`", caused_by="the existing file is read-only")


def _artifact_rows(data: RunData) -> list[list]:
    f = data.found
    rows: list[list] = []
    for path, r in data.clean:
        rows.append(["清洗数据集", f.rel(path), f"{r['summary']['kept']}/{r['summary']['episodes']} 回合保留"])
    for path, r in data.aligned:
        rows.append(["对齐数据集", f.rel(path), f"{r['summary']['episodes']} 回合，{r['summary']['frames']} 帧，{r['fps']} fps"])
    for path in f.truth:
        rows.append(["注入真值", f.rel(path), "truth"])
    for ck in data.checkpoints:
        logs = [n for n in ("metrics", "gradients", "buckets") if getattr(ck, n) is not None]
        step = f"step {ck.state['step']}，" if ck.state else ""
        rows.append(["检查点", f.rel(ck.path), f"{step}logs: {', '.join(logs) or '无'}" + ("，closed_loop.json" if ck.closed_loop else "")])
    for p in data.probes:
        s = p.report["summary"]
        rows.append(["体检报告", f.rel(p.path), f"{s['passed']}/{s['run']} 通过"])
    for path, _ in data.closed_loop:
        rows.append(["闭环评测", f.rel(path), "closed-loop-eval"])
    for b in data.bundles:
        rows.append(["导出包", f.rel(b.path), f"{b.manifest['name']}（{b.manifest['dtype']}）"])
    return rows


def overview_section(data: RunData) -> h.Section:
    sec = h.Section(id="overview", title="概览")
    sec.add(h.table(["产物", "路径（相对运行目录）", "内容"], _artifact_rows(data)))
    absent = [name for name, items in (("清洗数据集", data.clean), ("对齐数据集", data.aligned), ("检查点", data.checkpoints),
                                        ("体检报告", data.probes), ("导出包", data.bundles)) if not items]
    if absent:
        sec.add(h.missing(f"未找到：{'、'.join(absent)}。对应小节只显示一行说明。"))
    return sec


def build_page(run_dir: str | os.PathLike, *, created_by: str = "vla report",
               reporter: Reporter = NullReporter()) -> tuple[str, dict]:
    """(HTML text, index) for the run in `run_dir`; BadInput when it holds nothing recognisable."""
    run_dir = Path(run_dir)
    found = discover(run_dir)
    if found.empty():
        raise BadInput(f"`{run_dir}` holds no run artifacts",
                       caused_by=f"no clean_report.json, align_report.json, checkpoint, probe report, closed_loop.json or "
                                 f"export manifest within {MAX_DEPTH} levels",
                       hint="vla report RUN_DIR --out report.html, with the folder examples/pipeline.sh wrote")
    data = load_run(found)
    flags = signals(data)
    sections = [overview_section(data), signals_section(flags)]
    with reporter.task("report", total=len(SECTIONS)) as advance:
        for build in SECTIONS:
            sections.append(build(data))
            advance(1)
    figures = [fig.id for s in sections for fig in s.all_figures()]
    if len(set(figures)) != len(figures):
        raise AssertionError(f"duplicate figure ids: {figures}")
    title = f"vla 运行报告：{run_dir.resolve().name or run_dir}"
    subtitle = f"运行目录 {run_dir} · {len(figures)} 幅图 · {created_by}"
    text = h.page(title, subtitle, sections, footer=f"{created_by}. 自包含页面：无外部资源，图为内嵌 PNG。")
    return text, _index(found, sections, flags, created_by)


def _index(found: RunArtifacts, sections: list[h.Section], flags: list[Signal], created_by: str) -> dict:
    def entry(s: h.Section) -> dict:
        return {"id": s.id, "title": s.title, "status": s.status, "figures": [f.id for f in s.all_figures()]}

    return {
        "schema_version": 1,
        "created_by": created_by,
        "run_dir": str(found.root),
        "figures": [f.id for s in sections for f in s.all_figures()],
        "sections": [entry(s) for s in sections],
        "artifacts": {
            "clean": [found.rel(p) for p in found.clean], "aligned": [found.rel(p) for p in found.aligned],
            "checkpoints": [found.rel(p) for p in found.checkpoints], "probes": [found.rel(p) for p in found.probes],
            "closed_loop": [found.rel(p) for p in found.closed_loop], "bundles": [found.rel(p) for p in found.bundles],
            "truth": [found.rel(p) for p in found.truth],
        },
        "signals": [{"level": s.level, "text": s.text} for s in flags],
    }


def render_report(run_dir: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
                  created_by: str = "vla report", reporter: Reporter = NullReporter()) -> dict:
    """Write the report of `run_dir` to `out` (atomically) and return its index (schema `report-index`)."""
    out = Path(out)
    check_output(out, overwrite=overwrite)
    text, index = build_page(run_dir, created_by=created_by, reporter=reporter)
    data = text.encode("utf-8")
    with atomic_file(out) as tmp:
        tmp.write_bytes(data)
    index.update({"out": str(out), "bytes": len(data)})
    errors = schema_errors(index, "report-index")
    if errors:
        raise VlaError("the report index violates schema `report-index`", caused_by=errors[0])
    return index
