"""The user docs stay true to the CLI: embedded `--help` blocks are current, links resolve, every
command's help has examples, and the index lists every page."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCRIPT = ROOT / "scripts" / "help_docs.py"

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)  # [id]: target
FENCED = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def _pages() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


def _links(text: str) -> list[str]:
    text = INLINE_CODE.sub("", FENCED.sub("", text))  # code is shown, not linked
    return LINK.findall(text) + REF_DEF.findall(text)


def test_help_blocks_match_the_cli():
    result = _check("--check")
    assert result.returncode == 0, f"stale docs; run `python scripts/help_docs.py`\n{result.stderr}"


def test_check_fails_on_a_stale_or_missing_block_and_the_generator_repairs_it(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    align = docs / "align.md"
    text = align.read_text(encoding="utf-8")
    assert "Curriculum schedule JSON" in text  # a line of `vla align --help` inside the block
    align.write_text(text.replace("Curriculum schedule JSON", "Schedule JSON"), encoding="utf-8")
    clean = docs / "clean.md"
    clean.write_text(re.sub(r"<!-- help: vla clean -->.*?<!-- /help -->\n", "", clean.read_text(encoding="utf-8"), flags=re.S),
                     encoding="utf-8")

    result = _check("--check", "--docs", str(docs))
    assert result.returncode == 1
    assert f"stale: {align}" in result.stderr
    assert "clean.md: no block for `vla clean`" in result.stderr
    assert "probes.md" not in result.stderr  # untouched pages are not reported
    assert align.read_text(encoding="utf-8").count("Schedule JSON") == 1  # --check writes nothing

    _check("--docs", str(docs))  # regenerates align.md; clean.md still lacks its markers
    assert align.read_text(encoding="utf-8") == text
    result = _check("--check", "--docs", str(docs))
    assert result.returncode == 1 and "stale" not in result.stderr and "no block for `vla clean`" in result.stderr


def _leaf_commands() -> list[list[str]]:
    import typer.main

    from vlacli.app import app

    out: list[list[str]] = []

    def walk(group, prefix: list[str]) -> None:
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, [*prefix, name])
            else:
                out.append([*prefix, name])

    walk(typer.main.get_command(app), [])
    return out


def test_every_command_help_has_runnable_examples(cli):
    commands = _leaf_commands()
    assert {"record", "clean", "align-time", "pretrain-modality", "align", "finetune", "probe", "export", "report",
            "info", "schema"} == {c[-1] for c in commands}
    for cmd in commands:
        result = cli(*cmd, "--help", env={"COLUMNS": "200", "NO_COLOR": "1"})
        assert result.exit_code == 0, cmd
        text = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # a CI that forces a terminal still gets bold
        examples = text.split(" Examples", 1)
        assert len(examples) == 2, f"`vla {' '.join(cmd)} --help` has no Examples block"
        # Each example runs this very command (directly or under torchrun).
        lines = [ln.strip() for ln in examples[1].splitlines() if ln.strip().startswith("$ ")]
        assert lines and all(f"vla {' '.join(cmd)}" in ln or f"vlacli {' '.join(cmd)}" in ln for ln in lines), (cmd, lines)


def test_link_parser_sees_links_and_skips_code():
    text = "a [x](b.md) `[no](c.md)` ![i](img/p.png \"t\")\n```\n[no](d.md)\n```\n[r]: e.md\n"
    assert sorted(_links(text)) == ["b.md", "e.md", "img/p.png"]


def _anchors(text: str) -> set[str]:
    """Heading ids as GitHub makes them: lower case, punctuation dropped, each space a hyphen, -1/-2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for title in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCED.sub("", text), flags=re.MULTILINE):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link shows its text
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_anchor_slugs_follow_github():
    text = "# `vla align`：三模态对齐（阶段 II）\n## 1. 一步训练做什么\n## Notes\n## Notes\n```\n# not a heading\n```\n"
    assert _anchors(text) == {"vla-align三模态对齐阶段-ii", "1-一步训练做什么", "notes", "notes-1"}


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in _links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # a URL
            continue
        path, _, anchor = target.partition("#")
        dest = page if not path else page.parent / path.split("?", 1)[0]
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text(encoding="utf-8")):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken relative links or anchors {broken}"


def test_index_links_every_page():
    index = DOCS / "README.md"
    linked = {t.split("#", 1)[0] for t in _links(index.read_text(encoding="utf-8"))}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "README.md" and p.name not in linked]
    assert not missing, f"docs/README.md does not link {missing}"
