"""Atomic outputs and schema-validated JSON."""

from __future__ import annotations

import json

import pytest

from stages.artifacts import atomic_dir, json_path, read_json, validate, write_json
from stages.errors import BadInput, VlaError
from stages.registry import Registry


def test_atomic_dir_commits_on_success(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("x")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("1")
    with pytest.raises(BadInput, match="already exists"):
        with atomic_dir(out):
            pass
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_unwritable_parent_is_bad_input(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(BadInput, match="cannot write output"):
        with atomic_dir(blocker / "out"):
            pass


def test_json_path_rendering():
    assert json_path(["phases", 1, "end"]) == "phases[1].end"
    assert json_path([]) == "(root)"
    assert json_path([0, "a"]) == "[0].a"


def test_read_json_names_file_and_field(tmp_path):
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"episode_id": "ep 1", "instruction": "reach"}))
    with pytest.raises(BadInput) as info:
        read_json(meta, schema="raw-meta")
    assert str(meta) in info.value.message and "episode_id" in info.value.message
    meta.write_text("{not json")
    with pytest.raises(BadInput, match="cannot parse"):
        read_json(meta, schema="raw-meta")
    with pytest.raises(BadInput, match="no such file"):
        read_json(tmp_path / "missing.json", schema=None)


def test_write_json_validates_before_writing(tmp_path):
    path = tmp_path / "meta.json"
    with pytest.raises(VlaError, match="violates schema"):
        write_json(path, {"instruction": "no id"}, schema="raw-meta")
    assert not path.exists()
    write_json(path, {"episode_id": "e1", "instruction": "reach", "score": float("nan")}, schema="raw-meta")
    assert json.loads(path.read_text())["score"] is None  # NaN is not JSON: written as null


def test_validate_reports_first_violation():
    with pytest.raises(BadInput, match=r"field `split` is invalid"):
        validate({"episode_id": "e1", "instruction": "", "split": "holdout"}, "raw-meta", source="m.json")


def test_registry_duplicate_and_unknown():
    reg: Registry[int] = Registry("loss")
    reg.add("info_nce", 1)
    with pytest.raises(ValueError, match="duplicate"):
        reg.add("info_nce", 2)
    with pytest.raises(BadInput) as info:
        reg.get("infonce", where="phases[0].losses")
    assert "unknown loss `infonce`" in info.value.message
    assert "info_nce" in info.value.caused_by
