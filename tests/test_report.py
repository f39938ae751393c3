"""`vla report` end to end: a synthetic run written by the stages' own writers, rendered through the CLI,
and the page opened in headless Chromium (skipped where Chromium is not installed; CI installs
Debian's `chromium` package)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from stages.artifacts import read_json, schema_errors
from stages.training.metrics import read_jsonl
from tests.fixtures import report_run

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)")

# Runs after every image has loaded (the load event waits for them) and leaves its findings in the DOM.
PROBE_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.querySelectorAll('img.plot'));
  const decoded = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0);
  const sized = decoded.filter(i => i.naturalWidth === Number(i.getAttribute('width')));
  const marker = document.createElement('div');
  marker.id = 'vla-browser-check';
  marker.setAttribute('data-total', imgs.length);
  marker.setAttribute('data-decoded', decoded.length);
  marker.setAttribute('data-sized', sized.length);
  marker.setAttribute('data-ids', decoded.map(i => i.dataset.fig).join(','));
  marker.setAttribute('data-sections', document.querySelectorAll('main > section').length);
  marker.setAttribute('data-height', document.documentElement.scrollHeight);
  document.body.appendChild(marker);
});
</script>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


EXPECTED_FIGURES = {"clean-rules-0", "align-offsets-0", "loss-action", "eval-action", "loss-align", "eval-align",
                    "buckets-align", "gradients-align", "retrieval-align", "probe-health-0", "closed-loop-0"}
SECTIONS = ("overview", "signals", "data-quality", "losses", "buckets", "gradients", "retrieval", "probe", "closed-loop",
            "export")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    info = report_run.build_run(root / "run")
    return root / "run", info


@pytest.fixture(scope="module")
def rendered(world, tmp_path_factory):
    from typer.testing import CliRunner

    from vlacli.app import app

    run, info = world
    out = tmp_path_factory.mktemp("out") / "report.html"
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(out), "--quiet", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return out, out.read_text(encoding="utf-8"), json.loads(result.stdout), info


def said(result) -> str:
    """stderr without whitespace: rich wraps messages at the console width, even inside a long path."""
    return "".join(result.stderr.split())


def squash(text: str) -> str:
    return "".join(text.split())


def _img_tags(page: str) -> dict[str, str]:
    return dict(re.findall(r'<img class="plot" data-fig="([^"]+)" src="([^"]+)"', page))


def test_index_lists_every_section_and_figure(rendered):
    _, page, index, _ = rendered
    assert schema_errors(index, "report-index") == []
    assert [s["id"] for s in index["sections"]] == list(SECTIONS)
    assert set(index["figures"]) == EXPECTED_FIGURES
    status = {s["id"]: s["status"] for s in index["sections"]}
    assert status["export"] == "missing" and status["probe"] == "ok" and status["data-quality"] == "ok"
    for sid in SECTIONS:
        assert f'<section id="{sid}"' in page


def test_figures_are_embedded_pngs_of_the_declared_size(rendered):
    _, page, index, _ = rendered
    tags = _img_tags(page)
    assert set(tags) == set(index["figures"])
    for fig_id, src in tags.items():
        assert src.startswith("data:image/png;base64,"), fig_id
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])  # IHDR
        declared = re.search(rf'data-fig="{re.escape(fig_id)}" src="[^"]+" width="(\d+)" height="(\d+)"', page)
        assert (width, height) == (int(declared[1]), int(declared[2]))


def test_page_is_self_contained(rendered):
    _, page, _, _ = rendered
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    for attr, value in re.findall(r'\b(src|href)="([^"]*)"', page):
        assert value.startswith("data:image/png;base64," if attr == "src" else "#"), (attr, value[:60])
    anchors = set(re.findall(r'href="#([^"]+)"', page))
    ids = set(re.findall(r'\bid="([^"]+)"', page))
    assert anchors <= ids  # every in-page link lands somewhere


def test_probe_table_shows_values_against_thresholds(rendered):
    _, page, _, info = rendered
    rows = {c["name"]: c for c in info["probe"]["checks"]}
    table = page[page.index('<table class="probe">'):]
    table = table[:table.index("</table>")]
    for name, check in rows.items():
        row = table[table.index(f">{name}<"):]
        row = row[:row.index("</tr>")]
        value = "—" if check["value"] is None else f"{check['value']:.4g}"
        assert f">{value}<" in row, name
        assert f"{check['comparator']} {check['threshold']:.4g}".replace("<", "&lt;").replace(">", "&gt;") in row, name
        assert f'class="{check["status"]}"' in row, name
    assert rows["teacher_consistency"]["status"] == "fail"  # the fixture's failing check is highlighted as such
    assert ">0.8765<" in table and "&lt; 0.5 nats/dim" in table
    s = info["probe"]["summary"]
    assert f"{s['passed']}/{s['run']} 项通过" in page


def test_data_quality_numbers_come_from_the_reports(world, rendered):
    run, _ = world
    _, page, _, _ = rendered
    clean = read_json(run / "clean" / "clean_report.json", schema="clean-report")
    rule = max(clean["counts"], key=lambda r: clean["counts"][r]["findings"])
    row = page[page.index(f"<td>{rule}</td>"):]
    row = row[:row.index("</tr>")]
    assert f'<td class="num">{clean["counts"][rule]["findings"]}</td>' in row
    truth = read_json(run / "raw.truth.json", schema="truth")
    injected = sum(f["kind"] == "non_monotonic_timestamps" for ep in truth["episodes"].values() for f in ep["faults"])
    row = page[page.rindex("<td>non_monotonic_timestamps</td><td"):]  # the truth-vs-found table comes last
    assert row.startswith(f'<td>non_monotonic_timestamps</td><td class="num">{injected}</td>')
    align = read_json(run / "aligned" / "align_report.json", schema="align-report")
    for name, stream in align["streams"].items():
        if stream["status"] == "aligned":
            assert f'{stream["offset_abs_ms"]["p50"]:.4g}' in page and f'{stream["residual_ms"]["p95"]:.4g}' in page


def test_training_numbers_come_from_the_logs(world, rendered):
    run, _ = world
    _, page, _, _ = rendered
    grads = read_jsonl(run / "ckpt" / "align" / "logs" / "gradients.jsonl")
    hits = [r["pcgrad_hit_rate"] for r in grads if r.get("pcgrad_hit_rate") is not None]
    assert hits, "the schedule's PCGrad phase logged hit rates"
    assert f"{100 * np.mean(hits):.1f}%" in page
    cos = [c["cos"] for r in grads for c in r["cosines"] if c["cos"] is not None]
    assert f"{100 * np.mean(np.array(cos) < 0):.1f}%" in page
    last = read_jsonl(run / "ckpt" / "align" / "logs" / "buckets.jsonl")[-1]
    section = page[page.index('<section id="buckets-align"'):]
    for b in last["buckets"]:
        row = section[section.index(f"<td>{b['name']}</td>"):]
        assert f'<td class="num">{b["p"]:.4g}</td>' in row[:row.index("</tr>")]
    phases = [p["name"] for p in json.loads((run / "ckpt" / "align" / "schedule.json").read_text())["phases"]]
    table = page[page.index('<section id="loss-align"'):]
    assert re.findall(r"<tr><td>(\w)</td><td class=\"num\">\d+</td>", table[:table.index("</table>", table.index("from step"))]) == phases


def test_closed_loop_table_puts_policy_beside_expert(rendered):
    _, page, _, info = rendered
    doc = report_run.closed_loop_doc()
    section = page[page.index('<section id="closed-loop"'):]
    row = section[section.index("<td>push</td>"):]
    row = row[:row.index("</tr>")]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    push = doc["tasks"]["push"]
    assert cells[2:6] == [f"{100 * push['success_rate']:.1f}%", f"{100 * push['expert']['success_rate']:.1f}%",
                          f"{100 * push['violation_rate']:.1f}%", f"{100 * push['expert']['violation_rate']:.1f}%"]
    assert "违例率" in page  # the policy violates more than the expert: a diagnostic signal says so


def test_missing_artifacts_leave_one_line_each(tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    (run / "probe.json").write_text(json.dumps(report_run.probe_doc()), encoding="utf-8")
    out = tmp_path / "r.html"
    result = cli("report", run, "--out", out, "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    index = json.loads(result.stdout)
    status = {s["id"]: s["status"] for s in index["sections"]}
    assert status == {"overview": "ok", "signals": "ok", "data-quality": "missing", "losses": "missing", "buckets": "missing",
                      "gradients": "missing", "retrieval": "ok", "probe": "ok", "closed-loop": "missing", "export": "missing"}
    page = out.read_text(encoding="utf-8")
    assert page.count('<p class="missing">') == 7  # six missing sections and the overview's list
    assert set(index["figures"]) == {"probe-health-0"}


def test_same_inputs_give_the_same_bytes(tmp_path, cli):
    run = tmp_path / "run"
    report_run.write_pretrain_logs(run / "ckpt" / "action")
    (run / "probe.json").write_text(json.dumps(report_run.probe_doc()), encoding="utf-8")
    a, b = tmp_path / "a.html", tmp_path / "b.html"
    assert cli("report", run, "--out", a, "--quiet").exit_code == 0
    assert cli("report", run, "--out", b, "--quiet").exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_default_out_is_inside_the_run_and_is_not_overwritten(tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    (run / "probe.json").write_text(json.dumps(report_run.probe_doc()), encoding="utf-8")
    assert cli("report", run, "--quiet").exit_code == 0
    first = (run / "report.html").read_bytes()
    again = cli("report", run, "--quiet")
    assert again.exit_code == 2 and "alreadyexists" in said(again) and "--overwrite" in said(again)
    assert cli("report", run, "--quiet", "--overwrite").exit_code == 0
    assert (run / "report.html").read_bytes() == first


@pytest.mark.parametrize("case", ["no_such_dir", "empty_dir", "a_file"])
def test_run_dir_without_artifacts_is_bad_input(tmp_path, cli, case):
    run = tmp_path / "run"
    if case == "empty_dir":
        (run / "nothing" / "here").mkdir(parents=True)
        (run / "notes.json").write_text("{}")
    elif case == "a_file":
        run.write_text("x")
    out = tmp_path / "r.html"
    result = cli("report", run, "--out", out)
    assert result.exit_code == 2
    assert squash(f"`{run}`") in said(result)
    assert not out.exists() and not list(tmp_path.glob(".r.html*"))


def test_unwritable_out_is_bad_input_and_writes_nothing(tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    (run / "probe.json").write_text(json.dumps(report_run.probe_doc()), encoding="utf-8")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    result = cli("report", run, "--out", blocker / "report.html")
    assert result.exit_code == 2 and "cannotwritereport" in said(result)
    directory = cli("report", run, "--out", tmp_path)
    assert directory.exit_code == 2 and "isadirectory" in said(directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "run"]


def test_malformed_log_names_the_file_line_and_field(tmp_path, cli):
    run = tmp_path / "run"
    report_run.write_pretrain_logs(run / "ckpt" / "action")
    log = run / "ckpt" / "action" / "logs" / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    row = json.loads(lines[2])
    row["lr"] = -1.0
    lines[2] = json.dumps(row) + "\n"
    log.write_text("".join(lines))
    out = tmp_path / "r.html"
    result = cli("report", run, "--out", out)
    assert result.exit_code == 2
    assert squash(f"`{log}` line 3: field `lr` is invalid") in said(result)
    assert not out.exists()


def test_malformed_probe_report_names_the_field(tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    doc = report_run.probe_doc()
    doc["checks"][0]["status"] = "maybe"
    (run / "probe.json").write_text(json.dumps(doc), encoding="utf-8")
    result = cli("report", run, "--out", tmp_path / "r.html")
    assert result.exit_code == 2
    assert squash(f"`{run / 'probe.json'}`: field `checks[0].status` is invalid") in said(result)
    assert not (tmp_path / "r.html").exists()


# ----------------------------------------------------------------------------- in a real browser


@needs_chromium
def test_chromium_loads_the_page_with_every_figure(rendered, tmp_path):
    """A real browser, offline: every figure decodes at its declared size, every section lays out."""
    out, _, index, _ = rendered
    probed = tmp_path / "probed.html"
    probed.write_text(out.read_text(encoding="utf-8").replace("</body>", PROBE_SCRIPT + "</body>"), encoding="utf-8")
    done = chromium("--virtual-time-budget=10000", "--dump-dom", probed.as_uri(), profile=tmp_path / "profile-dom")
    marker = re.search(r'<div id="vla-browser-check"([^>]*)>', done.stdout)
    assert marker, f"no marker in the dumped DOM; chromium said: {done.stderr[-2000:]}"
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', marker[1]))
    figures = index["figures"]
    assert len(figures) >= 10
    assert int(attrs["total"]) == len(figures)
    assert int(attrs["decoded"]) == len(figures), attrs
    assert int(attrs["sized"]) == len(figures)  # each PNG is as wide as the page declares
    assert attrs["ids"].split(",") == figures
    assert int(attrs["sections"]) == len(index["sections"])
    assert int(attrs["height"]) > 5000  # the page laid out its sections rather than collapsing


@needs_chromium
def test_chromium_screenshot_is_not_blank(rendered, tmp_path):
    from PIL import Image

    shot = tmp_path / "top.png"
    chromium("--window-size=1280,2400", f"--screenshot={shot}", rendered[0].as_uri(), profile=tmp_path / "profile-shot")
    assert shot.is_file(), "chromium wrote no screenshot"
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2400)
    histogram = image.histogram()
    # A rendered page has text and plots: many pixels are neither white nor one flat colour.
    assert sum(histogram[:200]) > 0.02 * image.size[0] * image.size[1]
