"""Instruction identity and constraint hard negatives for language pretraining (ch07 §7.4, §7.7, gotcha 7).

Identity. Two instructions are paraphrases when they ask for the same thing: the same task family
(the dataset's vla meta `task_name`) under the same constraints (kind and value, in SI units). The
constraint clause is part of the identity: "push the puck to the goal" and "把冰球推到目标位置，不超速：
速度不超过 0.3 米/秒" are different commands, while the English and Chinese wordings of one command are
the same. Constraints come from the episode's meta `constraints` (written by `vla clean`), else they
are parsed from the text by `stages.cleaning.constraints.find_constraints`.

Hard negatives. For an instruction with a constraint clause, `hard_negatives` synthesises

- `removed`: the main clause alone (the text before the separator that precedes the first
  constraint), i.e. the same task without its constraint;
- `negated`: the constraint tail with its polarity flipped by a minimal edit ("never faster than" →
  "faster than", "at least" → "at most", "不超速" → "超速", "以上" → "以下", "慢慢来" → "快一点"), so
  the text stays almost identical while the meaning turns around. When no edit applies, a fixed
  violating prefix is put in front of the clause ("it is fine to break this: …" / "可以违反：…").

Their identities: `removed` is (task, no constraint) — a real command, a positive of any genuine
unconstrained instruction of that task; `negated` is (task, constraints, negated) — never a positive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from stages.cleaning.constraints import find_constraints

Identity = tuple  # (task_name, ((kind, value), ...), variant) — hashable, comparable

_SEPARATORS = ",;，；。"
_CJK = re.compile(r"[\u4e00-\u9fff]")

# Minimal edits that flip a constraint's polarity, applied simultaneously (so above <-> below do not undo).
_SWAP_EN = {
    "never": "", "do not": "", "don't": "", "must not": "", "not": "", "no more than": "more than",
    "no faster than": "faster than", "at most": "at least", "at least": "at most", "under": "over", "over": "under",
    "below": "above", "above": "below", "lower": "higher", "higher": "lower", "inside": "outside", "within": "outside",
    "slowly": "quickly", "gently": "abruptly", "or higher": "or lower", "up to": "more than",
}
_SWAP_ZH = {
    "不超速": "超速", "不越界": "越界", "不超过": "超过", "不要超过": "超过", "不要低于": "低于", "不低于": "低于",
    "不要": "要", "不能": "能", "不得": "可以", "禁止": "允许", "避免": "尽量", "以内": "以外", "以上": "以下",
    "以下": "以上", "慢慢来": "快一点", "最快": "最慢", "上方": "下方",
}
_MANNER = {"slowly", "gently", "carefully", "慢慢来", "慢慢地", "小心", "小心地"}
_FALLBACK = {"en": "it is fine to break this: ", "zh": "可以违反："}


def _swapper(table: dict[str, str], words: bool) -> re.Pattern:
    keys = sorted(table, key=len, reverse=True)  # longest first: "no more than" before "no"
    body = "|".join(re.escape(k) for k in keys)
    return re.compile(rf"\b(?:{body})\b" if words else f"(?:{body})", re.I if words else 0)


_SWAP_RE = {"en": _swapper(_SWAP_EN, True), "zh": _swapper(_SWAP_ZH, False)}
_SWAP_TABLE = {"en": _SWAP_EN, "zh": _SWAP_ZH}


def language_of(text: str) -> str:
    return "zh" if _CJK.search(text) else "en"


def constraint_signature(text: str, meta_constraints: list[dict] | None = None) -> tuple:
    """((kind, value), ...) sorted: from meta `constraints` when given, else parsed from `text`."""
    if meta_constraints is None:
        items = [(c.kind, c.value) for c in find_constraints(text)]
    else:
        items = [(str(c["kind"]), c.get("value")) for c in meta_constraints]
    items = {(kind, None if value is None else round(float(value), 6)) for kind, value in items}
    valued = {kind for kind, value in items if value is not None}
    items = {(kind, value) for kind, value in items if value is not None or kind not in valued}  # "stay above the table, at least 10 cm up" is one limit
    return tuple(sorted(items, key=lambda kv: (kv[0], -1.0 if kv[1] is None else kv[1])))


def instruction_identity(task_name: str, text: str, meta_constraints: list[dict] | None = None) -> Identity:
    return (str(task_name), constraint_signature(text, meta_constraints), "")


def episode_identity(meta: dict[str, Any], task_name: str, text: str) -> Identity:
    """Identity of a dataset episode from its vla meta (constraints parsed from the text when absent)."""
    return instruction_identity(task_name, text, meta.get("constraints") if "constraints" in meta else None)


@dataclass(frozen=True)
class HardNegative:
    text: str
    kind: str  # "removed" | "negated"
    identity: Identity


def _tail_start(text: str, first: int) -> int:
    """Index of the separator that opens the constraint tail (0 when the constraint is in the main
    clause). A segment right before the constraint that is only a manner word ("slowly", "慢慢来")
    belongs to the tail."""
    cut = max((text.rfind(s, 0, first) for s in _SEPARATORS), default=-1)
    while cut > 0:
        before = max((text.rfind(s, 0, cut) for s in _SEPARATORS), default=-1)
        if before <= 0 or text[before + 1:cut].strip().lower() not in _MANNER:
            break
        cut = before
    return max(cut, 0)


def _flip(tail: str, language: str) -> str:
    """One polarity edit per segment of the tail: the first swap word of each (a second swap in the
    same segment could turn the meaning back, e.g. "never go lower than 8 cm above")."""
    table, pattern = _SWAP_TABLE[language], _SWAP_RE[language]
    parts = re.split(f"([{_SEPARATORS}:：])", tail)  # segments interleaved with their separators
    for i in range(0, len(parts), 2):
        parts[i] = pattern.sub(lambda m: table[m.group(0).lower()], parts[i], count=1)
    flipped = re.sub(r"[ \t]{2,}", " ", "".join(parts)).replace(" ,", ",")
    if flipped == tail:
        start = len(tail) - len(tail.lstrip(_SEPARATORS + " "))
        flipped = tail[:start] + _FALLBACK[language] + tail[start:]
    return flipped


def hard_negatives(text: str, identity: Identity) -> list[HardNegative]:
    """`removed` and `negated` variants of a constraint instruction (none for one without a clause)."""
    found = find_constraints(text)
    if not found:
        return []
    task, signature, _ = identity
    language = language_of(text)
    cut = _tail_start(text, found[0].start)
    out = []
    if cut > 0:
        main = text[:cut].rstrip(_SEPARATORS + " ")
        if main:
            out.append(HardNegative(main, "removed", (task, (), "")))
    negated = (text[:cut] + _flip(text[cut:], language)).strip()
    if negated != text:
        out.append(HardNegative(negated, "negated", (task, signature, "negated")))
    return out
