"""The ten items of the transferability check-up (ch07 §7.10), one module each, and the health metrics.

| # | name                         | module          | gate (default)      |
|---|------------------------------|-----------------|---------------------|
| 1 | latency_robustness           | latency         | < 50 ms             |
| 2 | spectral_smoothness          | smoothness      | ≤ 1.2 × teacher     |
| 3 | open_set_rejection           | open_set        | AUROC ≥ 0.9         |
| 4 | cycle_consistency            | cycle           | < 0.25 (scale-free) |
| 5 | constraint_compliance        | compliance      | ≥ 0.98              |
| 6 | randomisation_stress         | stress          | drop < 0.20         |
| 7 | low_bandwidth_executability  | bandwidth       | error < 0.2         |
| 8 | teacher_consistency          | teacher         | < 0.5 nats/dim      |
| 9 | near_frame_negatives         | near_frames     | MI drop < 0.10      |
| 10 | data_leak_scan              | leak            | 0 leaked episodes   |

`CHECKS` is the registry (a new check is one module and one line below); `metrics` holds the
health metrics the align stage also reports (`retrieval_metrics`, `info_nce_bound`, ...).
Each check's exact definition is in its module docstring and in docs/probes.md.
"""

from __future__ import annotations

from stages.probes import (bandwidth, compliance, cycle, latency, leak, near_frames, open_set, smoothness, stress,
                           teacher)
from stages.probes.check import Check, CheckSpec, Measurement
from stages.registry import Registry

CHECKS: Registry[Check] = Registry("probe check")
for _module in (latency, smoothness, open_set, cycle, compliance, stress, bandwidth, teacher, near_frames, leak):
    CHECKS.add(_module.CHECK.spec.name, _module.CHECK)


def ordered() -> list[Check]:
    """The checks in the chapter's order (1..10)."""
    return sorted((CHECKS.get(n) for n in CHECKS.names()), key=lambda c: c.spec.id)


def by_id(number: int) -> Check | None:
    return next((c for c in ordered() if c.spec.id == number), None)


__all__ = ["CHECKS", "Check", "CheckSpec", "Measurement", "by_id", "ordered"]
