"""What every cleaning rule shares: findings, masks, the episode being worked on, the rule registry.

A rule is a function registered under an id (``values.spike``) with the finding `kind` it reports
(the fault vocabulary of the truth file where one exists, e.g. ``spike``), the actions it allows
(the first is its default), a default severity and a parameter dataclass. The recipe
(`stages/clean.py`) decides the order in which rules run; a rules YAML only switches them on/off,
picks severity and action, and sets parameters.

Row numbers in findings always refer to the input file as written (half-open ``[start, end)``),
even after earlier fixes dropped or reordered rows: every stream carries `source_row`, the input
row of each current row.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from stages.data.raw import RawEpisode
from stages.registry import Registry

SEVERITIES = ("info", "warning", "error")
ACTIONS = ("fix", "mask", "drop", "flag")  # drop = drop the episode; flag = report only


# ----------------------------------------------------------------------------- records


@dataclass
class Finding:
    rule: str
    kind: str
    severity: str
    action: str  # the action taken
    stream: str | None = None
    column: str | None = None
    rows: tuple[int, int] | None = None  # half-open, input-file rows
    t: tuple[float, float] | None = None  # that stream's own clock, seconds
    of: str | None = None  # duplicates and leaks: the episode this one copies
    detail: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"rule": self.rule, "kind": self.kind, "severity": self.severity, "action": self.action,
                               "stream": self.stream, "column": self.column}
        if self.rows is not None:
            out["rows"] = [int(self.rows[0]), int(self.rows[1])]
        if self.t is not None:
            out["t"] = [float(self.t[0]), float(self.t[1])]
        if self.of is not None:
            out["of"] = self.of
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class Mask:
    """Samples of `stream` with t0 <= t <= t1 (that stream's clock, cleaned file) are invalid."""

    stream: str
    t0: float
    t1: float
    rule: str
    kind: str

    def to_json(self) -> dict:
        return {"stream": self.stream, "t": [float(self.t0), float(self.t1)], "rule": self.rule, "kind": self.kind}


# ----------------------------------------------------------------------------- work in progress


@dataclass
class StreamWork:
    """One stream while rules fix it: its columns as numpy arrays (continuous: `t` + values; camera:
    `t`, `frame`), the input dtypes, and the input row of each current row."""

    name: str
    columns: dict[str, np.ndarray]  # column -> [n]; float64 values while being fixed
    dtypes: dict[str, np.dtype]  # input dtypes, restored when written
    source_row: np.ndarray  # int64 [n]
    frames: np.ndarray | None = None  # camera only: uint8 [F, H, W, 3] (memory-mapped)
    changed: int = 0  # values rewritten by fixes
    removed: int = 0  # rows dropped by fixes

    @classmethod
    def of(cls, name: str, df: pd.DataFrame, frames: np.ndarray | None = None) -> StreamWork:
        columns = {c: df[c].to_numpy(copy=True) for c in df.columns}
        return cls(name, columns, {c: df[c].dtype for c in df.columns}, np.arange(len(df), dtype=np.int64), frames)

    def __len__(self) -> int:
        return len(self.source_row)

    @property
    def is_camera(self) -> bool:
        return self.frames is not None

    @property
    def t(self) -> np.ndarray:
        return self.columns["t"]

    def value_columns(self) -> list[str]:
        return [c for c in self.columns if c not in ("t", "frame")]

    def values(self, column: str) -> np.ndarray:
        return self.columns[column].astype(np.float64, copy=False)

    def set(self, column: str, values: np.ndarray, changed: int) -> None:
        self.columns[column] = values
        self.changed += int(changed)

    def take(self, index: np.ndarray) -> None:
        """Keep (and reorder to) the current rows `index`."""
        index = np.asarray(index)
        self.removed += len(self) - len(index)
        self.columns = {c: v[index] for c, v in self.columns.items()}
        self.source_row = self.source_row[index]

    def frame(self) -> pd.DataFrame:
        """The stream as a table with the input dtypes (for writing)."""
        return pd.DataFrame({c: v.astype(self.dtypes[c], copy=False) for c, v in self.columns.items()})

    def source_rows(self, start: int, end: int) -> tuple[int, int]:
        """Input-file rows covered by current rows [start, end), as a half-open range."""
        src = self.source_row[max(start, 0) : max(end, start + 1)]
        return int(src.min()), int(src.max()) + 1

    def time_span(self, start: int, end: int) -> tuple[float, float]:
        t = self.t
        return float(t[max(start, 0)]), float(t[min(max(end, start + 1), len(t)) - 1])


@dataclass
class EpisodeWork:
    """An episode while the per-episode rules run over it."""

    episode: RawEpisode
    streams: dict[str, StreamWork]  # continuous
    cameras: dict[str, StreamWork]
    meta: dict  # the output meta.json (a copy; the input is never modified)
    findings: list[Finding] = field(default_factory=list)
    masks: list[Mask] = field(default_factory=list)
    drop_reasons: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)  # per-episode facts for the report (rates, constraints, ...)

    @classmethod
    def of(cls, episode: RawEpisode) -> EpisodeWork:
        return cls(
            episode=episode,
            streams={k: StreamWork.of(k, df) for k, df in episode.streams.items()},
            cameras={k: StreamWork.of(k, cam.index, cam.frames) for k, cam in episode.cameras.items()},
            meta=dict(episode.meta),
        )

    @property
    def episode_id(self) -> str:
        return self.episode.episode_id

    @property
    def dropped(self) -> bool:
        return bool(self.drop_reasons)

    def all_streams(self) -> dict[str, StreamWork]:
        return {**self.streams, **self.cameras}

    def report(self, rule: Rule, *, stream: StreamWork | None = None, column: str | None = None,
               rows: tuple[int, int] | None = None, action: str | None = None, detail: dict | None = None,
               pad: int = 0) -> Finding:
        """Record a finding over current rows `rows` of `stream` (widened by `pad` rows each side)."""
        src = span = None
        if stream is not None and rows is not None:
            a, b = max(rows[0] - pad, 0), min(rows[1] + pad, len(stream))
            src, span = stream.source_rows(a, b), stream.time_span(a, b)
        finding = Finding(rule.id, rule.kind, rule.severity, action or rule.action,
                          stream.name if stream is not None else None, column, src, span, detail=detail or {})
        self.findings.append(finding)
        return finding

    def mask(self, rule: Rule, stream: StreamWork, t0: float, t1: float) -> None:
        self.masks.append(Mask(stream.name, float(t0), float(t1), rule.id, rule.kind))

    def drop(self, rule: Rule, reason: str) -> None:
        self.drop_reasons.append(f"{rule.id}: {reason}")


@dataclass
class EpisodeResult:
    """What is left of an episode after its own rules ran (no stream data): the dataset rules add
    findings and drops to it, and the report is made of these."""

    episode_id: str
    meta: dict  # the output meta.json
    findings: list[Finding]
    masks: list[Mask]
    drop_reasons: list[str]
    notes: dict
    rows_in: dict[str, int]
    rows_out: dict[str, int]
    changed: dict[str, int]

    @classmethod
    def of(cls, work: EpisodeWork) -> EpisodeResult:
        rows_in = {k: len(df) for k, df in work.episode.streams.items()}
        rows_in.update({k: len(cam.index) for k, cam in work.episode.cameras.items()})
        streams = work.all_streams()
        return cls(work.episode_id, work.meta, work.findings, work.masks, work.drop_reasons, work.notes, rows_in,
                   {k: len(s) for k, s in streams.items()}, {k: s.changed for k, s in streams.items()})

    @property
    def dropped(self) -> bool:
        return bool(self.drop_reasons)

    def report(self, rule: Rule, *, of: str | None = None, action: str | None = None, detail: dict | None = None) -> Finding:
        finding = Finding(rule.id, rule.kind, rule.severity, action or rule.action, of=of, detail=detail or {})
        self.findings.append(finding)
        return finding

    def drop(self, rule: Rule, reason: str) -> None:
        self.drop_reasons.append(f"{rule.id}: {reason}")


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class RuleDef:
    id: str
    kind: str
    scope: str  # "episode" (runs inside one episode) or "dataset" (runs across episodes)
    actions: tuple[str, ...]  # allowed; the first is the default
    severity: str
    params: type  # a dataclass with defaults
    check: Callable[..., None]
    doc: str


@dataclass
class Rule:
    """A rule as configured for one run."""

    definition: RuleDef
    enabled: bool
    severity: str
    action: str
    params: Any

    @property
    def id(self) -> str:
        return self.definition.id

    @property
    def kind(self) -> str:
        return self.definition.kind

    def run(self, target: Any) -> None:
        if self.enabled:
            self.definition.check(target, self)


RULES: Registry[RuleDef] = Registry("clean rule")


@dataclass(frozen=True)
class NoParams:
    pass


def rule(rule_id: str, *, kind: str, actions: tuple[str, ...], severity: str = "warning",
         params: type = NoParams, scope: str = "episode") -> Callable:
    """Register `fn(target, rule)` as cleaning rule `rule_id` (target: EpisodeWork or the dataset)."""
    assert all(a in ACTIONS for a in actions) and severity in SEVERITIES and scope in ("episode", "dataset")

    def add(fn: Callable) -> Callable:
        RULES.add(rule_id, RuleDef(rule_id, kind, scope, actions, severity, params, fn, inspect.getdoc(fn) or ""))
        return fn

    return add


# ----------------------------------------------------------------------------- numeric helpers


def runs(flags: np.ndarray, *, merge: int = 0) -> np.ndarray:
    """Runs of True in a bool [n] array as half-open [start, end) pairs -> int64 [R, 2].

    Runs separated by at most `merge` False entries are joined (one fault, one finding).
    """
    flags = np.asarray(flags, bool)
    if not flags.any():
        return np.zeros((0, 2), np.int64)
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if merge > 0 and len(starts) > 1:
        keep = np.concatenate([[True], starts[1:] - ends[:-1] > merge])
        starts = starts[keep]
        ends = np.concatenate([ends[np.flatnonzero(keep)[1:] - 1], ends[-1:]])
    return np.stack([starts, ends], axis=1).astype(np.int64)


def interpolate_rows(x: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Replace x[bad] by linear interpolation over the row index from the good rows (edges hold)."""
    x = np.array(x, dtype=np.float64)
    good = ~bad
    if good.sum() == 0:
        return x
    idx = np.arange(len(x))
    x[bad] = np.interp(idx[bad], idx[good], x[good])
    return x


def robust_sigma(x: np.ndarray) -> float:
    """1.4826 × median absolute deviation: the standard deviation of Gaussian noise, blind to outliers."""
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(x - np.median(x))))
