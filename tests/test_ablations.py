"""The ablation registry (jtcse_lib.ablations): one change per variant, shared stage 1, the profile's subset."""

import pytest

from jtcse_lib import runs
from jtcse_lib.ablations import ABLATIONS, REFERENCE, all_ablations, chosen_ablations
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
    assert [a.key for a in run] == cpu.ablations and len(run) + len(skipped) == 13
    assert len(chosen_ablations(cpu.replace(ablations="all"), 6)[0]) == 13
    assert len(chosen_ablations(load_profile("smoke"), 6)[0]) == 4


def test_an_unknown_variant_is_refused_naming_the_known_ones():
    config = load_profile("smoke", ["ablations=[reference,no_moduls]"])  # the config does not know the names
    with pytest.raises(ConfigError, match=r"'ablations': unknown variant\(s\) 'no_moduls'.*reference, no_modulus"):
        chosen_ablations(config, depth=6)
