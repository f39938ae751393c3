"""Building blocks of `vla align`: bucket-driven batches and their log, difficulty and cluster
membership, term checks, held-out retrieval."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from stages.alignment import clusters, retrieval
from stages.alignment.bucket_loader import BucketLoader
from stages.alignment.terms import check_terms
from stages.data.lerobot import open_dataset
from stages.data.loader import LoaderConfig, build_loader
from stages.errors import BadInput
from stages.training.buckets import BucketConfig, ClusterSpec, TokenBuckets
from stages.training.schedule import parse_schedule
from tests.fixtures.align_data import INSTRUCTIONS, scaled_schedule, write_align_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return open_dataset(write_align_dataset(tmp_path_factory.mktemp("parts") / "aligned"))


@pytest.fixture(scope="module")
def train(dataset):
    return build_loader(dataset, LoaderConfig(batch_size=4, history=2, chunk=16), split="train", seed=0)


@pytest.fixture(scope="module")
def table(train):
    return clusters.sample_table(train)


def _config(*specs: ClusterSpec, **kw) -> BucketConfig:
    return BucketConfig(clusters=tuple(specs), **kw)


# ----------------------------------------------------------------------------- difficulty and membership


def test_chunk_curvature_matches_its_definition(dataset, train, table):
    """κ = mean over the chunk of ‖a_{t+1} − a_t‖₂ (normalised units), differences inside the episode only."""
    stats = train.norm_stats()["action"]
    action = (dataset.column("action").astype(np.float64) - stats["mean"]) / np.asarray(stats["std"])
    episode = dataset.column("episode_index")
    for i in (0, 5, len(table.rows) - 1):  # first, middle and last sample (its chunk runs into the episode end)
        r = table.rows[i]
        steps = [np.linalg.norm(action[t + 1] - action[t]) for t in range(r, r + 15)
                 if t + 1 < len(episode) and episode[t + 1] == episode[r]]
        expected = np.mean(steps) if steps else 0.0
        assert table.curvature[i] == pytest.approx(expected, rel=1e-9)  # float64 on both sides
    assert 0.0 < table.difficulty.min() and table.difficulty.max() < 1.0


def test_difficulty_levels_split_the_samples_and_probe_rows_are_constraint_episodes(table):
    config = _config(ClusterSpec("v-easy", 1.0, 0.0, modality="vision", difficulty=0.25),
                     ClusterSpec("v-hard", 1.0, 0.0, modality="vision", difficulty=0.75),
                     ClusterSpec("push", 1.0, 0.0, modality="action", task="push"),
                     ClusterSpec("probe", 1.0, 0.0, difficulty=0.5))
    easy, hard, push, probe = clusters.cluster_members(config, table)
    assert np.array_equal(np.sort(np.concatenate([easy, hard])), np.arange(len(table.rows)))  # a partition
    assert (table.difficulty[easy] <= 0.5).all() and (table.difficulty[hard] > 0.5).all()  # a tie goes to the lower level
    assert abs(len(easy) - len(hard)) <= 1  # percentile ranks: half of the samples each
    assert set(table.task[push]) == {"push"} and len(push) == (table.task == "push").sum()
    assert table.constraint[probe].all() and len(probe) == table.constraint.sum() > 0
    assert clusters.serves(config).tolist() == [[True, False, False], [True, False, False], [False, False, True], [True, True, True]]


@pytest.mark.parametrize("spec, field", [
    (ClusterSpec("x", 1.0, 0.0, modality="audio"), "buckets.clusters[0].modality"),
    (ClusterSpec("x", 1.0, 0.0, modality="vision", task="fly"), "buckets.clusters[0].task"),
])
def test_bad_clusters_name_their_field(table, spec, field):
    with pytest.raises(BadInput, match=re.escape(f"field `{field}`")):
        clusters.cluster_members(_config(spec), table)


def test_a_cluster_without_samples_warns_and_is_empty(table, caplog):
    """A constraint-probe bucket on data without constraint rows is switched off, not an error."""
    no_constraints = clusters.SampleTable(rows=table.rows, task=table.task, difficulty=table.difficulty,
                                          curvature=table.curvature, constraint=np.zeros_like(table.constraint))
    config = _config(ClusterSpec("v", 1.0, 0.0, modality="vision"), ClusterSpec("probe", 1.0, 0.0))
    with caplog.at_level("WARNING", logger="vla"):
        vision, probe = clusters.cluster_members(config, no_constraints)
    assert len(vision) == len(table.rows) and len(probe) == 0
    assert "`probe`" in caplog.text and "switched off" in caplog.text


# ----------------------------------------------------------------------------- bucket-driven batches


def test_bucket_log_matches_token_buckets_on_a_hand_checked_case(train, table):
    """Two clusters, B = [10, 20], r = [1, 0], γ = 1, batch 4: p(0) = [10, 20]/30. Seed 0 draws
    batch 0 as 1 easy + 3 hard samples, so at step 1 u = [max(0, 1 − 1), 3] = [0, 3] and
    p(1) = [10, 17]/27; batch 1 draws 1 + 3 again: u(2) = [0, 6], p(2) = [10, 14]/24."""
    config = _config(ClusterSpec("easy", 10.0, leak=1.0, modality="vision", difficulty=0.25),
                     ClusterSpec("hard", 20.0, leak=0.0, modality="action", difficulty=0.75))
    members = clusters.cluster_members(config, table)
    loader = BucketLoader(train, TokenBuckets(config), members, clusters.serves(config), seed=0, batch_size=4)
    assert loader.buckets.probabilities(0).tolist() == pytest.approx([1 / 3, 2 / 3])
    batches = [loader.batch(0), loader.batch(1)]
    assert [b["cluster"].tolist().count(0) for b in batches] == [1, 1]
    row1 = loader.buckets.log_row(1)  # what `vla align` writes to logs/buckets.jsonl (after batch 1 was drawn: u(1) + tokens)
    replay = TokenBuckets(config)
    replay.probabilities(0)
    replay.consume([1, 3])
    assert replay.log_row(1)["buckets"][0]["p"] == pytest.approx(10 / 27)  # the hand value of p(1)
    replay.consume([1, 3])
    assert row1 == replay.log_row(1)
    row2 = loader.buckets.log_row(2)
    assert [b["p"] for b in row2["buckets"]] == pytest.approx([10 / 24, 14 / 24])
    assert [b["used"] for b in row2["buckets"]] == [0.0, 6.0] and [b["consumed_total"] for b in row2["buckets"]] == [2.0, 6.0]
    episode, frame = train.dataset.column("episode_index"), train.dataset.column("frame_index")
    for batch in batches:  # routing and membership of every sample
        for c, serves, ep, fr in zip(batch["cluster"].tolist(), batch["serves"].tolist(), batch["episode_index"], batch["frame_index"]):
            assert serves == ([True, False, False] if c == 0 else [False, False, True])
            row = int(np.flatnonzero((episode == int(ep)) & (frame == int(fr)))[0])
            assert row in set(table.rows[members[c]].tolist())


def test_ranks_draw_the_same_global_batch(train, table):
    config = _config(ClusterSpec("a", 50.0, 0.0, modality="vision"), ClusterSpec("b", 50.0, 0.0, modality="language", difficulty=1.0))
    members = clusters.cluster_members(config, table)
    one = BucketLoader(train, TokenBuckets(config), members, clusters.serves(config), seed=7, batch_size=4)
    halves = [BucketLoader(train, TokenBuckets(config), members, clusters.serves(config), seed=7, batch_size=4, rank=r, world_size=2)
              for r in (0, 1)]
    for k in range(3):
        whole, parts = one.batch(k), [h.batch(k) for h in halves]
        for key in ("cluster", "episode_index", "frame_index", "action", "frames"):
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[key]), key
    assert one.state_dict() == halves[0].state_dict() == halves[1].state_dict()  # every rank consumed the global batch


# ----------------------------------------------------------------------------- schedule terms


@pytest.mark.parametrize("edit, field, cause", [
    (lambda s: s["losses"].update(audio={"loss": "info_nce"}), "losses.audio", "computes no term `audio`"),
    (lambda s: s["losses"].update(vl={"loss": "mvm"}), "losses.vl.loss", "computes `vl` with info_nce, not `mvm`"),
    (lambda s: s["losses"]["vl"].update(params={"offset": 1}), "losses.vl.params.offset", "sets `offset` of `vl` itself"),
    (lambda s: s["phases"][0]["weights"].update(bc_nll=1.0), "phases[0].weights.bc_nll", "computes no term `bc_nll`"),
])
def test_terms_the_recipe_does_not_compute_are_refused(edit, field, cause):
    doc = scaled_schedule()
    edit(doc)
    with pytest.raises(BadInput) as err:
        check_terms(parse_schedule(doc, source="s.json"))
    assert f"field `{field}`" in err.value.message and cause in err.value.caused_by


def test_example_terms_pass():
    terms = check_terms(parse_schedule(scaled_schedule(), source="s.json"))
    assert terms["coherence"] == {"band": [2.0, 6.0]} and terms["cycle"] == {"scale_free": True}


# ----------------------------------------------------------------------------- held-out retrieval


def test_heldout_set_takes_evenly_spaced_frames_of_heldout_episodes_only(dataset):
    held_loader = build_loader(dataset, LoaderConfig(batch_size=4), split="heldout", seed=0)
    held = retrieval.heldout_set(held_loader, retrieval.RetrievalConfig(frames_per_episode=5))
    episodes = dataset.column("episode_index")[held.rows]
    val = [i for i, (_, s) in enumerate(INSTRUCTIONS) if s == "val"]
    assert sorted(set(episodes.tolist())) == val and len(held.rows) == 5 * len(val)
    frames = dataset.column("frame_index")[held.rows[episodes == val[0]]]
    assert frames[0] == 0 and frames[-1] == dataset.episodes["length"].iloc[val[0]] - 1  # first to last frame
    assert sorted(held.texts) == sorted(t for t, s in INSTRUCTIONS if s == "val")
    assert [held.texts[i] for i in held.text_of[:1]] == [INSTRUCTIONS[val[0]][0]]


def test_retrieval_report_known_answers():
    """4 samples of tasks a, a, b, b; 2 instructions (one per task). One-hot task embeddings give
    perfect retrieval; swapping the language embeddings gives R@1 = 0 and MRR = 1/2; chance R@1 is
    the relevant share of each gallery (1/2)."""
    tasks = np.array(["a", "a", "b", "b"], dtype=object)
    held = retrieval.HeldoutSet(rows=np.arange(4), tasks=tasks, texts=["ta", "tb"], text_of=np.array([0, 0, 1, 1]),
                                text_tasks=np.array(["a", "b"], dtype=object))
    v = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    good = retrieval.report({"v": v, "a": v.copy(), "l": np.eye(2)}, held, logit_scale=10.0)
    for d in retrieval.DIRECTIONS:
        assert good[f"{d}_r1"] == 1.0 and good[f"{d}_mrr"] == 1.0
        assert good[f"{d}_chance_r1"] == pytest.approx(0.5)  # v2a: 2 of 4 candidates share the task
    bad = retrieval.report({"v": v, "a": v.copy(), "l": np.eye(2)[::-1]}, held, logit_scale=10.0)
    assert bad["v2l_r1"] == 0.0 and bad["v2l_mrr"] == 0.5 and bad["l2a_r1"] == 0.0
    assert good["mi_vl"] > bad["mi_vl"] and good["log_n"] == pytest.approx(np.log(4))
