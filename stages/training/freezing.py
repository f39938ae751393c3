"""Freeze and unfreeze parameters by glob over their names (ch07 §7.5: per-phase freeze lists).

Globs use `fnmatch` rules on the full dotted name, case-sensitive; `*` also crosses dots, so
`vision.*` covers every vision parameter and `*.norm*.weight` every norm weight.

A phase's trainable set is computed from the *baseline* (what the recipe left trainable when the
run started, e.g. a frozen pretrained text backbone) and never from the previous phase, so it is a
pure function of the phase and a resumed run recomputes it exactly:

    trainable = (baseline − matches(freeze)) ∪ matches(unfreeze)
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence

import torch

log = logging.getLogger("vla")


def matching(names: Iterable[str], pattern: str) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def trainable_names(
    names: Sequence[str],
    baseline: Iterable[str],
    *,
    freeze: Sequence[str] = (),
    unfreeze: Sequence[str] = (),
    where: str = "freeze",
) -> set[str]:
    """The set of trainable names after applying `freeze` then `unfreeze` globs to `baseline`.

    A glob that matches no parameter is almost always a typo: it is logged as a warning.
    """
    trainable = set(baseline)
    for kind, globs, add in (("freeze", freeze, False), ("unfreeze", unfreeze, True)):
        for pattern in globs:
            hits = matching(names, pattern)
            if not hits:
                log.warning("%s: %s glob `%s` matches no parameter", where, kind, pattern)
            if add:
                trainable.update(hits)
            else:
                trainable.difference_update(hits)
    return trainable


def apply(model: torch.nn.Module, trainable: set[str]) -> list[torch.nn.Parameter]:
    """Set `requires_grad` from `trainable`; return the trainable parameters in model order."""
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
        if name in trainable:
            params.append(p)
    return params


def freeze(model: torch.nn.Module, globs: Sequence[str]) -> list[str]:
    """Freeze every parameter matching one of `globs`; returns the frozen names (sorted)."""
    names = [n for n, _ in model.named_parameters()]
    current = {n for n, p in model.named_parameters() if p.requires_grad}
    keep = trainable_names(names, current, freeze=globs)
    apply(model, keep)
    return sorted(current - keep)


def unfreeze(model: torch.nn.Module, globs: Sequence[str]) -> list[str]:
    """Make every parameter matching one of `globs` trainable; returns the newly trainable names."""
    names = [n for n, _ in model.named_parameters()]
    current = {n for n, p in model.named_parameters() if p.requires_grad}
    keep = trainable_names(names, current, unfreeze=globs)
    apply(model, keep)
    return sorted(keep - current)
