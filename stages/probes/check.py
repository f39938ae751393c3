"""What a check-up item is: a spec (number, name, gate, suggestion), a parameter dataclass, a measure.

    @dataclass(frozen=True)
    class Params:                     # the check's own knobs; `--thresholds` may set any of them
        threshold: float = 0.9
        def problems(self): ...       # optional: [(field, why)] for values out of range

    SPEC = CheckSpec(3, "open_set_rejection", "...", comparator=">=", unit="AUROC", suggestion="...")

    def measure(ctx: ProbeContext, params: Params) -> Measurement: ...

A measurement whose value is None failed to produce a number (e.g. a constant policy has no phase);
it never passes. A skipped one had no data to run on (e.g. no episodes of unseen tasks); it does
not pass either, so a gate can never be met by skipping checks.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
    ">=": lambda v, t: v >= t,
}


@dataclass(frozen=True)
class CheckSpec:
    id: int  # 1..10, the order of ch07 §7.10
    name: str  # registry name, also the key in `--thresholds`
    title: str
    comparator: str  # how value compares with the threshold to pass: "<", "<=" or ">="
    unit: str
    suggestion: str  # what to change when it fails (from the chapters)
    what: str  # one line: what is measured (the full definition lives in docs/probes.md)


@dataclass
class Measurement:
    value: float | None
    details: dict = field(default_factory=dict)
    episodes: int = 0
    samples: int = 0
    reason: str | None = None  # why the value is None, or why the check was skipped
    skipped: bool = False


@dataclass(frozen=True)
class Check:
    spec: CheckSpec
    params: type  # dataclass with at least `threshold: float`
    measure: Callable[[Any, Any], Measurement]
    prepare: Callable[[Any, Any], None] | None = None  # declares what shared outputs the check will need

    def default_params(self) -> Any:
        return self.params()

    def passes(self, value: float | None, threshold: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return COMPARATORS[self.spec.comparator](value, threshold)


def params_from(check: Check, overrides: dict[str, Any], *, source: str) -> Any:
    """The check's Params with `overrides` applied; unknown keys and wrong types are BadInput."""
    from stages.errors import BadInput

    base = check.default_params()
    hints = typing.get_type_hints(type(base))
    known = {f.name for f in dataclasses.fields(base)}
    values = {}
    for key, value in overrides.items():
        if key not in known:
            raise BadInput(f"`{source}`: unknown parameter `{check.spec.name}.{key}`", caused_by=f"known: {', '.join(sorted(known))}")
        values[key] = _coerce(value, hints[key], f"{check.spec.name}.{key}", source)
    params = dataclasses.replace(base, **values)
    for key, why in params.problems() if hasattr(params, "problems") else ():
        raise BadInput(f"`{source}`: field `{check.spec.name}.{key}` is invalid", caused_by=why)
    return params


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coerce(value: Any, hint: Any, name: str, source: str) -> Any:
    """`value` read from YAML as the field's declared type (float, int, bool, str, tuple[float, ...], X | None)."""
    from stages.errors import BadInput

    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is float and _is_number(value):
            return float(value)
        if option is int and _is_number(value) and float(value).is_integer():
            return int(value)
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is tuple and isinstance(value, list) and all(_is_number(v) for v in value):
            return tuple(float(v) for v in value)
    expected = " or ".join("null" if o is type(None) else ("a list of numbers" if typing.get_origin(o) is tuple else o.__name__)
                           for o in options)
    raise BadInput(f"`{source}`: field `{name}` must be {expected}", caused_by=f"got {value!r}")
