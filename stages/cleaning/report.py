"""`clean_report.json` (schema `clean-report`) and the rows of the terminal summary."""

from __future__ import annotations

from collections import Counter, defaultdict

from stages.cleaning.base import RULES
from stages.cleaning.config import CleanConfig
from stages.cleaning.episodes import DatasetWork, task_counts


def build_report(data: DatasetWork, config: CleanConfig, *, source: str, output: str, eval_source: str | None,
                 created_by: str) -> dict:
    episodes = {}
    for res in data.results.values():
        episodes[res.episode_id] = {
            "status": "dropped" if res.dropped else "kept",
            "reasons": list(res.drop_reasons),
            "instruction": str(res.meta.get("instruction", "")),
            "constraints": res.meta.get("constraints", []),
            "rows_in": res.rows_in,
            "rows_out": res.rows_out,
            "changed": res.changed,
            "masked_s": round(sum(m.t1 - m.t0 for m in res.masks), 6),
            "findings": [f.to_json() for f in res.findings],
        }
    all_findings = [f for res in data.results.values() for f in res.findings] + data.findings
    counts = {}
    for rule_id in RULES.names():
        mine = [f for f in all_findings if f.rule == rule_id]
        hit = {res.episode_id for res in data.results.values() for f in res.findings if f.rule == rule_id}
        counts[rule_id] = {"kind": RULES.get(rule_id).kind, "enabled": config.rules[rule_id].enabled,
                           "findings": len(mine), "episodes": len(hit), "actions": dict(Counter(f.action for f in mine))}
    kept = [r for r in data.results.values() if not r.dropped]
    return {
        "schema_version": 1,
        "created_by": created_by,
        "input": source,
        "output": output,
        "eval": eval_source,
        "summary": {
            "episodes": len(data.results),
            "kept": len(kept),
            "dropped": len(data.results) - len(kept),
            "findings": len(all_findings),
            "rows_in": sum(sum(r.rows_in.values()) for r in data.results.values()),
            "rows_out": sum(sum(r.rows_out.values()) for r in kept),
            "values_fixed": sum(sum(r.changed.values()) for r in kept),
            "masked_s": round(sum(m.t1 - m.t0 for r in kept for m in r.masks), 6),
            "eval_episodes": len(data.eval_fingerprints),
        },
        "counts": counts,
        "kinds": dict(sorted(Counter(f.kind for f in all_findings).items())),
        "tasks": dict(sorted(task_counts(data.results.values()).items())),
        "drop_reasons": dict(sorted(Counter(reason.split(":")[0] for r in data.results.values() for reason in r.drop_reasons).items())),
        "episodes": episodes,
        "dataset_findings": [f.to_json() for f in data.findings],
        "matches": [m.to_json() for m in data.matches],
        "config": config.to_json(),
    }


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """Key/value rows for the terminal: totals, then one row per rule that found something."""
    s = report["summary"]
    rows = [
        ("episodes", f"{s['episodes']} in, {s['kept']} kept, {s['dropped']} dropped"),
        ("rows", f"{s['rows_in']} in, {s['rows_out']} out, {s['values_fixed']} values fixed, {s['masked_s']:.2f} s masked"),
    ]
    for rule_id, c in report["counts"].items():
        if c["findings"]:
            actions = ", ".join(f"{n} {a}" for a, n in sorted(c["actions"].items()))
            rows.append((f"{rule_id} ({c['kind']})", f"{c['findings']} in {c['episodes']} episode(s): {actions}"))
    if report["drop_reasons"]:
        rows.append(("dropped by", ", ".join(f"{k} {v}" for k, v in report["drop_reasons"].items())))
    for f in report["dataset_findings"]:
        rows.append((f"warning: {f['kind']}", str(f.get("detail", {}))))
    rows.append(("report", f"{report['output']}/clean_report.json"))
    return rows


def findings_by_episode(report: dict) -> dict[str, list[dict]]:
    """Episode id -> its findings (JSON form), as the scorer reads them."""
    out: dict[str, list[dict]] = defaultdict(list)
    for episode_id, entry in report["episodes"].items():
        out[episode_id].extend(entry["findings"])
    return dict(out)

