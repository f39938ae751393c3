"""Instruction rules: placeholders, redundant wording, and constraint phrases kept and extracted."""

from __future__ import annotations

import numpy as np
import pytest

from stages.cleaning.base import EpisodeWork
from stages.cleaning.config import default_config
from stages.cleaning.constraints import extract
from stages.cleaning.synthetic import SyntheticConfig, make_episode
from stages.cleaning.text import is_placeholder, strip_redundancy


@pytest.mark.parametrize("text", ["", "  ", "TODO", "n/a", "N/A", "<instruction>", "{instruction}", "None", "xxx", "???", "待定", "...", "Lorem ipsum dolor"])
def test_placeholders(text):
    assert is_placeholder(text)


@pytest.mark.parametrize("text", ["reach the red target", "把方块推到目标位置", "do not touch the mug", "go"])
def test_real_instructions_are_not_placeholders(text):
    assert not is_placeholder(text)


@pytest.mark.parametrize(("raw", "clean"), [
    ("um, could you please reach the red target, reach the red target, thanks", "reach the red target"),
    ("Please push the the block to the goal.", "push the block to the goal."),
    ("嗯，请你把方块推到目标位置吧，谢谢", "把方块推到目标位置"),
    ("按一下墙上的按钮", "按一下墙上的按钮"),  # 一下 is part of the verb here, not a filler
    ("push the puck to the goal, slowly, never faster than 0.3 m/s. push the puck to the goal, slowly, never faster than 0.3 m/s.",
     "push the puck to the goal, slowly, never faster than 0.3 m/s"),
    ("instruction: open the drawer (repeat) open the drawer", "open the drawer"),
    ("close the window close the window close the window", "close the window"),
    ("指令：关上抽屉，不超速，最快 0.3 m/s（重复）关上抽屉，不超速，最快 0.3 m/s", "关上抽屉，不超速，最快 0.3 m/s"),
    ("打开窗户打开窗户", "打开窗户"),
    ("把方块推到目标位置，把方块推到目标位置", "把方块推到目标位置"),
    ("reach the red target", "reach the red target"),
])
def test_strip_redundancy(raw, clean):
    assert strip_redundancy(raw) == clean


@pytest.mark.parametrize(("raw", "phrase"), [
    ("um, please push the block to the goal, never faster than 0.3 m/s, thanks", "never faster than 0.3 m/s"),
    ("basically reach the target and do not touch the mug please", "do not touch the mug please"),
    ("嗯，请把方块推到目标，不超速，不越线，保持时距，谢谢", "不超速"),
    ("please, um, stay above the table while you reach the target", "stay above the table while you reach the target"),
])
def test_constraint_phrases_survive_cleanup(raw, phrase):
    cleaned = strip_redundancy(raw)
    assert phrase in cleaned
    assert cleaned != raw


def test_constraints_extracted_with_si_values():
    found = extract("push the block, never faster than 30 cm/s, stay above the table, do not touch the mug")
    assert [c["kind"] for c in found] == ["speed_limit", "workspace_boundary", "negation"]
    assert found[0]["value"] == pytest.approx(0.3) and found[0]["unit"] == "m/s"
    assert found[1]["phrase"] == "stay above the table"
    assert [(c["kind"], c["value"]) for c in extract("关上抽屉，速度保持在每秒 0.3 米以内")] == [("speed_limit", 0.3)]
    assert [(c["kind"], c["value"]) for c in extract("open the drawer, keeping the speed under 0.4 m/s")] == [("speed_limit", 0.4)]
    assert [(c["kind"], c["value"]) for c in extract("open the drawer, never go lower than 8 cm above the table")] == [("workspace_boundary", 0.08)]
    zh = extract("把方块推到目标，不超速，不越界，保持时距，不要碰杯子")
    assert [c["kind"] for c in zh] == ["speed_limit", "workspace_boundary", "keep_distance", "negation"]
    assert [c["phrase"] for c in zh] == ["不超速", "不越界", "保持时距", "不要碰杯子"]
    assert extract("reach the red target") == []


def _work(instruction):
    ep = make_episode("ep_0000", "reach", np.random.default_rng(0), SyntheticConfig())
    ep.meta["instruction"] = instruction
    return EpisodeWork.of(ep)


def test_placeholder_rule_drops_or_fills_from_task():
    config = default_config()
    work = _work("TODO")
    config.rule("text.placeholder").run(work)
    assert work.dropped and work.findings[0].kind == "placeholder_text"
    config.rule("text.placeholder").action = "fix"
    work = _work("")
    config.rule("text.placeholder").run(work)
    assert not work.dropped and work.meta["instruction"] == "reach" and work.notes["instruction_source"] == "task_template"


def test_redundant_rule_rewrites_and_keeps_original():
    work = _work("um, please reach the red target, never faster than 0.3 m/s")
    default_config().rule("text.redundant").run(work)
    assert [f.kind for f in work.findings] == ["redundant_text"]
    assert work.meta["instruction"] == "reach the red target, never faster than 0.3 m/s"
    assert work.notes["instruction_raw"].startswith("um, please")
    clean = _work("reach the red target, never faster than 0.3 m/s")
    default_config().rule("text.redundant").run(clean)
    assert clean.findings == []
