"""The ablations of notebook 06: each is full JTCSE with exactly one change, defined here once.

A variant names the config `ablations` key that selects it, its row label, the group it belongs to, what it
changes in words, and how: the stage it trains (jtcse, tncse or distill), the pooling it is scored with, and
the config overrides. The run cache (`jtcse_lib.runs`) keys each variant by exactly the settings it changes, so
every variant reuses the reference's two stage-1 SimCSE towers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import RunConfig
from .errors import ConfigError

REFERENCE = "full JTCSE (reference)"


@dataclass(frozen=True)
class Ablation:
    key: str  # the name in the config key `ablations` (one of ABLATIONS)
    name: str  # the row label in ablations.csv and the figures
    group: str
    changed: str  # the change, in words
    stage: str = "jtcse"  # the run-cache stage it trains
    pooling: str = "cls"  # how the model is scored (a twin: pool(A) + pool(B))
    layers: int | None = None  # cross-attention layer count, for the layer sweep's plot
    overrides: dict = field(default_factory=dict)

    def config(self, reference: RunConfig) -> RunConfig:
        return reference.replace(**self.overrides) if self.overrides else reference


def layer_count(config: RunConfig) -> int:
    """The number of cross-attention layers of a config (a count, or the length of an explicit list)."""
    layers = config.cross_attention_layers
    return layers if isinstance(layers, int) else len(layers)


def all_ablations(reference: RunConfig, depth: int) -> list[Ablation]:
    """Every variant for a backbone of `depth` layers; the layer sweep covers every divisor of the depth (an
    equally spaced layout needs one), and 0 (no branch)."""
    ref_layers = layer_count(reference)
    sweep = [n for n in range(1, depth + 1) if depth % n == 0 and n != ref_layers]
    alpha = reference.distill_alpha
    return [
        Ablation("reference", REFERENCE, "reference", "(none)", layers=ref_layers),
        Ablation("no_modulus", "− modulus term", "component removed", "w_modulus=0", overrides={"w_modulus": 0.0}),
        Ablation("no_cross_cls", "− cross NT-Xent on tower [CLS]", "component removed", "w_cross_cls=0",
                 overrides={"w_cross_cls": 0.0}),
        Ablation("no_branch", "− cross-attention branch (0 layers)", "component removed", "cross_attention_layers=0",
                 layers=0, overrides={"cross_attention_layers": 0}),
        Ablation("tncse", "TNCSE (no branch, fixed direction)", "baseline", "stage=tncse", stage="tncse"),
        *[Ablation("layers", f"{n} cross-attention layer{'s' if n > 1 else ''}", "cross-attention layers",
                   f"cross_attention_layers={n}", layers=n, overrides={"cross_attention_layers": n}) for n in sweep],
        Ablation("paper_modulus", "modulus: paper variant", "modulus variant", "modulus_variant=paper",
                 overrides={"modulus_variant": "paper"}),
        Ablation("pool_mean", "pooling: mean (twin)", "evaluation pooling", "pooling=mean (no training)",
                 pooling="mean"),
        Ablation("pool_pooler", "pooling: pooler (twin)", "evaluation pooling", "pooling=pooler (no training)",
                 pooling="pooler"),
        Ablation("distill", f"JTCSE-D (distill_alpha={alpha:g})", "distillation", "stage=distill", stage="distill"),
        Ablation("distill_alpha0", "JTCSE-D, distill_alpha=0", "distillation", "stage=distill, distill_alpha=0",
                 stage="distill", overrides={"distill_alpha": 0.0}),
    ]


# the variants' keys, in order: what the config key `ablations` may name (depth 12 has a layer count to sweep)
ABLATIONS = tuple(dict.fromkeys(a.key for a in all_ablations(RunConfig(), depth=12)))


def check_ablations(config: RunConfig) -> None:
    """Refuse an `ablations` list naming no variant, before anything trains."""
    if config.ablations != "all" and (unknown := [a for a in config.ablations if a not in ABLATIONS]):
        raise ConfigError(f"config key 'ablations': unknown variant(s) {', '.join(map(repr, unknown))}: it must be "
                          f"'all' or a list of {', '.join(ABLATIONS)}",
                          "set ablations=all or e.g. ablations=[reference,no_modulus]")


def chosen_ablations(reference: RunConfig, depth: int) -> tuple[list[Ablation], list[Ablation]]:
    """(the variants the config's `ablations` key selects, the ones it skips): each retrained variant costs a
    stage-2 run, so `smoke` and `cpu` run a subset and `paper` all."""
    check_ablations(reference)
    variants = all_ablations(reference, depth)
    if reference.ablations == "all":
        return variants, []
    return ([a for a in variants if a.key in reference.ablations],
            [a for a in variants if a.key not in reference.ablations])
