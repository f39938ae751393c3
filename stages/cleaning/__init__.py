"""Cleaning rules for `vla clean`, one module per rule family, all registered in `RULES`.

    timestamps   non-monotonic clocks, duplicate timestamps, gaps (frame drops), rate mismatch
    values       NaN/Inf, negative speeds, spikes, jerk outliers, dead and saturated dimensions
    camera       frozen cameras, degenerate images
    text         placeholder instructions, redundant wording (constraint phrases kept: constraints)
    episodes     short episodes, exact and near duplicates, eval leaks, task imbalance

`stages.clean` is the recipe that runs them in order; `scoring.score` compares a report with the
truth of a recorded demo dataset; `masks` is what `align-time` reads back.
"""

from stages.cleaning import camera, episodes, text, timestamps, values  # noqa: F401  (registers the rules)
from stages.cleaning.base import RULES, EpisodeResult, EpisodeWork, Finding, Mask, Rule
from stages.cleaning.config import CleanConfig, default_config, load_config
from stages.cleaning.masks import episode_masks, masked

__all__ = ["RULES", "CleanConfig", "EpisodeResult", "EpisodeWork", "Finding", "Mask", "Rule", "default_config",
           "episode_masks", "load_config", "masked"]
