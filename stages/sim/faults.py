"""The fault injector: what goes wrong in real robot logs, injected where the truth file says.

Every fault is made unambiguous for a competent detector, and faults never overlap:

- row faults live in disjoint windows of one stream, `GUARD` clean rows apart and `EDGE` rows away
  from the stream's ends (a gap at the very start of a log is indistinguishable from a late start);
- dropped_frames removes 2–4 consecutive rows (a gap of ≥ 3 periods);
- duplicate_timestamps repeats one row (same time, same values / bit-identical frame);
- non_monotonic_timestamps swaps the times of two adjacent rows (a step back of ~1 period ≫ jitter);
- spike adds ±max(12·σ_local, 2·std) to one cell (σ_local: robust spread of the neighbours' differences);
- nan_inf writes NaN/+Inf/-Inf into 1–2 cells of one column;
- negative_speed writes negative values into 1–3 rows of `state.ee_speed` (a magnitude);
- frozen_camera repeats one frame 4–6 more times, bit-identically, with normal timestamps (every
  genuine frame carries sensor noise, so genuine frames are never identical).

Truth rows are half-open [start, end) in the file as written, covering every row the fault involves:
for dropped_frames the two rows that straddle the gap, for duplicate/non-monotonic timestamps both
rows of the pair, for frozen_camera the source frame and its repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stages.errors import BadInput
from stages.sim import instructions
from stages.sim.rig import CAMERA, SPEED_COLUMN, STATE, StreamData

DROPPED, DUP_TS, NON_MONO = "dropped_frames", "duplicate_timestamps", "non_monotonic_timestamps"
SPIKE, NAN_INF, NEG_SPEED, FROZEN = "spike", "nan_inf", "negative_speed", "frozen_camera"
REDUNDANT, PLACEHOLDER = "redundant_text", "placeholder_text"
DUP_EPISODE, NEAR_DUP, EVAL_LEAK = "duplicate_episode", "near_duplicate_episode", "eval_leak"

# Allocation order matters: the kinds bound to one stream go first.
ROW_KINDS = (FROZEN, NEG_SPEED, DROPPED, DUP_TS, NON_MONO, SPIKE, NAN_INF)
TEXT_KINDS = (REDUNDANT, PLACEHOLDER)
EPISODE_KINDS = (DUP_EPISODE, NEAR_DUP, EVAL_LEAK)
FAULT_KINDS = ROW_KINDS + TEXT_KINDS + EPISODE_KINDS

# Row and text kinds: probability per episode. Episode kinds: share of the episodes that get a copy
# (of the train originals; of the eval episodes for eval_leak), rounded up.
DEFAULT_RATES: dict[str, float] = {
    FROZEN: 0.1, NEG_SPEED: 0.1, DROPPED: 0.15, DUP_TS: 0.1, NON_MONO: 0.1, SPIKE: 0.15, NAN_INF: 0.1,
    REDUNDANT: 0.05, PLACEHOLDER: 0.05, DUP_EPISODE: 0.03, NEAR_DUP: 0.03, EVAL_LEAK: 0.05,
}
GUARD = 3  # clean rows between two faults of one stream
EDGE = 2  # clean rows at each end of a stream
SPIKE_SIGMAS = 12.0  # spike height in local robust sigmas (detectors are asked for >= 8)
SPIKE_STDS = 2.0  # ... and at least this many standard deviations of the whole channel


@dataclass(frozen=True)
class FaultConfig:
    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))

    def rate(self, kind: str) -> float:
        return float(self.rates.get(kind, 0.0))

    def validate(self) -> None:
        for kind, rate in self.rates.items():
            if kind not in FAULT_KINDS:
                raise BadInput(f"unknown fault kind `{kind}`", caused_by=f"known: {', '.join(FAULT_KINDS)}")
            if not (0.0 <= rate <= 1.0) or rate != rate:
                raise BadInput(f"fault rate `{kind}={rate}` is out of range", caused_by="rates are probabilities in [0, 1]")


@dataclass(frozen=True)
class _Window:
    kind: str
    stream: str
    start: int  # first original row of the fault itself
    length: int  # rows the fault touches (dropped rows, repeats, cells)
    column: int | None = None


# kind -> (eligible streams (None = any), lengths to try, rows of context before/after the fault)
_SHAPES: dict[str, tuple[tuple[str, ...] | None, tuple[int, ...], int, int]] = {
    FROZEN: ((CAMERA,), (6, 5, 4), 1, 0),  # the source frame precedes the repeats
    NEG_SPEED: ((STATE,), (3, 2, 1), 0, 0),
    DROPPED: (None, (4, 3, 2), 1, 1),  # both neighbours of the gap must be present
    DUP_TS: (None, (1,), 0, 0),
    NON_MONO: (None, (2,), 0, 0),
    SPIKE: (None, (1,), 0, 0),
    NAN_INF: (None, (2, 1), 0, 0),
}


def _feasible_starts(occupied: np.ndarray, before: int, length: int, after: int) -> np.ndarray:
    """Original rows where a fault of `length` (plus context and guard) fits, vectorised."""
    n = len(occupied)
    span = before + length + after
    lo = np.arange(EDGE, n - EDGE - span + 1)  # window start (context included)
    if len(lo) == 0:
        return lo
    cum = np.concatenate([[0], np.cumsum(occupied)])
    a = np.maximum(lo - GUARD, 0)
    b = np.minimum(lo + span + GUARD, n)
    return lo[(cum[b] - cum[a]) == 0] + before


def _columns_for(kind: str, data: StreamData) -> list[int]:
    if data.values is None:
        return []
    cols = list(range(len(data.columns)))
    if kind == NEG_SPEED:
        return [data.columns.index(SPEED_COLUMN)] if SPEED_COLUMN in data.columns else []
    if kind == SPIKE:  # a spike needs a channel that varies; never the speed magnitude (its own fault)
        return [c for c in cols if data.columns[c] != SPEED_COLUMN and float(np.std(data.values[:, c])) > 1e-9]
    return cols


def _eligible(kind: str, streams: dict[str, StreamData]) -> list[str]:
    allowed, _, _, _ = _SHAPES[kind]
    names = [s for s in streams if allowed is None or s in allowed]
    if kind in (SPIKE, NAN_INF, NEG_SPEED):
        names = [s for s in names if _columns_for(kind, streams[s])]
    return names


def plan_row_faults(streams: dict[str, StreamData], cfg: FaultConfig, rng: np.random.Generator) -> list[_Window]:
    """Draw which row faults this episode gets and where (original row coordinates)."""
    occupied = {name: np.zeros(len(d.t), dtype=bool) for name, d in streams.items()}
    plan: list[_Window] = []
    for kind in ROW_KINDS:
        if rng.random() >= cfg.rate(kind):
            continue
        _, lengths, before, after = _SHAPES[kind]
        options = []
        for name in _eligible(kind, streams):
            for length in lengths:
                starts = _feasible_starts(occupied[name], before, length, after)
                if len(starts):
                    options.append((name, length, starts))
                    break
        if not options:
            continue  # no room left in any stream: this episode gets no fault of this kind
        name, length, starts = options[int(rng.integers(len(options)))]
        start = int(starts[int(rng.integers(len(starts)))])
        cols = _columns_for(kind, streams[name]) if kind in (SPIKE, NAN_INF, NEG_SPEED) else []
        column = int(cols[int(rng.integers(len(cols)))]) if cols else None
        occupied[name][start - before:start + length + after] = True
        plan.append(_Window(kind, name, start, length, column))
    return plan


def _spike_height(x: np.ndarray, r: int) -> tuple[float, float]:
    """(height, local sigma): ≥ SPIKE_SIGMAS robust sigmas of the neighbours' differences."""
    neigh = np.concatenate([x[max(0, r - 8):r], x[r + 1:r + 9]])
    local = 1.4826 * float(np.median(np.abs(np.diff(neigh)))) if len(neigh) > 2 else 0.0
    return max(SPIKE_SIGMAS * local, SPIKE_STDS * float(np.std(x)), 1e-3), local


def apply_row_faults(streams: dict[str, StreamData], plan: list[_Window], rng: np.random.Generator) -> tuple[dict[str, StreamData], list[dict]]:
    """Apply `plan`; return the streams as written and one truth record per fault."""
    out: dict[str, StreamData] = {}
    faults: list[dict] = []
    for name, data in streams.items():
        mine = [w for w in plan if w.stream == name]
        n = len(data.t)
        counts = np.ones(n, dtype=np.int64)
        for w in mine:
            if w.kind == DROPPED:
                counts[w.start:w.start + w.length] = 0
            elif w.kind == DUP_TS:
                counts[w.start] = 2
        src = np.repeat(np.arange(n), counts)  # written row -> original row (sorted)
        t = data.t[src]
        values = data.values[src] if data.values is not None else None
        frames = data.frames[src] if data.frames is not None else None
        pos = lambda r: int(np.searchsorted(src, r, side="left"))  # noqa: E731 - first written row of original row r
        for w in mine:
            p = pos(w.start)
            col = data.columns[w.column] if w.column is not None else None
            detail: dict = {}
            if w.kind == DROPPED:
                rows = (p - 1, p + 1)
                detail = {"dropped_rows": w.length}
            elif w.kind == DUP_TS:
                rows = (p, p + 2)
            elif w.kind == NON_MONO:
                t[[p, p + 1]] = t[[p + 1, p]]
                rows = (p, p + 2)
            elif w.kind == SPIKE:
                height, local = _spike_height(data.values[:, w.column], w.start)
                sign = 1.0 if rng.random() < 0.5 else -1.0
                values[p, w.column] += sign * height
                rows = (p, p + 1)
                detail = {"height": sign * height, "local_sigma": local}
            elif w.kind == NAN_INF:
                bad = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
                values[p:p + w.length, w.column] = bad
                rows = (p, p + w.length)
                detail = {"value": "nan" if bad != bad else ("inf" if bad > 0 else "-inf")}
            elif w.kind == NEG_SPEED:
                values[p:p + w.length, w.column] = -(np.abs(values[p:p + w.length, w.column]) + rng.uniform(0.05, 0.2, w.length))
                rows = (p, p + w.length)
            elif w.kind == FROZEN:
                frames[p:p + w.length] = frames[p - 1]
                rows = (p - 1, p + w.length)
                detail = {"repeats": w.length}
            else:  # pragma: no cover - ROW_KINDS is closed
                raise ValueError(w.kind)
            span = t[rows[0]:rows[1]]
            faults.append({"kind": w.kind, "stream": name, "column": col, "rows": [int(rows[0]), int(rows[1])],
                           "t": [float(span.min()), float(span.max())], "detail": detail})
        out[name] = StreamData(t=t, values=values, columns=data.columns, frames=frames, t_true=data.t_true[src])
    faults.sort(key=lambda f: (f["stream"], f["rows"][0]))
    return out, faults


def text_fault(instruction: str, language: str, cfg: FaultConfig, rng: np.random.Generator) -> tuple[str, dict | None]:
    """At most one text fault per episode: (instruction as written, truth record or None)."""
    redundant = rng.random() < cfg.rate(REDUNDANT)
    placeholder = rng.random() < cfg.rate(PLACEHOLDER)
    if placeholder:
        text = instructions.placeholder(rng)
        return text, {"kind": PLACEHOLDER, "stream": None, "column": None, "detail": {"written": text}}
    if redundant:
        text = instructions.redundant(instruction, language, rng)
        return text, {"kind": REDUNDANT, "stream": None, "column": None, "detail": {"written": text}}
    return instruction, None
