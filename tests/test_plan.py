"""`plan`: runs, disk both ways, and which device_check.json it estimates time from (and which it refuses)."""

import json

import pytest
import torch
from transformers import BertConfig, BertModel

from jtcse_lib import runs
from jtcse_lib.ablations import chosen_ablations
from jtcse_lib.config import STAGES, load_profile
from jtcse_lib.plan import backbone_facts, disk_need, plan_report, planned_runs, read_device_check


def _parameters(**config) -> int:
    with torch.device("meta"):  # shapes only: counts BERT's parameters without allocating them
        return sum(p.numel() for p in BertModel(BertConfig(**config)).parameters())


def _device_check(path, **changes):
    """A device_check.json as bench/device_check.py writes it on an H100 (format 2), with `changes`."""
    row = {"batch_size": 64, "max_length": 64, "layers": 12, "tf32": True, "parameters": 2 * 109_482_240}
    report = {"format": 2, "quick": False, "device_type": "cuda", "device_name": "NVIDIA H100 80GB HBM3",
              "layers": 12,
              "train_step": {"batch_size": 64, "max_length": 64, "layers": 12,
                             "fp32": {"simcse": {**row, "seconds_per_step": 0.2, "peak_gib": 6.0,
                                                 "parameters": 109_482_240},
                                      "tncse": {**row, "seconds_per_step": 0.4, "peak_gib": 12.0},
                                      "jtcse": {**row, "seconds_per_step": 0.5, "peak_gib": 14.0}},
                             "bf16": {"simcse": {**row, "seconds_per_step": 0.1, "peak_gib": 4.0, "tf32": False,
                                                 "parameters": 109_482_240}}}}
    report.update(changes)
    path.write_text(json.dumps(report))
    return path


def test_the_paper_backbone_sizes_are_the_real_parameter_counts():
    assert backbone_facts("bert-base-uncased").parameters == _parameters()
    assert backbone_facts("roberta-base").parameters == _parameters(vocab_size=50265, max_position_embeddings=514,
                                                                    type_vocab_size=1)
    assert backbone_facts("minilm").parameters == _parameters(hidden_size=384, num_hidden_layers=6,
                                                              intermediate_size=1536)


def test_a_local_backbone_is_measured_from_its_files(tmp_path):
    config = BertConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=60,
                        vocab_size=500, max_position_embeddings=64)
    model = BertModel(config)
    model.save_pretrained(tmp_path)
    facts = backbone_facts(str(tmp_path))
    assert (facts.depth, facts.parameters, facts.hidden) == (3, sum(p.numel() for p in model.parameters()), 48)
    assert backbone_facts(str(tmp_path / "absent")).parameters is None


def test_disk_need_of_the_paper_profile_both_ways():
    paper = load_profile("paper")
    need = disk_need(paper)
    bert = _parameters() * 4  # fp32 bytes of one tower
    twin_checkpoint = 3 * 2 * bert  # a twin's weights + AdamW's two moments: the largest checkpoint
    # per seed: 5 main stages + 12 retrained ablations (paper runs every ablation on every seed), 3 seeds
    assert need["runs"] == len(planned_runs(paper, count_steps=False)) == 3 * (5 + 12)
    assert need["peak_run_bytes"] == 2 * twin_checkpoint  # checkpoint/ + checkpoint.tmp of the run in flight
    # every run keeps at least its tower(s); with keep_checkpoints each also keeps 3x its weights or more
    assert 51 * bert < need["pruned_bytes"] < need["pruned_bytes"] + need["peak_run_bytes"] < need["keep_bytes"]
    assert need["keep_bytes"] - need["pruned_bytes"] > 3 * 51 * bert
    assert need["needed_bytes"] == need["pruned_bytes"] + need["peak_run_bytes"]  # the default prunes
    kept = disk_need(paper.replace(keep_checkpoints=True))
    assert kept["keep_checkpoints"] and kept["needed_bytes"] == kept["keep_bytes"] == need["keep_bytes"]


def test_disk_need_scales_with_the_backbone_not_a_constant():
    cpu = load_profile("cpu")
    big = disk_need(cpu.replace(backbone="bert-base-uncased"))
    small = disk_need(cpu)
    ratio = _parameters() / _parameters(hidden_size=384, num_hidden_layers=6, intermediate_size=1536)
    assert big["peak_run_bytes"] / small["peak_run_bytes"] == pytest.approx(ratio, rel=0.01)
    assert disk_need(cpu.replace(backbone="some-org/unknown-model"))["pruned_bytes"] is None


def test_the_plan_states_both_disk_needs_and_a_missing_corpus(tiny_data):
    text = plan_report(load_profile("paper"), data_dir=tiny_data)
    assert "checkpoints pruned:" in text and "keep_checkpoints: true:" in text
    wiki = next(line for line in text.splitlines() if line.startswith("corpus wiki1m"))
    assert "1,000,000 sentences" in wiki and "not counted" in wiki and "known size" in wiki
    assert "wiki1m_for_simcse.txt" in wiki


@pytest.mark.parametrize("changes, reason", [
    ({"quick": True}, "made with --quick"),
    ({"device_type": "cpu", "device_name": "cpu (2 cores)"}, "not a CUDA GPU"),
    ({"layers": 2}, "2-layer model"),
    ({"format": None}, "another version"),
    ({"train_step": {"layers": 12, "error": "timed out"}}, "no train-step measurement"),
])
def test_the_plan_refuses_a_device_check_that_is_no_measurement(tmp_path, changes, reason):
    paper = load_profile("paper")
    path = _device_check(tmp_path / "device_check.json", **changes)
    assert read_device_check(paper, path)[0] is None
    text = plan_report(paper, device_check=path)
    refused = [line for line in text.splitlines() if "not estimated" in line]
    assert len(refused) == 1 and reason in refused[0]
    assert "estimated training time" not in text and " h " not in text.split("why", 1)[1]


def test_the_plan_estimates_from_a_full_measurement_at_each_stages_precision(tmp_path):
    paper = load_profile("paper")
    measured = json.loads(_device_check(tmp_path / "device_check.json").read_text())
    assert read_device_check(paper, tmp_path / "device_check.json") == (measured, "")
    text = plan_report(paper, device_check=tmp_path / "device_check.json")
    simcse = next(line for line in text.splitlines() if line.startswith("simcse_a"))
    # 1M sentences / 64 = 15,625 steps at 64 x 32 in `auto` (bf16 on an H100): 0.1 s/step at 64 x 64, halved
    assert "15,625" in simcse and "auto" in simcse and f"{15_625 * 0.1 * 0.5 / 3600:.2f} h" in simcse
    jtcse = next(line for line in text.splitlines() if line.startswith("jtcse "))
    assert f"{15_625 * 0.5 / 3600:.2f} h" in jtcse  # fp32 (TF32) at the measured 64 x 64
    assert "NVIDIA H100" in text and "fp32 (TF32), bf16" in text


def test_the_plan_counts_each_run_of_the_run_cache_once():
    """The plan's offline key (settings only) tells runs apart exactly as the run cache's keys do."""
    from jtcse_lib.ablations import seeds_of

    cpu = load_profile("cpu", ["seeds=[1,2]", "ablations=all"])
    wanted = [(cpu.replace(seed=s), stage) for s in cpu.seeds for stage in STAGES]
    wanted += [(a.config(cpu.replace(seed=s)), a.stage) for a in chosen_ablations(cpu, 6)[0]
               for s in seeds_of(a, cpu)]
    folders = {runs.run_dir(cfg, stage).name for cfg, stage in wanted}
    folders |= {runs.run_dir(cfg, parent).name for cfg, stage in wanted for parent in runs._PARENTS[stage]}
    planned = planned_runs(cpu, count_steps=False)
    assert len(planned) == len(folders) == len({r.key for r in planned})
    assert {r.stage for r in planned} == set(STAGES)


def test_single_seed_ablations_are_planned_on_the_first_seed_only():
    three = load_profile("cpu", ["seeds=[42,43,44]"])
    runs = planned_runs(three, count_steps=False)
    per_variant = {}
    for r in runs:
        per_variant.setdefault(r.why, set()).add(r.seed)
    assert per_variant["branch: full sequence"] == {42}  # a single-seed ablation of the cpu profile
    assert per_variant["− modulus term"] == {42, 43, 44}
    # under cpu the fixed direction trains what the tncse stage trains (runs.run_stage): TNCSE's main runs, not new ones
    assert "fixed ICNCE direction, no branch" not in per_variant and per_variant["main"] >= {42, 43, 44}
