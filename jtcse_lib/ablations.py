"""The ablations of notebook 06: each is full JTCSE with one change, defined here once.

A variant names the config `ablations` key that selects it, its row label, the group it belongs to, and how it
differs: the stage it trains (jtcse, tncse or distill), the pooling it is scored with, and the config overrides.
What it changes (`changes`, and the `changed` text) is computed from the resolved per-stage settings against full
JTCSE's, never written by hand: under `paper` the tncse variant also trains at TNCSE's own lr and dropout, and the
list says so. The run cache (`jtcse_lib.runs`) keys each variant by exactly the settings it changes, so every
variant reuses the reference's two stage-1 SimCSE towers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .config import RunConfig, stage_settings
from .errors import ConfigError

REFERENCE = "full JTCSE (reference)"


@dataclass(frozen=True)
class Ablation:
    key: str  # the name in the config key `ablations` (one of ABLATIONS)
    name: str  # the row label in ablations.csv and the figures
    group: str
    changed: str = ""  # what it changes against full JTCSE (filled from `changes` by all_ablations)
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


NOT_READ = "(not read)"  # a setting the variant's stage does not read (TNCSE has no branch)


def changes(reference: RunConfig, ablation: Ablation) -> dict[str, tuple]:
    """{setting: (full JTCSE's, the variant's)} for every setting that differs between the reference's jtcse
    stage and the variant's stage, as each resolves it (`config.stage_settings`), plus the stage and the
    evaluation pooling when they differ; the tncse stage's fixed ICNCE direction counts as its setting."""
    ref, var = stage_settings(reference, "jtcse"), stage_settings(ablation.config(reference), ablation.stage)
    if ablation.stage == "tncse":
        var["icnce_direction"] = "a_to_b"  # the tncse stage's rule, whatever the key says
    out = {"stage": ("jtcse", ablation.stage)} if ablation.stage != "jtcse" else {}
    if ablation.pooling != "cls":
        out["pooling"] = ("cls", ablation.pooling)
    for key in dict.fromkeys([*ref, *var]):
        before, after = ref.get(key, NOT_READ), var.get(key, NOT_READ)
        if before != after:
            out[key] = (before, after)
    return out


def describe(changed: dict[str, tuple]) -> str:
    """`changes` as one line: 'w_modulus: 1.0 -> 0.0; ...', '(none)' for the reference."""
    return "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()) or "(none)"


def all_ablations(reference: RunConfig, depth: int) -> list[Ablation]:
    """Every variant for a backbone of `depth` layers; the layer sweep covers every divisor of the depth (an
    equally spaced layout needs one), and 0 (no branch)."""
    ref_layers = layer_count(reference)
    sweep = [n for n in range(1, depth + 1) if depth % n == 0 and n != ref_layers]
    alpha = reference.distill_alpha
    variants = [
        Ablation("reference", REFERENCE, "reference", layers=ref_layers),
        Ablation("no_modulus", "− modulus term", "component removed", overrides={"w_modulus": 0.0}),
        Ablation("no_cross_cls", "− cross NT-Xent on tower [CLS]", "component removed",
                 overrides={"w_cross_cls": 0.0}),
        Ablation("no_branch", "− cross-attention branch (0 layers)", "component removed", layers=0,
                 overrides={"cross_attention_layers": 0}),
        # with no_branch, isolates the direction rule: JTCSE's recipe, TNCSE's fixed A -> B ICNCE, no branch
        Ablation("fixed_direction", "fixed ICNCE direction, no branch", "baseline", layers=0,
                 overrides={"cross_attention_layers": 0, "icnce_direction": "a_to_b"}),
        Ablation("tncse", "TNCSE (its own stage)", "baseline", stage="tncse"),
        Ablation("branch_all", "branch: full sequence", "cross-attention branch",
                 overrides={"cross_attention_rows": "all"}),
        *[Ablation("layers", f"{n} cross-attention layer{'s' if n > 1 else ''}", "cross-attention layers",
                   layers=n, overrides={"cross_attention_layers": n}) for n in sweep],
        Ablation("paper_modulus", "modulus: paper variant", "modulus variant", overrides={"modulus_variant": "paper"}),
        Ablation("pool_mean", "pooling: mean (twin)", "evaluation pooling", pooling="mean"),
        Ablation("pool_pooler", "pooling: pooler (twin)", "evaluation pooling", pooling="pooler"),
        Ablation("distill", f"JTCSE-D (distill_alpha={alpha:g})", "distillation", stage="distill"),
        Ablation("distill_alpha0", "JTCSE-D, distill_alpha=0", "distillation", stage="distill",
                 overrides={"distill_alpha": 0.0}),
    ]
    return [replace(a, changed=describe(changes(reference, a))) for a in variants]


# the variants' keys, in order: what the config key `ablations` may name (depth 12 has a layer count to sweep)
ABLATIONS = tuple(dict.fromkeys(a.key for a in all_ablations(RunConfig(), depth=12)))


def check_ablations(config: RunConfig) -> None:
    """Refuse an `ablations` list naming no variant, before anything trains."""
    if config.ablations != "all" and (unknown := [a for a in config.ablations if a not in ABLATIONS]):
        raise ConfigError(f"config key 'ablations': unknown variant(s) {', '.join(map(repr, unknown))}: it must be "
                          f"'all' or a list of {', '.join(ABLATIONS)}",
                          "set ablations=all or e.g. ablations=[reference,no_modulus]")
    if unknown := [a for a in config.single_seed_ablations if a not in ABLATIONS]:
        raise ConfigError(f"config key 'single_seed_ablations': unknown variant(s) {', '.join(map(repr, unknown))}",
                          f"name variants of {', '.join(ABLATIONS)}")


def seeds_of(ablation: Ablation, config: RunConfig) -> list[int]:
    """The seeds a variant runs on: every seed of the config, or the first for `single_seed_ablations` (a budget
    trim of the cpu profile: such a row has no interval over seeds, only the bootstrap over test pairs)."""
    return config.seeds[:1] if ablation.key in config.single_seed_ablations else list(config.seeds)


def chosen_ablations(reference: RunConfig, depth: int) -> tuple[list[Ablation], list[Ablation]]:
    """(the variants the config's `ablations` key selects, the ones it skips): each retrained variant costs a
    stage-2 run, so `smoke` and `cpu` run a subset and `paper` all."""
    check_ablations(reference)
    variants = all_ablations(reference, depth)
    if reference.ablations == "all":
        return variants, []
    return ([a for a in variants if a.key in reference.ablations],
            [a for a in variants if a.key not in reference.ablations])
