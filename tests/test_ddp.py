"""Scale-out: 2 ranks (torchrun, gloo on CPU) vs 1 rank with the same global batch.

Why the losses agree: every rank holds the same replica (broadcast from rank 0) and sees half of
each global batch (the loader slices one permutation by rank). The MSE is a mean over the local
half, so the mean over ranks is the global mean; InfoNCE scores the local rows against the gathered
rows of both ranks (local loss + gather with gradient), so the mean over ranks covers every row of
the global batch in both directions. The all-gather's backward sums each column's gradient back to
its owner and the engine averages gradients across ranks, which gives exactly the gradient of the
global-batch loss. Only floating-point summation order differs (relative ~1e-7 per step), and AdamW
is element-wise: measured here, losses agree to 2e-7 (relative) and weights to 2e-7 (absolute) after
5 steps; the tolerances below leave about 10x room.
For PCGrad the combiner all-reduces the per-task gradients *before* the projection, so the surgery
runs on the global gradients too (PCGrad of per-rank gradients would not match).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stages.training.metrics import read_jsonl

GLOBAL_BATCH, STEPS = 16, 5


def _train(out: Path, *, rank: int, world: int, combiner: str) -> None:
    from stages.training.loop import TrainConfig, Trainer
    from stages.training.optim import OptimConfig
    from tests.test_engine import ToyLoader, ToyModel, ToyRecipe

    loader = ToyLoader(n=64, batch=GLOBAL_BATCH // world, shuffle="seeded", rank=rank, world=world)
    cfg = TrainConfig(steps=STEPS, device="cpu", log_every=1, combiner=combiner, optim=OptimConfig(lr=3e-3, warmup_steps=1))
    Trainer(ToyModel(dropout=0.0), ToyRecipe(use_gather=True), loader, config=cfg, out_dir=out).fit()


def _gather_known_answer(out: Path) -> None:
    """y = gather(x) on every rank, loss = Σ y·w with the same w everywhere ⇒ x.grad = W · w[own rows]."""
    from stages.training import parallel

    rank, world = parallel.rank(), parallel.world_size()
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    y = parallel.gather_features(x)
    w = torch.arange(2 * world * 3, dtype=torch.float32).reshape(2 * world, 3)
    (y * w).sum().backward()
    (out / f"gather-{rank}.json").write_text(json.dumps({"y": y.tolist(), "grad": x.grad.tolist(), "offset": parallel.rank_offset(2)}))


def _torchrun(out: Path, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "tests.test_ddp", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    proc = _torchrun(out, 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow
def test_gather_features_with_gradient(two_rank_run):
    got = [json.loads((two_rank_run / f"gather-{r}.json").read_text()) for r in range(2)]
    w = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    for r, g in enumerate(got):
        assert g["y"] == [[1.0] * 3] * 2 + [[2.0] * 3] * 2  # rank 0's rows, then rank 1's
        assert g["offset"] == 2 * r
        assert torch.equal(torch.tensor(g["grad"]), 2 * w[2 * r: 2 * r + 2])  # summed over both ranks' losses


@pytest.mark.slow
@pytest.mark.parametrize("combiner", ["fixed", "pcgrad"])
def test_two_ranks_match_one_rank(two_rank_run, tmp_path, combiner):
    from stages.training.checkpoint import load

    _train(tmp_path / "one", rank=0, world=1, combiner=combiner)
    two, one = two_rank_run / combiner, tmp_path / "one"
    rows = [[r for r in read_jsonl(d / "logs" / "metrics.jsonl") if r["kind"] == "train"] for d in (two, one)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == list(range(1, STEPS + 1))
    for a, b in zip(*rows):
        for name in ("mse", "nce"):
            assert a["losses"][name] == pytest.approx(b["losses"][name], rel=2e-6), (a["step"], name)  # summation order only
    wa, wb = load(two, resume=False).weights, load(one, resume=False).weights
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=2e-6, msg=k)  # summation order only, see module doc
    assert not (two / "checkpoints").exists() and len(list((two / "logs").glob("*.jsonl"))) == 2  # rank 0 alone wrote


if __name__ == "__main__":  # one torchrun rank
    from stages.training import parallel

    out_dir = Path(sys.argv[1])
    info = parallel.setup("cpu")
    _gather_known_answer(out_dir)
    for comb in ("fixed", "pcgrad"):
        _train(out_dir / comb, rank=info.rank, world=info.world_size, combiner=comb)
    parallel.teardown()
