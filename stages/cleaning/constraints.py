"""Constraint phrases in instructions (ch07 §7.7: 保留约束短语; ch07 gotcha 7: 约束短语不能被"花式表达"压过).

`find_constraints(text)` returns the spans of every constraint clause, so that wording cleanup never
touches them, and `extract(text)` the entries written to meta.json's `constraints`
(schemas/raw-meta.schema.json): kind (speed_limit | workspace_boundary | keep_distance | negation),
the phrase verbatim, and a value converted to SI with its unit when the phrase states one.

    >>> [c["kind"] for c in extract("reach the goal, never faster than 0.3 m/s")]
    ['speed_limit']
    >>> extract("推动方块到目标，不超速")[0]["phrase"]
    '不超速'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# number + unit; the unit table converts to SI (ARCHITECTURE §3: SI units)
_NUM = r"(\d+(?:\.\d+)?)"
_SPEED_UNITS = {"m/s": 1.0, "cm/s": 0.01, "mm/s": 0.001, "meters per second": 1.0, "metres per second": 1.0,
                "米/秒": 1.0, "米每秒": 1.0, "厘米/秒": 0.01, "厘米每秒": 0.01, "毫米/秒": 0.001}
_LENGTH_UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001, "meters": 1.0, "metres": 1.0, "centimeters": 0.01,
                 "centimetres": 0.01, "米": 1.0, "厘米": 0.01, "毫米": 0.001}


def _alt(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_SPEED_VALUE = re.compile(rf"{_NUM}\s*({_alt(_SPEED_UNITS)})", re.I)
_PER_SECOND = re.compile(rf"每秒\s*{_NUM}\s*(米|厘米|毫米)")  # 每秒 0.3 米: the unit split around the number
_LENGTH_VALUE = re.compile(rf"{_NUM}\s*({_alt(_LENGTH_UNITS)})(?![a-z/])", re.I)
_CLAUSE_END = r"(?:[^,;.!?，；。！？]|(?<=\d)\.(?=\d))*"  # a phrase runs to the end of its clause (0.3 is not an end)

# (kind, pattern) in priority order: the first kind whose pattern covers a span owns it
_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("speed_limit", re.compile(
        r"(?:\b(?:never|not|no|don't|do not)\s+(?:go\s+|move\s+)?(?:faster|quicker)\s+than|"
        r"\b(?:at most|no more than|no faster than|not exceeding|not exceed|below|under|slower than|up to)\s+(?=\d)|"
        r"\b(?:speed limit|max(?:imum)? speed|top speed)\b|\bkeep(?:ing)? (?:the |your )?speed\b|\bdo not speed\b|\bdon't speed\b)"
        + _CLAUSE_END, re.I)),
    ("speed_limit", re.compile(r"(?:不超速|限速|不要超速|不得超速|速度不超过|速度不要超过|速度低于|速度保持在|不超过\s*\d|最快|最高速度)" + _CLAUSE_END)),
    ("keep_distance", re.compile(r"\b(?:keep|maintain|stay)\s+(?:a\s+|the\s+)?(?:safe\s+)?(?:distance|gap|clearance)" + _CLAUSE_END, re.I)),
    ("keep_distance", re.compile(r"\bkeep\s+(?:at least\s+)?\d+(?:\.\d+)?\s*(?:m|cm|mm)\s+(?:away|from)" + _CLAUSE_END, re.I)),
    ("keep_distance", re.compile(r"保持(?:安全)?(?:时距|车距|距离|间距)" + _CLAUSE_END)),
    ("workspace_boundary", re.compile(
        r"\b(?:stay|keep|remain)\s+(?:\w+\s+){0,2}?(?:above|below|within|inside|in|on|behind|under|over|away from)\b" + _CLAUSE_END
        + r"|\b(?:do not|don't|never)\s+(?:cross|leave|exit|go beyond|go outside|go below|go above|go lower|go higher|drop below|fall below)\b" + _CLAUSE_END
        + r"|\bkeep(?:ing)?\s+(?:the\s+)?(?:hand|gripper|arm|end effector|tool)\b" + _CLAUSE_END
        + r"|\d+(?:\.\d+)?\s*(?:cm|mm|m)\s+(?:above|over|below|under|from)\b" + _CLAUSE_END, re.I)),
    ("workspace_boundary", re.compile(r"(?:不越线|不越界|不要越线|不要越界|不得越界|不压线|不出界|不要超出|不离开|保持在|不要低于|不低于|不要高于)" + _CLAUSE_END)),
    ("negation", re.compile(r"\b(?:do not|don't|never|avoid|without|must not|mustn't|no)\b\s+\w" + _CLAUSE_END, re.I)),
    ("negation", re.compile(r"(?:不要|不能|不得|禁止|切勿|别|勿|避免)" + _CLAUSE_END)),
]


@dataclass(frozen=True)
class Constraint:
    kind: str
    start: int
    end: int
    phrase: str
    value: float | None = None
    unit: str | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "phrase": self.phrase, "value": self.value, "unit": self.unit}


def _value(kind: str, phrase: str) -> tuple[float | None, str | None]:
    m = _SPEED_VALUE.search(phrase)
    if m:
        return round(float(m.group(1)) * _SPEED_UNITS[m.group(2).lower()], 9), "m/s"
    m = _PER_SECOND.search(phrase)
    if m:
        return round(float(m.group(1)) * _LENGTH_UNITS[m.group(2)], 9), "m/s"
    if kind in ("workspace_boundary", "keep_distance"):
        m = _LENGTH_VALUE.search(phrase)
        if m:
            return round(float(m.group(1)) * _LENGTH_UNITS[m.group(2).lower()], 9), "m"
    return None, None


def find_constraints(text: str) -> list[Constraint]:
    """Non-overlapping constraint phrases in `text`, in reading order."""
    taken = [False] * len(text)
    found: list[Constraint] = []
    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(text):
            start, end = m.start(), m.end()
            while end > start and text[end - 1].isspace():
                end -= 1
            if end <= start or any(taken[start:end]):
                continue
            phrase = text[start:end]
            value, unit = _value(kind, phrase)
            found.append(Constraint(kind, start, end, phrase, value, unit))
            taken[start:end] = [True] * (end - start)
    return sorted(found, key=lambda c: c.start)


def extract(text: str) -> list[dict]:
    """meta.json `constraints` entries for `text` (schemas/raw-meta.schema.json)."""
    return [c.to_json() for c in find_constraints(text)]
