"""Action pretraining (ch07 §7.3): chunk modelling with robust BC, a spectral prior and control priors.

Per step, on normalised action chunks a_{t:t+H} [B, H, Da] with the proprio state s_t:

- targets: the demonstrated chunk with its jerk clipped to the data's limit (`jerk_clip`, the §7.3
  rule of thumb for human corrections: a spike is clipped and re-integrated, not learned);
- chunk modelling: some steps are hidden (`step_mask`; per sample either a random `mask_ratio` of
  the steps, or — for a `bc_share` of the samples — all of them, which is behaviour cloning of the
  chunk from the proprio state alone, π(a_{t:t+H} | s_t)); the action encoder reads the rest and
  `heads.chunk` predicts every step;
- `bc`: Huber or quantile (pinball, τ = 0.5) loss on the hidden steps (`--bc huber|quantile`),
  robust to the high-jerk outliers of §7.3 where MSE is not;
- `spectral`: Σ_k w_k (|X[k]| − |X̂[k]|)², w_k ∝ (1 + k)^−α, on the chunk the model would execute
  (hidden steps predicted, visible steps as given), so the low-frequency shape must match and
  high-frequency jitter is cheap to drop;
- `dynamics`: the hinge λ_a Σ[|a| − a_max]_+ + λ_j Σ[|j| − j_max]_+ on the same chunk.

Units of the control priors. Actions are compared in normalised units (the loader's mean/std) and
differentiated per control step (dt = 1 step), so the limits do not depend on the dataset's rate or
units. `signal` says what an action is: "velocity" (a command per step, e.g. the Meta-World demo's
end-effector deltas: acceleration = Δa, jerk = Δ²a) or "position" (a target pose: acceleration =
Δ²a, jerk = Δ³a). a_max and j_max are per dimension the `limit_quantile` (default 0.99) of |acc|
and |jerk| over the training split's valid frames, differences never crossing an episode boundary
(`dynamics_limits`); they are saved in trainer_state.json (`recipe`).

Held-out metrics: `recon_mae` (mean |â − a| on the hidden steps at `mask_ratio`, fixed masks),
`bc_mae` (every step hidden: the chunk from proprio alone), `jerk_pred` / `jerk_data` /
`jerk_ratio` (mean |jerk| of the BC chunk vs the demonstration) and `jerk_over_limit` (the share of
predicted jerk elements above j_max), all in normalised units per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stages.data import lerobot_format as fmt
from stages.data.loader import Loader
from stages.errors import BadInput
from stages.objectives import bc_huber, bc_quantile, dynamics_hinge, finite_difference, jerk_clip, spectral_prior
from stages.pretraining import heldout_batches

LOSS_WEIGHTS = {"bc": 1.0, "spectral": 0.5, "dynamics": 0.2}
BC_LOSSES = ("huber", "quantile")
SIGNALS = {"velocity": 1, "position": 2}  # signal -> difference order of the acceleration


@dataclass
class ActionPretrainConfig:
    bc: str = "huber"                   # huber | quantile (ch07 §7.3 rule of thumb)
    huber_delta: float = 1.0            # normalised units
    quantile: float = 0.5               # pinball τ (0.5 = median regression)
    mask_ratio: float = 0.5             # share of steps hidden in a masked sample
    bc_share: float = 0.25              # share of samples with every step hidden (BC from proprio)
    spectral_alpha: float = 1.0         # w_k ∝ (1 + k)^-α
    signal: str = "velocity"            # what an action is: "velocity" or "position" (see module doc)
    limit_quantile: float = 0.99        # a_max, j_max = this quantile of the data's |acc|, |jerk|
    clip_targets: bool = True           # jerk-clip the demonstrations to j_max
    eval_max_samples: int = 1024
    eval_seed: int = 0

    def check(self) -> None:
        if self.bc not in BC_LOSSES:
            raise BadInput(f"unknown BC loss `{self.bc}`", caused_by=f"known: {', '.join(BC_LOSSES)}")
        if self.signal not in SIGNALS:
            raise BadInput(f"unknown action signal `{self.signal}`", caused_by=f"known: {', '.join(SIGNALS)}")
        if not (0.0 < self.mask_ratio <= 1.0 and 0.0 <= self.bc_share <= 1.0 and 0.5 <= self.limit_quantile < 1.0):
            raise BadInput("action pretraining: mask_ratio must be in (0, 1], bc_share in [0, 1], limit_quantile in [0.5, 1)")


def dynamics_limits(loader: Loader, *, signal: str, quantile: float) -> dict[str, list[float]]:
    """Per-dimension {acc_max, jerk_max} from the loader's training episodes, in normalised units per step.

    Differences are taken along each episode's valid frames only (a window that crosses an episode
    boundary or touches an invalid frame is dropped); vectorised over the whole split.
    """
    ds, key = loader.dataset, loader.cfg.action_key
    stats = loader.norm_stats()[key]
    rows = np.concatenate([np.arange(s, e) for s, e in ds.episodes[["from_index", "to_index"]].to_numpy()[loader.episodes]])
    action = (ds.column(key)[rows].astype(np.float64) - np.asarray(stats["mean"])) / np.asarray(stats["std"])  # [N, Da]
    episode = ds.column("episode_index")[rows]
    valid = ds.column(fmt.VALID)[rows].astype(bool) if fmt.VALID in ds.features else np.ones(len(rows), bool)
    out = {}
    for name, order in (("acc_max", SIGNALS[signal]), ("jerk_max", SIGNALS[signal] + 1)):
        if len(rows) <= order:
            raise BadInput(f"dataset `{ds.root}`: too few training frames to measure action {name[:-4]}")
        diff = np.diff(action, n=order, axis=0)  # [N - order, Da]
        window = np.ones(len(diff), bool)
        for k in range(order + 1):  # every frame of the window: valid and in one episode
            window &= valid[k:len(valid) - order + k] & (episode[k:len(episode) - order + k] == episode[:len(episode) - order])
        if not window.any():
            raise BadInput(f"dataset `{ds.root}`: no {order + 1} consecutive valid frames to measure action {name[:-4]}")
        limit = np.quantile(np.abs(diff[window]), quantile, axis=0)
        out[name] = np.maximum(limit, 1e-3).tolist()  # a constant dimension still gets a usable limit
    return out


class ActionRecipe:
    def __init__(self, cfg: ActionPretrainConfig, limits: dict[str, list[float]]):
        cfg.check()
        self.cfg, self.limits = cfg, limits
        self.acc_order = SIGNALS[cfg.signal]

    # ------------------------------------------------------------------ state (trainer_state.json)

    def state_dict(self) -> dict:
        return {"limits": self.limits, "signal": self.cfg.signal, "limit_quantile": self.cfg.limit_quantile}

    def load_state_dict(self, state: dict) -> None:
        self.limits = {k: [float(x) for x in v] for k, v in state["limits"].items()}  # resume with the saved limits

    # ------------------------------------------------------------------ pieces

    def _limit(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.limits[name], dtype=like.dtype, device=like.device)  # [Da]

    def _targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(chunk [B, H, Da], valid [B, H]): invalid steps zeroed; jerk clipped where the chunk is whole."""
        valid = batch["action_valid"]
        action = torch.nan_to_num(batch["action"]).masked_fill(~valid[..., None], 0.0)
        if self.cfg.clip_targets:
            clipped = jerk_clip(action, dt=1.0, jerk_max=self._limit("jerk_max", action), signal=self.cfg.signal)
            action = torch.where(valid.all(dim=1)[:, None, None], clipped, action)  # a gap would be integrated over
        return action, valid

    def _step_mask(self, batch_size: int, horizon: int, *, ratio: float, full_share: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """bool [B, H], True = hidden: a random `ratio` of the steps (at least one), or all of them."""
        hidden = max(1, int(round(ratio * horizon)))
        ranks = torch.rand(batch_size, horizon, generator=generator).argsort(dim=1).argsort(dim=1)
        mask = ranks < hidden
        mask[torch.rand(batch_size, generator=generator) < full_share] = True
        return mask

    def _predict(self, model, target: torch.Tensor, batch: dict, valid: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        out = model.encode_action(target, batch["state"], valid, step_mask=hidden)
        mean, _ = model.decode_action(out)  # [B, H, Da]
        return mean

    def _bc(self, pred: torch.Tensor, target: torch.Tensor, scored: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.bc == "huber":
            return bc_huber(pred, target, delta=self.cfg.huber_delta, valid=scored, weight=weight)
        return bc_quantile(pred, target, quantiles=self.cfg.quantile, valid=scored, weight=weight)

    # ------------------------------------------------------------------ training

    def losses(self, model, batch: dict, step: int, phase) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        target, valid = self._targets(batch)
        b, h, _ = target.shape
        hidden = self._step_mask(b, h, ratio=cfg.mask_ratio, full_share=cfg.bc_share).to(target.device)
        pred = self._predict(model, target, batch, valid, hidden)
        executed = torch.where(hidden[..., None], pred, target)  # what the model would run: [B, H, Da]
        w = batch["weight"]
        return {
            "bc": self._bc(pred, target, hidden & valid, w),
            "spectral": spectral_prior(executed, target, alpha=cfg.spectral_alpha, valid=valid, weight=w),
            "dynamics": dynamics_hinge(executed, dt=1.0, acc_max=self._limit("acc_max", pred), jerk_max=self._limit("jerk_max", pred),
                                       signal=cfg.signal, valid=valid, weight=w),
        }

    def batch_size(self, batch: dict) -> int:
        return int(batch["action"].shape[0])

    # ------------------------------------------------------------------ held-out progress

    def _jerk(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(|jerk| [B, H', Da], window valid [B, H']) per step in normalised units."""
        order = self.acc_order + 1
        ok = valid
        for _ in range(order):
            ok = ok[:, :-1] & ok[:, 1:]
        return finite_difference(x, dt=1.0, order=order).abs(), ok

    @torch.no_grad()
    def evaluate(self, model, loader, step: int) -> dict[str, float]:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.eval_seed)
        device = model.logit_scale.device
        sums = {"recon": 0.0, "recon_n": 0.0, "bc": 0.0, "bc_n": 0.0, "jp": 0.0, "jd": 0.0, "jn": 0.0, "over": 0.0}
        for batch in heldout_batches(loader, cfg.eval_max_samples, device):
            target, valid = batch["action"].float().masked_fill(~batch["action_valid"][..., None], 0.0), batch["action_valid"]
            b, h, _ = target.shape
            for kind, share in (("recon", 0.0), ("bc", 1.0)):
                hidden = self._step_mask(b, h, ratio=cfg.mask_ratio, full_share=share, generator=gen).to(device)
                pred = self._predict(model, target, batch, valid, hidden).float()
                scored = (hidden & valid)[..., None].float()
                sums[kind] += float(((pred - target).abs() * scored).sum())
                sums[f"{kind}_n"] += float(scored.sum()) * target.shape[-1]
            jerk_pred, ok = self._jerk(pred, valid)  # the BC chunk (every step hidden)
            jerk_data, _ = self._jerk(target, valid)
            m = ok[..., None].float()
            sums["jp"] += float((jerk_pred * m).sum())
            sums["jd"] += float((jerk_data * m).sum())
            sums["jn"] += float(m.sum()) * target.shape[-1]
            sums["over"] += float(((jerk_pred > self._limit("jerk_max", jerk_pred)) * m).sum())
        if sums["bc_n"] == 0:
            return {}
        out = {"recon_mae": sums["recon"] / max(sums["recon_n"], 1.0), "bc_mae": sums["bc"] / sums["bc_n"]}
        if sums["jn"] > 0:
            out.update({"jerk_pred": sums["jp"] / sums["jn"], "jerk_data": sums["jd"] / sums["jn"],
                        "jerk_ratio": sums["jp"] / max(sums["jd"], 1e-12), "jerk_over_limit": sums["over"] / sums["jn"]})
        return out
