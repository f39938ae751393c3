"""Instruction templates (English and Chinese), constraint clauses and instruction text faults.

Every task has several paraphrases per language, held-out tasks included. A constraint episode
appends a clause that names the constraint and its value (`vla clean` parses it back).
"""

from __future__ import annotations

import numpy as np

from stages.sim.constraints import SPEED_LIMIT, WORKSPACE_BOUNDARY, Constraint

LANGUAGES = ("en", "zh")

TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "reach": {
        "en": ("reach the target point", "move the gripper to the goal position", "put your hand on the red target", "go to the marked spot"),
        "zh": ("把夹爪移动到目标点", "伸手到目标位置", "移动到标记的位置", "让末端到达目标点"),
    },
    "push": {
        "en": ("push the puck to the goal", "slide the puck onto the target", "shove the puck to the marked spot", "push the block to the goal position"),
        "zh": ("把冰球推到目标位置", "将圆块推到目标点", "推动物块到标记处", "把桌上的圆盘推到终点"),
    },
    "pick-place": {
        "en": ("pick up the puck and place it at the goal", "grab the puck and put it on the target", "lift the puck and set it down at the goal", "pick the object and place it at the marked point"),
        "zh": ("拿起冰球放到目标位置", "抓起圆块放到目标点", "把物体夹起来放到标记处", "拾取圆盘并放到终点"),
    },
    "drawer-close": {
        "en": ("close the drawer", "push the drawer shut", "slide the drawer closed", "shut the open drawer"),
        "zh": ("关上抽屉", "把抽屉推回去关好", "将打开的抽屉合上", "推上抽屉"),
    },
    "door-open": {
        "en": ("open the door", "pull the door open", "swing the door open by its handle", "open the cabinet door"),
        "zh": ("打开门", "拉开这扇门", "抓住把手把门打开", "把柜门打开"),
    },
    "button-press": {
        "en": ("press the button", "push the button on the wall", "press the button in front of you", "hit the button"),
        "zh": ("按下按钮", "按一下墙上的按钮", "按前面的按钮", "把按钮按下去"),
    },
    "window-open": {
        "en": ("open the window", "slide the window open", "push the window sash to open it", "open the sliding window"),
        "zh": ("打开窗户", "把窗户推开", "滑动窗扇把窗打开", "开窗"),
    },
    "drawer-open": {
        "en": ("open the drawer", "pull the drawer out", "slide the drawer open", "pull the drawer open by its handle"),
        "zh": ("打开抽屉", "把抽屉拉出来", "拉开抽屉", "抓住把手拉开抽屉"),
    },
    "button-press-topdown": {
        "en": ("press the button from above", "push the button down from the top", "press down on the button", "hit the button from above"),
        "zh": ("从上方按下按钮", "从上往下按按钮", "向下按压按钮", "从顶部把按钮按下"),
    },
    "window-close": {
        "en": ("close the window", "slide the window shut", "push the window closed", "shut the sliding window"),
        "zh": ("关上窗户", "把窗户推上", "滑动窗扇把窗关好", "关窗"),
    },
}

CLAUSES: dict[str, dict[str, tuple[str, ...]]] = {
    SPEED_LIMIT: {
        "en": ("slowly, never faster than {v:g} m/s", "keeping the speed under {v:g} m/s", "gently, at most {v:g} m/s"),
        "zh": ("慢慢来，不超速：速度不超过 {v:g} 米/秒", "不超速，最快 {v:g} m/s", "速度保持在每秒 {v:g} 米以内"),
    },
    WORKSPACE_BOUNDARY: {
        "en": ("stay above the table, keeping the hand at least {cm:g} cm up", "never go lower than {cm:g} cm above the table", "stay inside the workspace, {cm:g} cm above the table or higher"),
        "zh": ("不越界：手保持在桌面上方 {cm:g} 厘米以上", "不越界，不要低于桌面以上 {cm:g} 厘米", "保持在台面 {cm:g} 厘米以上，不越界"),
    },
}

PLACEHOLDERS = ("", "TODO", "N/A", "<instruction>", "placeholder", "待定", "无", "...")
_REDUNDANT = {
    "en": ("{i} {i}", "{i}. {i}.", "instruction: {i} (repeat) {i}", "{i} {i} {i}"),
    "zh": ("{i}{i}", "{i}。{i}。", "指令：{i}（重复）{i}", "{i} {i} {i}"),
}


def compose(task: str, language: str, constraint: Constraint | None, rng: np.random.Generator, *, avoid: str | None = None) -> str:
    """One instruction for `task` in `language`, with the constraint clause if any.

    `avoid` (an earlier instruction) forces a different paraphrase, for near-duplicate episodes.
    """
    options = TEMPLATES[task][language]
    clauses = CLAUSES[constraint.kind][language] if constraint is not None else ("",)
    for _ in range(32):
        text = options[int(rng.integers(len(options)))]
        if constraint is not None:
            clause = clauses[int(rng.integers(len(clauses)))]
            clause = clause.format(v=constraint.value, cm=round(constraint.value * 100, 1))
            text = f"{text}, {clause}" if language == "en" else f"{text}，{clause}"
        if text != avoid:
            return text
    return text


def redundant(instruction: str, language: str, rng: np.random.Generator) -> str:
    """The instruction with its text repeated (a logger or annotation-tool glitch)."""
    forms = _REDUNDANT[language]
    return forms[int(rng.integers(len(forms)))].format(i=instruction)


def placeholder(rng: np.random.Generator) -> str:
    return PLACEHOLDERS[int(rng.integers(len(PLACEHOLDERS)))]
