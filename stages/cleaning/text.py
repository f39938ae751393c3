"""Instruction rules: missing or placeholder instructions, and redundant wording (ch07 §7.7:
文本去幻觉/去冗词，保留约束短语).

Wording cleanup removes politeness and hesitation fillers and repeated words or clauses, never
anything inside a constraint phrase (`stages.cleaning.constraints`), so "do not …", "不超速" or
"never faster than 0.3 m/s" survive verbatim; the constraints are then written to meta.json.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from stages.cleaning.base import EpisodeWork, Rule, rule
from stages.cleaning.constraints import extract, find_constraints
from stages.data.fingerprints import normalise_text

# ----------------------------------------------------------------------------- placeholders

PLACEHOLDERS = frozenset({
    "", "todo", "tbd", "tba", "na", "n a", "none", "null", "nil", "nan", "undefined", "unknown", "empty",
    "placeholder", "instruction", "instructions", "task", "default", "test", "dummy", "sample", "example",
    "fixme", "xxx", "lorem ipsum", "no instruction", "insert instruction here", "instruction here", "your instruction here",
    "待定", "无", "暂无", "空", "占位", "占位符", "指令", "任务", "未知", "待补充", "测试",
})
_TEMPLATE_LEFTOVER = re.compile(r"^\s*(?:<[^<>]*>|\{[^{}]*\}|\[[^\[\]]*\]|\$\{?\w+\}?)\s*$")
_ONE_CHAR = re.compile(r"^(.)\1*$")


def is_placeholder(text: str) -> bool:
    """Empty, a known placeholder word, a template variable left unfilled, or one character repeated."""
    norm = normalise_text(text)
    if norm in PLACEHOLDERS or _TEMPLATE_LEFTOVER.match(text or ""):
        return True
    squeezed = re.sub(r"\s+", "", unicodedata.normalize("NFKC", text or "")).lower()
    return bool(_ONE_CHAR.match(squeezed)) or "lorem ipsum" in norm


# ----------------------------------------------------------------------------- redundant wording

# whole phrases only, longest first; words that can carry meaning ("just", "only", "slowly") are not here
EN_FILLERS = (
    "if you don't mind", "if you do not mind", "if you can", "if possible", "when you get a chance", "when you can",
    "i would like you to", "i'd like you to", "i want you to", "i need you to", "could you please", "can you please",
    "would you please", "could you", "can you", "would you", "please", "kindly", "go ahead and", "you know", "i mean",
    "basically", "actually", "literally", "um", "uh", "erm", "er", "hmm", "okay so", "ok so", "so yeah", "alright",
    "thank you", "thanks", "for me", "real quick", "as soon as possible",
)
ZH_FILLERS = ("麻烦你", "麻烦", "请你", "帮我", "你能不能", "能不能", "可不可以", "可以吗", "好吗", "那个", "就是说",
              "然后呢", "嗯", "呃", "谢谢你", "谢谢")
ZH_FINAL_PARTICLES = "吧啊呀哦"  # only at the end of a clause: 吧台, 啊 inside words stay
_EN_FILLER = re.compile(r"(?<![\w'])(?:" + "|".join(re.escape(f) for f in EN_FILLERS) + r")(?![\w'])[,，]?", re.I)
_ZH_FILLER = re.compile("|".join(re.escape(f) for f in ZH_FILLERS) + f"|[{ZH_FINAL_PARTICLES}](?=[，。！？,.!?\\s]|$)")
_CJK = re.compile(r"[\u3400-\u9fff]")
_SPLIT = re.compile(r"([,;!?，；。！？]+|\.(?!\d))")
# annotation-tool leftovers: a field label in front, a "(repeat)" marker inside
_LABEL = re.compile(r"^\s*(?:instruction|instructions|task|command|prompt|指令|任务|命令)\s*[:：]\s*", re.I)
_MARKER = re.compile(r"\s*[(（\[]\s*(?:repeat|repeated|again|dup|duplicate|重复|再说一遍)\s*[)）\]]\s*", re.I)
_TOKEN = re.compile(r"[\u3400-\u9fff]|\d+(?:\.\d+)?|[^\W\d_\u3400-\u9fff]+(?:'[^\W\d_\u3400-\u9fff]+)?", re.U)


def _unrepeat(text: str) -> str:
    """The first copy when the whole text is one instruction said k >= 2 times ("{i} {i}", "{i}。{i}。").

    Compared on word / CJK-character tokens, so spacing and punctuation between copies do not matter;
    the first copy is returned exactly as written.
    """
    tokens = [(m.group().lower(), m.end()) for m in _TOKEN.finditer(text)]
    n = len(tokens)
    for period in range(1, n // 2 + 1):
        if n % period == 0 and all(tokens[i][0] == tokens[i % period][0] for i in range(period, n)):
            return text[: tokens[period - 1][1]]
    return text


def _drop_fillers(segment: str) -> str:
    segment = _EN_FILLER.sub(" ", segment)
    return _ZH_FILLER.sub("", segment)


def _drop_repeats(clause: str) -> str:
    """Immediately repeated n-grams of words (or of CJK characters): "the the", "推到推到"."""
    cjk = bool(_CJK.search(clause)) and " " not in clause.strip()
    tokens = list(clause.strip()) if cjk else clause.split()
    changed = True
    while changed:
        changed = False
        for n in range(len(tokens) // 2, 0, -1):
            if cjk and n < 2:
                break  # 一一, 慢慢: single-character doubling is Chinese morphology, not redundancy
            for i in range(len(tokens) - 2 * n + 1):
                if [t.lower() for t in tokens[i : i + n]] == [t.lower() for t in tokens[i + n : i + 2 * n]]:
                    del tokens[i + n : i + 2 * n]
                    changed = True
                    break
            if changed:
                break
    if len(tokens) == len(clause.strip()) if cjk else len(tokens) == len(clause.split()):
        return clause  # nothing repeated: keep the clause exactly as written
    lead = clause[: len(clause) - len(clause.lstrip())]
    return lead + ("".join(tokens) if cjk else " ".join(tokens))


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,;.!?，；。！？])", r"\1", text)
    text = re.sub(r"([,;，；])(?:\s*[,;，；])+", r"\1", text)  # ", ," left by a removed filler
    text = re.sub(r"([.!?。！？])(?:\s*[,;，；.!?。！？])+", r"\1", text)
    text = re.sub(r"^[\s,;.!?，；。！？]+", "", text)
    text = re.sub(r"[\s,;，；]+$", "", text)
    text = re.sub(r"(?<=[\u3400-\u9fff]) (?=[\u3400-\u9fff])", "", text)
    return text.strip()


def strip_redundancy(text: str) -> str:
    """`text` without labels, repeats and fillers; constraint phrases are copied through untouched."""
    text = _unrepeat(_MARKER.sub(" ", _LABEL.sub("", text)))
    spans = find_constraints(text)
    pieces, pos = [], 0
    for c in spans:  # free text between constraint phrases gets the filler cleanup
        pieces.append(("free", text[pos : c.start]))
        pieces.append(("kept", text[c.start : c.end]))
        pos = c.end
    pieces.append(("free", text[pos:]))
    joined = "".join(_drop_fillers(s) if kind == "free" else s for kind, s in pieces)
    kept = {text[c.start : c.end] for c in spans}
    clauses, seen, out = _SPLIT.split(joined), set(), []
    for i in range(0, len(clauses), 2):  # clause, delimiter, clause, delimiter, ...
        clause = clauses[i]
        delim = clauses[i + 1] if i + 1 < len(clauses) else ""
        if clause.strip() not in kept and not any(k in clause for k in kept):
            clause = _drop_repeats(clause)
        key = normalise_text(clause)
        if key and key in seen:
            continue  # a clause said twice
        if key:
            seen.add(key)
        out.append(clause + delim)
    return _tidy("".join(out))


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class PlaceholderParams:
    template: str = "{task}"  # action fix: the instruction written instead ({task} = meta.json `task`, dashes as spaces)


@rule("text.placeholder", kind="placeholder_text", actions=("drop", "fix", "flag"), params=PlaceholderParams)
def placeholder(work: EpisodeWork, rule: Rule) -> None:
    """A missing, empty or placeholder instruction ("TODO", "N/A", "<instruction>", "待定").
    drop: the episode has no language to align. fix: write the template from the task name."""
    text = str(work.meta.get("instruction") or "")
    if not is_placeholder(text):
        return
    task = work.meta.get("task")
    action = rule.action if (rule.action != "fix" or task) else "drop"
    work.report(rule, action=action, detail={"instruction": text})
    if action == "drop":
        work.drop(rule, f"instruction is a placeholder ({text!r})")
    elif action == "fix":
        work.meta["instruction"] = rule.params.template.format(task=str(task).replace("-", " ").replace("_", " "))
        work.notes["instruction_source"] = "task_template"


@dataclass(frozen=True)
class RedundantParams:
    pass


@rule("text.redundant", kind="redundant_text", actions=("fix", "flag"), severity="info", params=RedundantParams)
def redundant(work: EpisodeWork, rule: Rule) -> None:
    """Filler words and repeated words or clauses in the instruction. fix: rewrite it without them;
    constraint phrases are kept verbatim and the original is kept in meta.json `clean.instruction_raw`."""
    text = str(work.meta.get("instruction") or "")
    if is_placeholder(text):
        return
    cleaned = strip_redundancy(text)
    if cleaned and normalise_text(cleaned) != normalise_text(text):  # spacing and punctuation alone are not wording
        work.report(rule, detail={"before": text, "after": cleaned})
        if rule.action == "fix":
            work.meta["instruction"] = cleaned
            work.notes["instruction_raw"] = text


def write_constraints(work: EpisodeWork) -> None:
    """meta.json `constraints`: the constraint phrases of the (cleaned) instruction."""
    work.meta["constraints"] = extract(str(work.meta.get("instruction") or ""))
