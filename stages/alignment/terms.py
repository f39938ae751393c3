"""The loss terms the alignment recipe computes, and the checks a schedule must pass for it.

A schedule names loss *terms* (`losses.<term>` → a registered loss + params, or a registered loss
used directly); the recipe knows how to compute each term from a batch — which encodings it needs,
which registered losses may compute it, which of its keyword parameters the schedule may set, and
which modalities' samples it serves (token-bucket routing, `stages.alignment.clusters`):

| term        | losses                 | samples serving | chapter |
|-------------|------------------------|-----------------|---------|
| vision_nce  | info_nce               | V               | ch07 §7.2 (views + near frames, via the stage-I vision recipe) |
| mvm         | mvm                    | V               | ch07 §7.2 |
| tc          | temporal_consistency   | V               | ch07 §7.2 |
| lang_nce    | info_nce               | L               | ch07 §7.4 (paraphrases + constraint hard negatives) |
| bc          | bc_huber, bc_quantile  | A               | ch07 §7.3 (masked chunk modelling) |
| spectral    | spectral_prior         | A               | ch07 §7.3 |
| dynamics    | dynamics_hinge         | A               | ch07 §7.3 |
| vl          | info_nce               | V or L          | ch05 §5.2 |
| la          | info_nce               | L or A          | ch05 §5.3 |
| va          | info_nce               | V or A          | ch05 §5.4 |
| cycle       | cycle                  | any             | ch07 §7.7, ch05 §5.4 |
| coherence   | spectral_coherence     | V or A          | ch05 §5.4 (γ_VA in a band) |
| distill     | distillation_kl        | any             | ch07 §7.9 (EMA teacher) |
| decollapse  | decollapse             | any             | ch07 §7.9 |
| sft         | bc_nll                 | any             | ch07 §7.5.1 D |
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.errors import BadInput
from stages.registry import Registry

V, L, A = 0, 1, 2


@dataclass(frozen=True)
class TermSpec:
    losses: tuple[str, ...]                 # registered losses that may compute the term
    serves: tuple[int, ...]                 # a sample counts for the term if it serves any of these
    params: tuple[str, ...] = ()            # keyword parameters the schedule may set
    family: str = "align"                   # vision | language | action (stage-I recipes) | align


TERMS: Registry[TermSpec] = Registry("alignment loss term")
TERMS.add("vision_nce", TermSpec(("info_nce",), (V,), family="vision"))
TERMS.add("mvm", TermSpec(("mvm",), (V,), ("kind",), family="vision"))
TERMS.add("tc", TermSpec(("temporal_consistency",), (V,), family="vision"))
TERMS.add("lang_nce", TermSpec(("info_nce",), (L,), family="language"))
TERMS.add("bc", TermSpec(("bc_huber", "bc_quantile"), (A,), ("delta", "quantiles"), family="action"))
TERMS.add("spectral", TermSpec(("spectral_prior",), (A,), ("alpha",), family="action"))
TERMS.add("dynamics", TermSpec(("dynamics_hinge",), (A,), family="action"))
TERMS.add("vl", TermSpec(("info_nce",), (V, L)))
TERMS.add("la", TermSpec(("info_nce",), (L, A)))
TERMS.add("va", TermSpec(("info_nce",), (V, A)))
TERMS.add("cycle", TermSpec(("cycle",), (V, L, A), ("scale_free", "eps")))
TERMS.add("coherence", TermSpec(("spectral_coherence",), (V, A), ("fs", "band", "nperseg", "noverlap")))
TERMS.add("distill", TermSpec(("distillation_kl",), (V, L, A), ("direction",)))
TERMS.add("decollapse", TermSpec(("decollapse",), (V, L, A), ("std_target", "var_weight", "cov_weight", "eps")))
TERMS.add("sft", TermSpec(("bc_nll",), (V, L, A), ("min_log_std",)))


def check_terms(schedule) -> dict[str, dict]:
    """Every term of the schedule must be one the recipe computes, with an accepted loss and
    parameters; returns {term: params}. BadInput names the JSON path (`losses.vl.loss`)."""
    declared = schedule.raw.get("losses", {})
    out = {}
    for name, term in schedule.terms.items():
        where = f"losses.{name}" if name in declared else _first_use(schedule, name)
        if name not in TERMS:
            raise BadInput(f"`{schedule.source}`: field `{where}` is invalid",
                           caused_by=f"the align recipe computes no term `{name}` (known: {', '.join(TERMS.names())})")
        spec = TERMS.get(name)
        if term.loss not in spec.losses:
            raise BadInput(f"`{schedule.source}`: field `{where}{'.loss' if name in declared else ''}` is invalid",
                           caused_by=f"the align recipe computes `{name}` with {' or '.join(spec.losses)}, not `{term.loss}`")
        for key in term.params:
            if key not in spec.params:
                raise BadInput(f"`{schedule.source}`: field `{where}.params.{key}` is invalid",
                               caused_by=f"the align recipe sets `{key}` of `{name}` itself"
                                         + (f" (settable here: {', '.join(spec.params)})" if spec.params else ""))
        out[name] = dict(term.params)
    return out


def _first_use(schedule, name: str) -> str:
    for i, phase in enumerate(schedule.raw["phases"]):
        for group in ("weights", "min_weights"):
            if name in phase.get(group, {}):
                return f"phases[{i}].{group}.{name}"
    return name
