import pytest

from jtcse_lib import config
from jtcse_lib.config import STAGES, RunConfig, config_hash, load_profile, stage_settings, with_overrides
from jtcse_lib.errors import ConfigError


def test_profiles_load_and_validate():
    assert {"smoke", "cpu", "paper"} <= set(config.available_profiles())
    for name in ("smoke", "cpu", "paper"):
        cfg = load_profile(name)
        assert cfg.profile == name
    paper = load_profile("paper")
    jtcse = paper.for_stage("jtcse")
    assert (paper.backbone, paper.batch_size, paper.max_length, jtcse.lr, paper.cross_attention_layers) == \
        ("bert-base-uncased", 64, 64, 1.3e-6, 6)


def test_overrides_are_parsed_as_yaml():
    cfg = load_profile("smoke", ["batch_size=8", "cross_attention_layers=[0, 2]", "dropout=null", "jtcse.lr=2e-5",
                                 "modulus_variant=paper"])
    assert cfg.batch_size == 8 and cfg.cross_attention_layers == [0, 2] and cfg.dropout is None
    assert cfg.for_stage('jtcse').lr == 2e-5 and cfg.modulus_variant == "paper"
    assert with_overrides(cfg, {"w_modulus": 0}).w_modulus == 0.0
    assert load_profile("smoke", ["ablations=all"]).ablations == "all"
    assert load_profile("smoke", ["ablations=[reference, tncse]"]).ablations == ["reference", "tncse"]


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown profile 'gpu'.*use one of .*cpu.*paper.*smoke"):
        load_profile("gpu")


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'batchsize'"):
        load_profile("smoke", ["batchsize=3"])
    with pytest.raises(ConfigError, match="is not key=value"):
        load_profile("smoke", ["batch_size"])


@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "'batch_size': must be 2 or more"),
    ("batch_size=true", "'batch_size': must be an integer, got True"),
    ("max_steps=0", "'max_steps': must be a positive integer or null"),
    ("lr=-1", "'lr': must be a positive finite number"),
    ("jtcse.lr=-1", "'jtcse.lr': must be a positive finite number"),
    ("w_modulus=-0.5", "'w_modulus': must be a finite number >= 0"),
    ("batch_size=1", "'batch_size': must be 2 or more .*contrastive loss has no negative"),
    ("lr=.nan", "'lr': must be a positive finite number, got nan"),
    ("simcse_a.lr=.inf", "'simcse_a.lr': must be a positive finite number, got inf"),
    ("temperature=0", "'temperature': must be a positive finite number"),
    ("w_nce=.nan", "'w_nce': must be a finite number >= 0"),
    ("dropout=.nan", "'dropout': must be in"),
    ("modulus_variant=both", "'modulus_variant': must be one of official, paper, got 'both'"),
    ("precision=fp8", "'precision': must be one of auto, fp32, bf16, fp16, got 'fp8'"),
    ("device=gpu", "'device': must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("train_mlp_head=1", "'train_mlp_head': must be true or false, got 1"),
    ("transfer_jobs=0", "'transfer_jobs': must be -1 .* or a positive integer"),
    ("seeds=[]", "'seeds': must be a non-empty list of integers"),
    ("transfer_tasks=[CR,XX]", "'transfer_tasks': must be 'all' or a list of MR, CR, SUBJ, MPQA, SST2, TREC, MRPC"),
    ("warmup_ratio=1", r"'warmup_ratio': must be in \[0, 1\), got 1.0"),
    ("jtcse=5", "'jtcse': must be a mapping of keys to values, got 5"),
    ("cross_attention_layers=-2", "'cross_attention_layers': must be a count >= 0"),
    ("dropout=1.5", "'dropout': must be in"),
    ("dev_pairs=3", "'dev_pairs': must be 10 or more"),
    ("ablations=some", "'ablations': must be 'all' or a list"),
])
def test_impossible_values_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_profile("smoke", [override])
    assert error.value.fix  # every refusal says what to write instead


def test_a_value_of_the_wrong_type_is_refused_even_without_a_rule():
    with pytest.raises(ConfigError, match="'backbone': must be a string, got 3"):
        RunConfig(backbone=3)


def test_hash_is_stable_and_sensitive():
    a, b = RunConfig(), RunConfig()
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(with_overrides(a, {"seed": 1}))
    assert config_hash(a, ["backbone"]) == config_hash(with_overrides(a, {"seed": 1}), ["backbone"])


def test_the_run_cache_keys_do_not_move():
    """stage_settings and config_hash key the run cache (and the committed results/cpu runs): pinned values (they
    moved once on purpose, with TRAINING_VERSION 3: stage 1 reads mlp_as_pooler, jtcse cross_attention_rows and
    icnce_direction), and a number keys the same however it is spelled (0 or 0.0, 5.0 or 5, "2e-5" or 2e-5)."""
    keys = {s: config_hash(stage_settings(RunConfig(), s)) for s in STAGES}
    assert keys == {"simcse_a": "7fe4cb5b2ba5", "simcse_b": "0407f3e94f75", "tncse": "8a6d88e1a228",
                    "jtcse": "e1709d834ac6", "distill": "7da790d2b392"}
    spelled = with_overrides(RunConfig(), ["w_modulus=0", "max_steps=5.0", "lr=2e-5"])
    typed = with_overrides(RunConfig(), {"w_modulus": 0.0, "max_steps": 5, "lr": 2e-5})
    assert config_hash(stage_settings(spelled, "jtcse")) == config_hash(stage_settings(typed, "jtcse")) == \
        "0746e5e4e660"


def test_every_config_key_is_keyed_by_the_stages_that_read_it_or_listed_as_unkeyed():
    from dataclasses import fields

    keyed = set(config.COMMON_KEYS).union(*config.STAGE_KEYS.values())
    names = {f.name for f in fields(RunConfig)}
    assert not keyed & set(config.UNKEYED), "a key cannot be both keyed and unkeyed"
    assert names == keyed | set(config.UNKEYED), f"decide about: {sorted(names - keyed - set(config.UNKEYED))}"
    assert all(config.UNKEYED.values())  # each says why
    assert set(config._RULES) <= names  # a misspelt rule would check nothing


def test_coercion_follows_the_type_hints():
    cfg = load_profile("smoke", ["lr=2e-5", "dropout=0", "max_steps=5.0", "cross_attention_layers=[1,3]",
                                 "ablations=[reference,tncse]", "backbone=1e-5", "corpus_limit=null"])
    assert cfg.lr == 2e-5 and isinstance(cfg.lr, float)  # YAML 1.1 reads 2e-5 as a string
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float)
    assert cfg.max_steps == 5 and isinstance(cfg.max_steps, int)
    assert cfg.cross_attention_layers == [1, 3] and cfg.ablations == ["reference", "tncse"]
    assert cfg.backbone == "1e-5"  # a plain string field is never parsed
    assert cfg.corpus_limit is None


def test_per_stage_sections_override_the_profile_for_their_stage_only():
    cfg = load_profile("smoke", ["lr=1e-5", "jtcse.lr=2e-5", "tncse={dropout: 0.2, max_length: 16}"])
    assert cfg.for_stage("jtcse").lr == 2e-5 and cfg.for_stage("tncse").lr == 1e-5
    assert cfg.for_stage("tncse").dropout == 0.2 and cfg.for_stage("tncse").max_length == 16
    assert cfg.for_stage("jtcse").max_length == 32 and cfg.for_stage("jtcse").dropout is None
    merged = load_profile("smoke", ["tncse.dropout=0.3", "tncse.lr=3e-6"]).tncse
    assert merged["dropout"] == 0.3 and merged["lr"] == 3e-6 and "lr" in load_profile("smoke").tncse  # merged
    with pytest.raises(ConfigError, match="cannot set seed per stage"):
        load_profile("smoke", ["jtcse.seed=3"])
    with pytest.raises(ConfigError, match="unknown stage 'stage3'"):
        load_profile("smoke", ["stage3.lr=1e-5"])
    with pytest.raises(ConfigError, match="'tncse.dropout': must be in"):
        load_profile("smoke", ["tncse.dropout=1.5"])
    with pytest.raises(ConfigError, match="'tncse': cannot set foo per stage"):
        load_profile("smoke", ["tncse={foo: 1}"])


def test_the_paper_profiles_are_the_papers_recipe():
    paper = load_profile("paper")
    tncse, jtcse, a = paper.for_stage("tncse"), paper.for_stage("jtcse"), paper.for_stage("simcse_a")
    assert (tncse.lr, tncse.dropout) == (1e-6, 0.00025)
    assert (jtcse.lr, jtcse.weight_decay, jtcse.cross_attention_layers, jtcse.max_length) == (1.3e-6, 0.01, 6, 64)
    assert (a.scheduler, a.max_grad_norm, a.train_mlp_head, a.max_length, a.lr) == ("linear", 1.0, True, 32, 1.5e-5)
    assert paper.precision == "fp32" and paper.for_stage("simcse_b").lr == 2e-5
    # RoBERTa: the TNCSE supplement's Table I-1 for the encoders, TNCSE and distillation; the paper for JTCSE
    roberta = {s: load_profile("paper-roberta").for_stage(s) for s in STAGES}
    assert roberta["jtcse"].backbone == "roberta-base"
    assert {s: (c.lr, c.batch_size) for s, c in roberta.items()} == {
        "simcse_a": (1.5e-5, 64), "simcse_b": (1.25e-5, 64), "tncse": (1e-6, 64), "jtcse": (1e-6, 256),
        "distill": (1e-5, 256)}
    assert roberta["tncse"].dropout == 0.0175


def test_three_levels_the_file_then_set_for_every_stage_then_set_for_one_stage():
    """`paper.yaml` sets eval_every 100 and max_length 64 profile-wide, and 125 and 32 in its stage-1 sections: a
    plain --set wins over both in every stage; --set simcse_a.key wins over that, in simcse_a only."""
    file_only = load_profile("paper")
    assert (file_only.for_stage("simcse_a").eval_every, file_only.for_stage("simcse_a").max_length) == (125, 32)
    assert (file_only.for_stage("jtcse").eval_every, file_only.for_stage("jtcse").max_length) == (100, 64)
    cli = load_profile("paper", ["eval_every=3", "max_length=16"])
    assert {(cli.for_stage(s).eval_every, cli.for_stage(s).max_length) for s in STAGES} == {(3, 16)}
    assert cli.for_stage("simcse_a").lr == 1.5e-5  # what the command line did not name stays the file's
    scoped = load_profile("paper", ["simcse_a.eval_every=7", "eval_every=3"])  # order on the line does not matter
    assert [scoped.for_stage(s).eval_every for s in STAGES] == [7, 3, 3, 3, 3]
    assert scoped.replace(lr=2e-6).for_stage("simcse_b").lr == 2e-6  # replace() is a --set too


def test_config_command_shows_a_command_line_value_in_a_stage(capsys):
    import json

    from jtcse_lib.__main__ import main

    assert main(["config", "--profile", "paper", "--stage", "simcse_a", "--set", "eval_every=3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["eval_every"] == 3 and shown["max_length"] == 32 and shown["precision"] == "auto"
