"""Score a clean report against the injected truth of a recorded demo dataset (schema `truth`).

Match rule (one rule for every kind):
  - same episode and same `kind`;
  - when the truth fault names a stream, the finding names the same stream;
  - when both carry rows, the half-open row ranges overlap (rows of the input file as written);
  - episode-level faults (no stream) match on the episode id; for duplicates and leaks the truth is
    recorded on the copy, so that is where the finding must be (`of` agreement is reported apart).

Precision of a kind = findings of that kind matching some truth fault / findings of that kind;
recall = truth faults matched by some finding / truth faults. A kind with nothing on a side scores
1.0 on that side (nothing to miss, nothing wrong), with the counts alongside so it can be told apart.
"""

from __future__ import annotations

from dataclasses import dataclass

TRUTH_KINDS = (
    "dropped_frames", "duplicate_timestamps", "non_monotonic_timestamps", "spike", "nan_inf", "negative_speed",
    "frozen_camera", "redundant_text", "placeholder_text", "duplicate_episode", "near_duplicate_episode", "eval_leak",
)


@dataclass
class KindScore:
    kind: str
    truth: int  # truth faults of this kind
    recalled: int  # ... matched by at least one finding
    findings: int  # findings of this kind
    correct: int  # ... matching at least one truth fault
    of_agree: int | None = None  # duplicates/leaks: matched findings naming the same original

    @property
    def precision(self) -> float:
        return self.correct / self.findings if self.findings else 1.0

    @property
    def recall(self) -> float:
        return self.recalled / self.truth if self.truth else 1.0

    def to_json(self) -> dict:
        return {"kind": self.kind, "truth": self.truth, "recalled": self.recalled, "findings": self.findings,
                "correct": self.correct, "precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "of_agree": self.of_agree}


def _overlap(a: list | tuple | None, b: list | tuple | None) -> bool:
    if a is None or b is None:
        return True
    return a[0] < b[1] and b[0] < a[1]


def matches(finding: dict, fault: dict) -> bool:
    """Does one report finding (JSON) match one truth fault of the same episode?"""
    if finding.get("kind") != fault.get("kind"):
        return False
    stream = fault.get("stream")
    if stream is not None:
        if finding.get("stream") != stream:
            return False
        return _overlap(finding.get("rows"), fault.get("rows"))
    return True


def score(report: dict, truth: dict, *, kinds: tuple[str, ...] = TRUTH_KINDS) -> dict[str, KindScore]:
    """Per-kind precision/recall of `report` (clean-report) against `truth` (truth schema).

    Only episodes present in both count; truth episodes of another split (eval) are ignored.
    """
    found = {eid: entry["findings"] for eid, entry in report["episodes"].items()}
    faults = {eid: ep.get("faults", []) for eid, ep in truth["episodes"].items() if eid in found}
    out = {k: KindScore(k, 0, 0, 0, 0, 0 if k in ("duplicate_episode", "near_duplicate_episode", "eval_leak") else None) for k in kinds}
    for eid, episode_faults in faults.items():
        for fault in episode_faults:
            if fault["kind"] not in out:
                continue
            s = out[fault["kind"]]
            s.truth += 1
            hits = [f for f in found[eid] if matches(f, fault)]
            if hits:
                s.recalled += 1
                if s.of_agree is not None and any(f.get("of") == fault.get("of") for f in hits):
                    s.of_agree += 1
    for eid, findings in found.items():
        episode_faults = faults.get(eid, [])
        for f in findings:
            if f.get("kind") not in out:
                continue
            s = out[f["kind"]]
            s.findings += 1
            if any(matches(f, fault) for fault in episode_faults):
                s.correct += 1
    return out


def score_table(scores: dict[str, KindScore]) -> list[dict]:
    return [s.to_json() for s in scores.values()]


def worst(scores: dict[str, KindScore]) -> tuple[float, float]:
    """The lowest precision and the lowest recall over kinds that occur on either side."""
    live = [s for s in scores.values() if s.truth or s.findings]
    if not live:
        return 1.0, 1.0
    return min(s.precision for s in live), min(s.recall for s in live)
