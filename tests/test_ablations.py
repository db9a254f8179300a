"""The ablation registry (jtcse_lib.ablations): one change per variant, shared stage 1, the profile's subset."""

import pytest

from jtcse_lib import runs
from jtcse_lib.ablations import ABLATIONS, NOT_READ, REFERENCE, all_ablations, changes, chosen_ablations
from jtcse_lib.config import load_profile
from jtcse_lib.errors import ConfigError


@pytest.fixture
def cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("JTCSE_RUNS_DIR", str(tmp_path / "runs"))
    return load_profile("cpu")


def test_every_variant_changes_one_thing_and_shares_stage_one(cpu):
    variants = all_ablations(cpu, depth=6)
    assert [a.name for a in variants][0] == REFERENCE and {a.key for a in variants} == set(ABLATIONS)
    assert [a.layers for a in variants if a.key == "layers"] == [1, 2, 6]  # the divisors of 6 except the reference's 3
    for a in variants:
        changed = {k for k, v in a.config(cpu).to_dict().items() if v != cpu.to_dict()[k]}
        assert changed == set(a.overrides), a.name
        for stage in ("simcse_a", "simcse_b"):
            assert runs.stage_key(a.config(cpu), stage) == runs.stage_key(cpu, stage)
    keys = {a.name: runs.stage_key(a.config(cpu), a.stage) for a in variants}
    trained = [a for a in variants if a.pooling == "cls" and a.stage == "jtcse"]
    assert len({keys[a.name] for a in trained}) == len(trained)  # each training variant is its own run


def test_the_profiles_choose_their_subsets(cpu):
    run, skipped = chosen_ablations(cpu, depth=6)
    assert [a.key for a in run] == cpu.ablations and len(run) + len(skipped) == 15
    assert len(chosen_ablations(cpu.replace(ablations="all"), 6)[0]) == 15
    assert len(chosen_ablations(load_profile("smoke"), 6)[0]) == 4


def test_an_unknown_variant_is_refused_naming_the_known_ones():
    config = load_profile("smoke", ["ablations=[reference,no_moduls]"])  # the config does not know the names
    with pytest.raises(ConfigError, match=r"'ablations': unknown variant\(s\) 'no_moduls'.*reference, no_modulus"):
        chosen_ablations(config, depth=6)


def test_what_each_variant_changes_is_computed_from_the_resolved_stages():
    """Under cpu the tncse variant changes only what TNCSE is (no branch, fixed direction); under paper it also
    trains at TNCSE's own lr and dropout, and the registry says so. fixed_direction isolates the direction rule."""
    def of(profile, key):
        ref = load_profile(profile)
        return changes(ref, next(a for a in all_ablations(ref, depth=12) if a.key == key))

    cpu_tncse, paper_tncse = of("cpu", "tncse"), of("paper", "tncse")
    assert set(cpu_tncse) == {"stage", "cross_attention_layers", "w_cross_attention", "cross_attention_rows",
                              "icnce_direction"}
    assert cpu_tncse["icnce_direction"] == ("random", "a_to_b") and cpu_tncse["w_cross_attention"][1] == NOT_READ
    assert paper_tncse["lr"] == (1.3e-6, 1e-6) and paper_tncse["dropout"] == (None, 0.00025)
    assert of("paper", "fixed_direction") == {"cross_attention_layers": (6, 0), "icnce_direction": ("random", "a_to_b")}
    assert of("paper", "branch_all") == {"cross_attention_rows": ("cls", "all")}
    assert of("paper", "reference") == {}
    ref = load_profile("paper")
    assert next(a for a in all_ablations(ref, 12) if a.key == "no_modulus").changed == "w_modulus: 1.0 -> 0.0"


def test_single_seed_ablations_run_on_the_first_seed_only():
    from jtcse_lib.ablations import seeds_of

    config = load_profile("cpu", ["seeds=[42,43,44]", "single_seed_ablations=[branch_all]"])
    variants = {a.key: a for a in all_ablations(config, depth=6)}
    assert seeds_of(variants["branch_all"], config) == [42] and seeds_of(variants["no_modulus"], config) == [42, 43, 44]
    with pytest.raises(ConfigError, match="single_seed_ablations"):
        chosen_ablations(config.replace(single_seed_ablations=["branch_al"]), depth=6)


def test_a_variant_that_trains_what_a_stage_trains_is_that_stage_s_run():
    """fixed_direction under cpu (JTCSE's rate is TNCSE's) is the tncse run, trained once (the equality of the two
    trainings: tests/test_train.py::test_a_fixed_direction_without_a_branch_is_tncse); under paper TNCSE trains at
    its own rate and dropout, so the variant is a run of its own. The random direction is never the tncse run."""
    from jtcse_lib.runs import run_stage

    def stage_of(profile, key, **extra):
        ref = load_profile(profile)
        a = next(a for a in all_ablations(ref, depth=12) if a.key == key)
        return run_stage(a.config(ref).replace(**extra), a.stage)

    assert stage_of("cpu", "fixed_direction") == "tncse"
    assert stage_of("paper", "fixed_direction") == "jtcse"
    assert stage_of("cpu", "no_branch") == "jtcse"  # random direction
    assert stage_of("cpu", "fixed_direction", w_modulus=0.5) == "tncse"  # a setting both stages read, changed alike
    assert stage_of("cpu", "fixed_direction", cross_attention_layers=[]) == "tncse"
    assert stage_of("cpu", "reference") == "jtcse" and stage_of("cpu", "tncse") == "tncse"
    cpu = load_profile("cpu")
    assert run_stage(cpu.replace(icnce_direction="a_to_b", tncse={"lr": 1e-6}), "jtcse") == "jtcse"
