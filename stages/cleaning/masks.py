"""Masks: segments `clean` kept but marked invalid, for `align-time` to apply.

They live in each cleaned episode's meta.json under `clean` (schema `clean-meta`), next to what
`clean` did to the episode:

    "clean": {
      "schema_version": 1,
      "masks": [{"stream": "camera", "t": [t0, t1], "rule": "camera.frozen", "kind": "frozen_camera"}],
      ...
    }

A mask is a closed interval on the named stream's own clock, as written in the cleaned file: every
sample of that stream with t0 <= t <= t1 is invalid. After `align-time` has estimated the stream's
clock offset (stream clock minus reference clock), a grid instant τ on the reference clock is masked
when τ + offset falls inside; the aligned frame then gets `vla.weight` 0 and `vla.valid` false.
"""

from __future__ import annotations

import numpy as np

from stages.artifacts import validate
from stages.cleaning.base import Mask

KEY = "clean"


def clean_block(meta: dict, source: str = "meta.json") -> dict | None:
    """The validated `clean` block of a cleaned episode's meta.json, or None for uncleaned data."""
    block = meta.get(KEY)
    if block is None:
        return None
    validate(block, "clean-meta", source=f"{source}: {KEY}")
    return block


def episode_masks(meta: dict, source: str = "meta.json") -> list[Mask]:
    """Every mask of an episode (empty for an episode that did not go through `clean`)."""
    block = clean_block(meta, source)
    if block is None:
        return []
    return [Mask(m["stream"], float(m["t"][0]), float(m["t"][1]), m["rule"], m["kind"]) for m in block["masks"]]


def masked(t: np.ndarray, masks: list[Mask], stream: str, *, offset_s: float = 0.0) -> np.ndarray:
    """bool [n]: which instants `t` (reference clock) fall in a mask of `stream`, whose clock reads
    t + offset_s. With offset_s = 0, `t` are the stream's own timestamps."""
    t = np.asarray(t, np.float64) + offset_s
    out = np.zeros(t.shape, bool)
    for m in masks:  # a handful of intervals per episode; vectorised over t
        if m.stream == stream:
            out |= (t >= m.t0) & (t <= m.t1)
    return out
