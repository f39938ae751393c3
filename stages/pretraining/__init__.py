"""Stage I recipes of ch07 (§7.2 vision, §7.3 action, §7.4 language), one module each.

Each recipe implements the engine's protocol (`stages.training.loop`): `losses(model, batch, step,
phase)` and `evaluate(model, loader, step)`, plus `state_dict()` / `load_state_dict()` where it
holds state worth saving. `stages.pretrain_modality` picks one and runs it.

The two helpers below are what the three recipes share.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


def inverse_temperature(model, phase) -> torch.Tensor:
    """1/τ for InfoNCE: the schedule phase's temperature when it sets one, else exp(clamped logit scale)."""
    if phase is not None and getattr(phase, "temperature", None):
        return torch.tensor(1.0 / float(phase.temperature), device=model.logit_scale.device)
    return model.clamped_logit_scale().exp()


def heldout_batches(loader: Iterable[dict], max_samples: int, device: torch.device) -> Iterator[dict]:
    """The held-out loader's batches on `device`, stopping once `max_samples` samples were served."""
    seen = 0
    for batch in loader:
        if seen >= max_samples:
            return
        take = min(len(batch["instruction"]), max_samples - seen)
        seen += take
        yield {k: (v[:take].to(device) if isinstance(v, torch.Tensor) else v[:take]) for k, v in batch.items()}
