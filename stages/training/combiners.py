"""Loss combiners: fixed weights, uncertainty weighting, GradNorm and PCGrad (ch07 §7.8, ch05 §5.10).

A combiner turns the dict of losses of one step into parameter gradients:

    combiner = build_combiner("pcgrad", ["vl", "la", "va", "cycle"], {"seed": 0})
    stats = combiner.backward(losses, params, weights=phase.weights, min_weights=phase.min_weights)
    optimizer.step()

`weights` are the schedule's (annealed) weights λ_i; `min_weights` are floors m_i: the effective
weight of a loss never drops below its floor (ch05 §5.10 rule of thumb: prior and distillation
losses keep a guaranteed weight so an adaptive scheme cannot silence them). A loss whose weight and
floor are both 0 is inactive this step (no backward pass is spent on it).

Multi-gradient combiners (PCGrad, GradNorm, and any combiner asked for `grad_stats`) take one
gradient per task with `torch.autograd.grad` over the flat parameter list, stacked into G [T, P].
Those calls bypass DDP's gradient hooks: under DDP pass `reduce_grads` (e.g. an all-reduce mean of
G) so that the surgery runs on the global gradients. `backward` returns the stats row of
`logs/gradients.jsonl` (schema `gradient-log`, see `gradient_log_row`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from stages.errors import BadInput
from stages.registry import Registry

log = logging.getLogger("vla")

GradReducer = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- gradient algebra


def pcgrad(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al. 2020; ch05 §5.10): grads [T, P] → combined [P].

    For each task i, the other tasks are visited in a random order; whenever the running
    g_i^PC conflicts with the ORIGINAL g_j (dot < 0) it is projected onto g_j's normal plane,
    g_i^PC ← g_i^PC − (g_i^PC·g_j / ‖g_j‖²) g_j. The projected gradients are summed.
    The order is drawn from `generator` (CPU), so a seeded generator gives a deterministic result.
    Known answer: [[-4, 1, 1], [6, 1, 1]] → [100/171, 650/171, 650/171].
    """
    if grads.dim() != 2:
        raise ValueError(f"pcgrad expects grads [T, P], got {list(grads.shape)}")
    weights, _ = pcgrad_weights(grads @ grads.T, generator)
    return weights.to(device=grads.device, dtype=grads.dtype) @ grads


def pcgrad_weights(gram: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """PCGrad in the span of the task gradients: (w [T] float64, projections made), combined = w·G.

    Every projected g_i^PC is a combination Σ_k C_ik g_k of the original gradients, and every dot
    product the algorithm needs is g_i^PC · g_j = (C · Gram)_ij. So the surgery runs on the T × T
    Gram matrix (one matmul over P, shared with the cosine stats) and the coefficients C; the
    gradients are touched once more at the end: Σ_i g_i^PC = (1ᵀC) G. No [T, P] temporaries and no
    Python loop over parameters; T − 1 vectorised sweeps over tasks.
    """
    tasks = gram.shape[0]
    gram = gram.to(device="cpu", dtype=torch.float64)  # [T, T]; the step's one host sync
    if tasks < 2:
        return torch.ones(tasks, dtype=torch.float64), 0
    keys = torch.rand(tasks, tasks, generator=generator)  # [T, T] on CPU: the generator's device
    keys.fill_diagonal_(2.0)  # self sorts after every other task (keys < 1)
    order = keys.argsort(dim=1)[:, : tasks - 1]  # [T, T-1]: for each task a random order of the others
    coef = torch.eye(tasks, dtype=torch.float64)  # g_i^PC = Σ_k coef[i, k] g_k
    rows = torch.arange(tasks)
    hits = 0
    for k in range(tasks - 1):  # sweep k: every task i meets its k-th other task j at once
        j = order[:, k]  # [T]
        dot = (coef @ gram)[rows, j]  # [T] g_i^PC · g_j, against the ORIGINAL g_j
        conflict = dot < 0
        sq_norm = gram[j, j].clamp_min(torch.finfo(torch.float64).tiny)
        coef[rows, j] -= torch.where(conflict, dot / sq_norm, torch.zeros_like(dot))
        hits += int(conflict.sum())
    return coef.sum(dim=0), hits


def flat_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters that can receive a gradient (frozen ones are skipped)."""
    return [p for p in params if p.requires_grad]


def task_gradients(losses: list[torch.Tensor], params: list[torch.Tensor], *, keep_graph: bool = False) -> torch.Tensor:
    """One flattened gradient per loss: G [T, P] (float32), P = Σ numel over `params`.

    A parameter a loss does not reach gets zeros; a loss without a graph gets a zero row.
    The graph is freed after the last loss unless `keep_graph` (a later backward needs it).
    """
    total = sum(p.numel() for p in params)
    device = params[0].device if params else torch.device("cpu")
    grads = torch.zeros(len(losses), total, dtype=torch.float32, device=device)
    for i, loss in enumerate(losses):
        if not loss.requires_grad:
            continue
        retain = keep_graph or i < len(losses) - 1
        parts = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
        flat = [p.new_zeros(p.numel()) if g is None else g.reshape(-1) for p, g in zip(params, parts)]
        torch.cat([f.to(torch.float32) for f in flat], out=grads[i])  # rows are contiguous: no extra copy
    return grads


def write_grads(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Accumulate a flat gradient [P] into `p.grad` (gradient accumulation keeps working)."""
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        g = g.view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)


# ----------------------------------------------------------------------------- weights and stats


def effective_weights(names: list[str], weights: dict[str, float], min_weights: dict[str, float]) -> dict[str, float]:
    """max(λ_i, m_i) per loss; a loss without a weight is a programming error, never a silent 1."""
    missing = [n for n in names if n not in weights and n not in min_weights]
    if missing:
        raise ValueError(f"no weight for loss(es) {missing}; weights given for {sorted(weights)}")
    return {n: max(float(weights.get(n, 0.0)), float(min_weights.get(n, 0.0))) for n in names}


def _grad_stats(names: list[str], gram: torch.Tensor) -> dict:
    """Per-loss gradient norms and pairwise cosines from the Gram matrix G Gᵀ [T, T]."""
    gram = gram.to(device="cpu", dtype=torch.float64)
    norm = gram.diagonal().clamp_min(0).sqrt()
    cos = gram / (norm[:, None] * norm[None, :]).clamp_min(1e-30)
    norm_l, cos_l = norm.tolist(), cos.tolist()
    pairs = [
        {"a": names[i], "b": names[j], "cos": cos_l[i][j]}
        for i in range(len(names))
        for j in range(i + 1, len(names))
    ]
    return {
        "grad_norms": dict(zip(names, norm_l)),
        "cosines": pairs,
        "conflicts": sum(1 for p in pairs if p["cos"] < 0),
    }


def _base_stats(name: str, losses: dict[str, torch.Tensor], eff: dict[str, float]) -> dict:
    values = torch.stack([v.detach().float().reshape(()) for v in losses.values()]).tolist()
    return {
        "combiner": name,
        "losses": dict(zip(losses, values)),
        "weights": dict(eff),
        "grad_norms": {},
        "cosines": [],
        "conflicts": None,
        "pcgrad_hit_rate": None,
    }


def gradient_log_row(step: int, stats: dict, *, phase: str | None = None) -> dict:
    """One line of `logs/gradients.jsonl` (schema `gradient-log`)."""
    return {"schema_version": 1, "step": int(step), "phase": phase, **stats}


# ----------------------------------------------------------------------------- combiners


class _Combiner:
    """Shared plumbing; subclasses implement `_combine(step)` for the active losses."""

    name = ""

    def __init__(self, loss_names: list[str], config):
        if len(set(loss_names)) != len(loss_names):
            raise ValueError(f"duplicate loss names: {loss_names}")
        self.loss_names = list(loss_names)
        self.config = config

    def parameters(self) -> list[torch.Tensor]:
        """Learnable tensors of the combiner itself, for the run's optimizer (may be empty)."""
        return []

    def to(self, device: torch.device | str) -> _Combiner:
        """Move learnable tensors to the model's device (call before building the optimizer)."""
        for p in self.parameters():
            p.data = p.data.to(device)
        return self

    def state_dict(self) -> dict:
        """Tensors (for safetensors) and JSON-able values, keyed by name."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def backward(
        self,
        losses: dict[str, torch.Tensor],
        params: list[torch.Tensor],
        *,
        weights: dict[str, float],
        min_weights: dict[str, float] | None = None,
        grad_stats: bool = False,
        reduce_grads: GradReducer | None = None,
    ) -> dict:
        """Write (accumulate) the combined gradient into `p.grad`; return the stats row.

        weights: λ_i from the schedule; min_weights: floors m_i. grad_stats: also compute per-loss
        gradient norms and cosines (T extra backward passes for fixed / uncertainty; free for
        PCGrad / GradNorm). reduce_grads: an all-reduce mean under DDP, applied to the per-task
        gradients G [T, P] (and by GradNorm to its loss values, so every rank updates its weights
        identically).
        """
        unknown = [n for n in losses if n not in self.loss_names]
        if unknown:
            raise ValueError(f"{self.name}: losses {unknown} were not declared; declared: {self.loss_names}")
        floors = {n: float(v) for n, v in (min_weights or {}).items()}
        eff = effective_weights(list(losses), weights, floors)
        lam = {n: float(weights.get(n, 0.0)) for n in losses}
        stats = _base_stats(self.name, losses, eff)
        step = _Step(losses, [n for n in losses if eff[n] > 0.0], flat_params(params), lam, floors, eff, stats, grad_stats, reduce_grads)
        if not step.active:
            return stats
        self._combine(step)
        return stats

    def _combine(self, step: _Step) -> None:
        raise NotImplementedError


@dataclass
class _Step:
    """What one `backward` call works on."""

    losses: dict[str, torch.Tensor]
    active: list[str]  # losses with max(λ, m) > 0, in the caller's order
    params: list[torch.Tensor]  # trainable parameters
    lam: dict[str, float]  # schedule weights λ_i
    floors: dict[str, float]  # min weights m_i
    eff: dict[str, float]  # max(λ_i, m_i)
    stats: dict
    grad_stats: bool
    reduce_grads: GradReducer | None

    def gradients(self, *, keep_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(G [T, P], Gram G Gᵀ [T, T]); the per-loss norms and cosines go into the stats."""
        grads = task_gradients([self.losses[n] for n in self.active], self.params, keep_graph=keep_graph)
        if self.reduce_grads is not None:
            grads = self.reduce_grads(grads)
        gram = grads @ grads.T
        self.stats.update(_grad_stats(self.active, gram))
        return grads, gram

    def backward_sum(self, total: torch.Tensor) -> None:
        """Single-backward path (fixed / uncertainty); per-task gradients only for the stats."""
        if self.grad_stats and self.params:
            self.gradients(keep_graph=True)
        total.backward()


@dataclass
class FixedConfig:
    """Fixed weights: Σ max(λ_i, m_i) L_i, one backward pass. No parameters."""


class FixedWeights(_Combiner):
    name = "fixed"

    def _combine(self, step: _Step) -> None:
        step.backward_sum(sum(step.eff[n] * step.losses[n] for n in step.active))


@dataclass
class UncertaintyConfig:
    """Kendall et al. 2018 (ch07 §7.8, ch05 §5.10): Σ_i λ_i (L_i / (2σ_i²) + log σ_i), σ learnable."""

    init_log_sigma: float = 0.0  # log σ_i at start: every loss starts at coefficient λ_i / 2


class UncertaintyWeighting(_Combiner):
    """Learnable s_i = log σ_i, trained by the run's optimizer through `parameters()`.

    Coefficient of L_i: max(λ_i e^(−2 s_i) / 2, m_i); λ_i also scales the log σ_i term, so a loss the
    schedule switches off leaves its σ alone. ∂L/∂s_i = λ_i (1 − e^(−2 s_i) L_i) while unclamped.
    """

    name = "uncertainty"

    def __init__(self, loss_names: list[str], config: UncertaintyConfig):
        super().__init__(loss_names, config)
        self.log_sigma = torch.nn.Parameter(torch.full((len(loss_names),), float(config.init_log_sigma)))
        self._index = {n: i for i, n in enumerate(loss_names)}

    def parameters(self) -> list[torch.Tensor]:
        return [self.log_sigma]

    def state_dict(self) -> dict:
        return {"loss_names": list(self.loss_names), "log_sigma": self.log_sigma.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        _check_names(self, state)
        with torch.no_grad():
            self.log_sigma.copy_(torch.as_tensor(state["log_sigma"]))

    def _combine(self, step: _Step) -> None:
        s = self.log_sigma[[self._index[n] for n in step.active]]  # [T]
        device = s.device
        lam = torch.tensor([step.lam[n] for n in step.active], dtype=s.dtype, device=device)
        floor = torch.tensor([step.floors.get(n, 0.0) for n in step.active], dtype=s.dtype, device=device)
        coef = torch.maximum(lam * torch.exp(-2.0 * s) / 2.0, floor)  # [T]
        values = torch.stack([step.losses[n].reshape(()) for n in step.active])  # [T]
        step.backward_sum((coef * values).sum() + (lam * s).sum())
        step.stats["weights"].update(dict(zip(step.active, coef.detach().tolist())))
        step.stats["log_sigma"] = dict(zip(self.loss_names, self.log_sigma.detach().tolist()))


@dataclass
class GradNormConfig:
    """GradNorm (Chen et al. 2018; ch05 §5.10 with α = 0.5 by default)."""

    alpha: float = 0.5  # restoring force: how hard slow tasks are pushed (0 = equal gradient norms)
    lr: float = 0.025  # step size η of the weights' own update w ← w − η ∂L_gn/∂w
    ratio: str = "initial"  # training rate: "initial" L_i(t)/L_i(0) (paper) or "mean" L_i/L̄ (ch05 §5.10 as written)
    min_weight: float = 1e-3  # GradNorm weights stay positive before renormalisation


class GradNorm(_Combiner):
    """Gradient-norm balancing with its own weight update (ch05 §5.10).

    Each step, with g_i = ∇L_i over the trainable parameters and weights w_i (Σ w = #active):
      model gradient  Σ_i max(λ_i w_i, m_i) g_i          (w(t), before the update)
      G_i = w_i ‖g_i‖, Ḡ = mean G_i, r_i = L̃_i / mean L̃ with L̃_i = L_i(t)/L_i(0) ("initial")
        or r_i = L_i / mean L ("mean"),
      L_gn = Σ_i |G_i − Ḡ r_i^α| (target held constant) ⇒ ∂L_gn/∂w_i = sign(G_i − Ḡ r_i^α) ‖g_i‖,
      w_i ← w_i − η ∂L_gn/∂w_i, then renormalised so the active weights sum to their count.
    w equalises gradient scales; λ (the schedule) still sets the relative importance on top.
    """

    name = "gradnorm"

    def __init__(self, loss_names: list[str], config: GradNormConfig):
        super().__init__(loss_names, config)
        self.weights = torch.ones(len(loss_names), dtype=torch.float64)
        self.initial = torch.full((len(loss_names),), float("nan"), dtype=torch.float64)  # L_i(0)
        self._index = {n: i for i, n in enumerate(loss_names)}

    def state_dict(self) -> dict:
        return {"loss_names": list(self.loss_names), "weights": self.weights.clone(), "initial_losses": self.initial.clone()}

    def load_state_dict(self, state: dict) -> None:
        _check_names(self, state)
        self.weights = torch.as_tensor(state["weights"], dtype=torch.float64).clone()
        self.initial = torch.as_tensor(state["initial_losses"], dtype=torch.float64).clone()

    def _combine(self, step: _Step) -> None:
        idx = [self._index[n] for n in step.active]
        grads, _ = step.gradients()  # [T, P]
        w = self.weights[idx]  # [T] float64
        lam = torch.tensor([step.lam[n] for n in step.active], dtype=torch.float64)
        floor = torch.tensor([step.floors.get(n, 0.0) for n in step.active], dtype=torch.float64)
        coef = torch.maximum(lam * w, floor)  # [T]
        write_grads(step.params, coef.to(grads) @ grads)
        step.stats["weights"].update(dict(zip(step.active, coef.tolist())))
        norms = torch.tensor([step.stats["grad_norms"][n] for n in step.active], dtype=torch.float64)
        values = torch.stack([step.losses[n].detach().float().reshape(()) for n in step.active])  # [T]
        if step.reduce_grads is not None:  # every rank must update its weights from the same losses
            values = step.reduce_grads(values)
        values = values.to(device="cpu", dtype=torch.float64)
        new_w, gn_loss = self._update(idx, w, norms, values)
        self.weights[idx] = new_w
        step.stats["gradnorm_weights"] = dict(zip(self.loss_names, self.weights.tolist()))
        step.stats["gradnorm_loss"] = gn_loss

    def _update(self, idx: list[int], w: torch.Tensor, norms: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, float]:
        cfg = self.config
        if not bool(torch.isfinite(values).all()):
            log.warning("gradnorm: non-finite loss values %s; using equal rates this step", values.tolist())
        if cfg.ratio == "initial":
            init = self.initial[idx]
            fresh = torch.isnan(init) & (values > 0)  # L_i(0) is the first *positive* value: a hinge may start at 0
            init = torch.where(fresh, values, init)
            self.initial[idx] = init
            rate = values / init
        else:
            rate = values.clone()
        # A loss at 0 (a satisfied hinge) or not yet initialised has no training rate: it gets the
        # neutral rate (the mean of the others) instead of disabling the balance for every loss.
        ok = torch.isfinite(rate) & (rate > 0)
        rate = torch.where(ok, rate, rate[ok].mean() if bool(ok.any()) else torch.ones((), dtype=rate.dtype))
        rel = rate / rate.mean()  # r_i, inverse training rate
        g_w = w * norms  # G_i
        target = g_w.mean() * rel.pow(cfg.alpha)  # held constant (Chen et al. 2018 §3.2)
        gn_loss = float((g_w - target).abs().sum())
        w = (w - cfg.lr * torch.sign(g_w - target) * norms).clamp_min(cfg.min_weight)
        return w * (len(idx) / w.sum()), gn_loss


@dataclass
class PCGradConfig:
    """PCGrad on the weighted task gradients max(λ_i, m_i) g_i (ch05 §5.10 "先 PCGrad")."""

    seed: int = 0  # seeds the combiner's own generator for the random task orders


class PCGrad(_Combiner):
    name = "pcgrad"

    def __init__(self, loss_names: list[str], config: PCGradConfig):
        super().__init__(loss_names, config)
        self.generator = torch.Generator().manual_seed(int(config.seed))

    def state_dict(self) -> dict:
        return {"generator_state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(torch.as_tensor(state["generator_state"], dtype=torch.uint8))

    def _combine(self, step: _Step) -> None:
        grads, gram = step.gradients()  # [T, P], [T, T]
        coef = torch.tensor([step.eff[n] for n in step.active], dtype=torch.float64)  # surgery on c_i g_i
        weighted_gram = gram.to(device="cpu", dtype=torch.float64) * coef[:, None] * coef[None, :]
        weights, hits = pcgrad_weights(weighted_gram, self.generator)
        write_grads(step.params, (weights * coef).to(device=grads.device, dtype=grads.dtype) @ grads)
        pairs = len(step.active) * (len(step.active) - 1)
        step.stats["pcgrad_hit_rate"] = hits / pairs if pairs else 0.0


def _check_names(combiner: _Combiner, state: dict) -> None:
    if list(state.get("loss_names", [])) != combiner.loss_names:
        raise BadInput(
            f"{combiner.name} combiner state is for losses {state.get('loss_names')}, the schedule declares {combiner.loss_names}",
            hint="resume with the schedule that produced the checkpoint",
        )


# ----------------------------------------------------------------------------- registry

COMBINERS: Registry[tuple[type, type]] = Registry("combiner")
COMBINERS.add("fixed", (FixedWeights, FixedConfig))
COMBINERS.add("uncertainty", (UncertaintyWeighting, UncertaintyConfig))
COMBINERS.add("gradnorm", (GradNorm, GradNormConfig))
COMBINERS.add("pcgrad", (PCGrad, PCGradConfig))


def combiner_config(name: str, params: dict | None = None, *, where: str = "combiner", source: str | None = None):
    """Build a combiner's config from a params dict; an unknown name, key or bad value is BadInput
    naming the JSON path `where` (inside file `source` when given)."""
    prefix = f"`{source}`: " if source else ""

    def bad(path: str, message: str) -> BadInput:
        return BadInput(f"{prefix}field `{path}` is invalid", caused_by=message)

    if name not in COMBINERS:
        raise bad(f"{where}.name", f"unknown combiner `{name}` (known: {', '.join(COMBINERS.names())})")
    _, config_cls = COMBINERS.get(name)
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for key, value in params.items():
        if key not in fields:
            raise bad(f"{where}.params.{key}", f"combiner `{name}` has no parameter `{key}` (known: {', '.join(fields) or 'none'})")
        expected = type(fields[key].default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            params[key] = value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise bad(f"{where}.params.{key}", f"expected {expected.__name__}, got {value!r}")
    config = config_cls(**params)
    if isinstance(config, GradNormConfig):
        if not config.alpha >= 0:
            raise bad(f"{where}.params.alpha", f"must be >= 0, got {config.alpha}")
        if not config.lr > 0:
            raise bad(f"{where}.params.lr", f"must be > 0, got {config.lr}")
        if config.ratio not in ("initial", "mean"):
            raise bad(f"{where}.params.ratio", f"must be `initial` or `mean`, got `{config.ratio}`")
        if not config.min_weight > 0:
            raise bad(f"{where}.params.min_weight", f"must be > 0, got {config.min_weight}")
    return config


def build_combiner(name: str, loss_names: list[str], params: dict | None = None, *, where: str = "combiner") -> _Combiner:
    """`build_combiner("gradnorm", ["vl", "la"], {"alpha": 0.5})` → a combiner object."""
    config = combiner_config(name, params, where=where)
    cls, _ = COMBINERS.get(name)
    return cls(loss_names, config)
