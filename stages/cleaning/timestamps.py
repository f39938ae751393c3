"""Time-domain rules, run first (ch07 §7.7: 优先做时域对齐清洗): every stream's own clock must
increase, once per sample, at its rate.

Detectors are pure functions of the clock `t` [n] (known-answer tested); the rules turn their
output into findings and actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.cleaning.base import EpisodeWork, Rule, StreamWork, robust_sigma, rule, runs
from stages.cleaning.camera import frame_differences

# ----------------------------------------------------------------------------- detectors


def out_of_order(t: np.ndarray) -> np.ndarray:
    """bool [n]: rows whose time is earlier than some row before them (t < running max)."""
    bad = np.zeros(len(t), bool)
    if len(t) > 1:
        bad[1:] = t[1:] < np.maximum.accumulate(t)[:-1]
    return bad


def repeated(t: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """bool [n]: rows whose time equals the previous row's (within `tol` s); the first of a pair is kept."""
    bad = np.zeros(len(t), bool)
    if len(t) > 1:
        bad[1:] = np.abs(np.diff(t)) <= tol
    return bad


def nominal_period(t: np.ndarray) -> float:
    """Median sample interval (s) of a sorted clock, ignoring repeats; 0 when it cannot be told."""
    dt = np.diff(t)
    dt = dt[dt > 0]
    return float(np.median(dt)) if len(dt) else 0.0


def gaps(t: np.ndarray, *, factor: float, sigmas: float) -> tuple[np.ndarray, float]:
    """Intervals too long for the stream's rate: bool [n-1] over diff(t), and the threshold (s).

    threshold = max(factor × median interval, median + sigmas × robust σ of the intervals), so
    clock jitter alone does not count as a drop while one missing sample (2 × the period) does.
    """
    dt = np.diff(t)
    period = nominal_period(t)
    if period <= 0:
        return np.zeros(len(dt), bool), 0.0
    threshold = max(factor * period, period + sigmas * robust_sigma(dt[dt > 0]))
    return dt > threshold, threshold


# ----------------------------------------------------------------------------- rules


def roughness(stream: StreamWork, order: np.ndarray) -> float:
    """How jagged the stream's samples are when read in `order`: the summed absolute second
    difference of every value column (each scaled by its median absolute first difference), or for a
    camera the summed frame-to-frame change. Lower = more plausible order."""
    if stream.is_camera:
        diff, _ = frame_differences(stream.frames, stream.columns["frame"][order])
        return float(diff[1:].sum())
    x = np.stack([stream.values(c) for c in stream.value_columns()], axis=1)[order]  # [n, D]
    x = x[:, np.isfinite(x).all(axis=0)]
    scale = np.median(np.abs(np.diff(x, axis=0)), axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return float(np.abs(np.diff(x, n=2, axis=0) / scale).sum())


@rule("timestamps.non_monotonic", kind="non_monotonic_timestamps", actions=("fix", "drop", "flag"))
def non_monotonic(work: EpisodeWork, rule: Rule) -> None:
    """Rows whose time is earlier than a row before them. fix: restore time order, in whichever way
    the samples say: if the rows read smoother in file order, the clock values were swapped and are
    sorted alone ("sort_clock"); otherwise the rows were logged out of order and are sorted by their
    clock ("sort_rows"). The finding covers the out-of-order rows and the row before them."""
    for stream in work.all_streams().values():
        t = stream.t
        bad = out_of_order(t)
        found = runs(bad, merge=1)
        if not len(found):
            continue
        order = np.argsort(t, kind="stable")
        keep_rows = roughness(stream, np.arange(len(t))) < roughness(stream, order)
        fix = "sort_clock" if keep_rows else "sort_rows"
        for start, end in found:
            work.report(rule, stream=stream, rows=(start - 1, end),
                        detail={"rows_out_of_order": int(bad[start:end].sum()), "fix": fix if rule.action == "fix" else None})
        if rule.action == "fix" and keep_rows:
            stream.columns["t"] = t[order]
            stream.changed += int(bad.sum())
        elif rule.action == "fix":
            stream.take(order)
        elif rule.action == "drop":
            work.drop(rule, f"`{stream.name}` clock goes backwards {len(found)} time(s)")


@dataclass(frozen=True)
class RepeatParams:
    tolerance_s: float = 1e-9  # times closer than this count as the same instant


@rule("timestamps.duplicate", kind="duplicate_timestamps", actions=("fix", "flag"), params=RepeatParams)
def duplicate(work: EpisodeWork, rule: Rule) -> None:
    """Rows sharing a timestamp with the previous row (a logger writing a sample twice).
    fix: keep the first row of each instant. The finding covers both rows of the pair."""
    for stream in work.all_streams().values():
        order = np.argsort(stream.t, kind="stable")
        bad_sorted = repeated(stream.t[order], rule.params.tolerance_s)
        if not bad_sorted.any():
            continue
        bad = np.zeros(len(order), bool)
        bad[order] = bad_sorted
        for start, end in runs(bad):
            work.report(rule, stream=stream, rows=(start - 1, end), detail={"repeats": int(end - start)})
        if rule.action == "fix":
            stream.take(np.flatnonzero(~bad))


@dataclass(frozen=True)
class GapParams:
    factor: float = 1.5  # an interval longer than factor × the median interval is a gap
    sigmas: float = 6.0  # ... and longer than median + sigmas × the robust σ of the intervals (jitter)
    mask_longer_than_s: float = 0.12  # mask gaps longer than this; shorter ones are left to interpolation


@rule("timestamps.gap", kind="dropped_frames", actions=("mask", "drop", "flag"), params=GapParams)
def gap(work: EpisodeWork, rule: Rule) -> None:
    """Missing samples (frame drops): an interval much longer than the stream's period.
    mask: the time between the two samples around a long gap is marked invalid. The finding covers
    the two rows around the gap."""
    p = rule.params
    for stream in work.all_streams().values():
        t = stream.t
        flags, threshold = gaps(t, factor=p.factor, sigmas=p.sigmas)
        period = nominal_period(t)
        for start, end in runs(flags):  # flags index intervals: interval i lies between rows i and i+1
            missing = int(np.round((t[start + 1 : end + 1] - t[start:end]) / period).sum() - (end - start))
            span = float(t[end] - t[start])
            masked = rule.action == "mask" and span > p.mask_longer_than_s
            work.report(rule, stream=stream, rows=(start, end + 1), action="mask" if masked else "flag",
                        detail={"missing": missing, "gap_s": round(span, 6), "threshold_s": round(threshold, 6)})
            if masked:
                work.mask(rule, stream, t[start], t[end])
        if rule.action == "drop" and flags.any():
            work.drop(rule, f"`{stream.name}` has {int(flags.sum())} gap(s)")


def stream_rates(work: EpisodeWork) -> dict[str, float]:
    """Measured rate (Hz) of every stream: 1 / median interval."""
    out = {}
    for name, stream in work.all_streams().items():
        period = nominal_period(np.sort(stream.t))
        out[name] = 1.0 / period if period > 0 else 0.0
    return out
