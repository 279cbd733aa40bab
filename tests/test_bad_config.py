"""The config's own rules (``llama2rlhf.config.checks``), as users break them: each case exits
with code 2 and one line naming the key, its value and what would be right, prints no
traceback, and is found before any stage trains (``--validate``, and a real run whose run
directory gets no ``sft/``). The shipped configs and real-data files in the loaders'
formats pass."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from conftest import TINY, assert_bad
from llama2rlhf.data.errors import ConfigError

FILES = ["data=jsonl", "data.sft_path=sft.jsonl", "data.preference_path=prefs.jsonl"]
REAL = [*FILES, "data.prompt_path=prompts.jsonl", "annotator=file", "gatt.constraints=list"]

CASES = [
    # (overrides, what the one line must name)
    # the rounds
    (["pipeline.rounds=-1"], ["pipeline.rounds=-1", "0 or more"]),
    (["pipeline.ppo_rounds=[4]"], ["pipeline.ppo_rounds=[4]", "1..3", "PPO would not run"]),
    (["pipeline.ppo_rounds=[0,3]"], ["pipeline.ppo_rounds=[0, 3]", "round(s) 0"]),
    (["pipeline.rounds=0", "pipeline.ppo_rounds=[1]"], ["pipeline.ppo_rounds=[1]", "there are no rounds"]),
    (["pipeline.round_stages=[]"], ["pipeline.round_stages=[]", "run nothing"]),
    (["pipeline.stages=[]", "pipeline.rounds=0"], ["pipeline.stages=[]", "no stage"]),
    # misspelt stages: the key, the bad name, a close match and the registered ones
    (["pipeline.stages=[sft,collect,rewrad]"],
     ["pipeline.stages=", "'rewrad'", "did you mean 'reward'", "registered stages: collect, evaluate"]),
    (["pipeline.round_stages=[collect,reward,rejection_sampling,evalute]"],
     ["pipeline.round_stages=", "'evalute'", "did you mean 'evaluate'"]),
    (["pipeline.ppo_stages=[ppoo,rejection_sampling]"], ["pipeline.ppo_stages=", "'ppoo'", "did you mean 'ppo'"]),
    (["pipeline.stages=[sft,sft,collect,reward]"], ["pipeline.stages=", "'sft' twice"]),
    # the order: each stage finds what it reads
    (["pipeline.stages=[collect,sft,reward]"], ["pipeline.stages=", "'collect'", "artifact 'policy'", "sft"]),
    (["pipeline.stages=[sft]", "pipeline.round_stages=[rejection_sampling,evaluate]"],
     ["pipeline.round_stages=", "'rejection_sampling' (in round 1)", "artifact 'reward'", "list reward before it"]),
    (["pipeline.stages=[reward]", "pipeline.rounds=0"],
     ["reward_model.init_from='sft'", "list sft before it", "reward_model.name_or_path"]),
    (["rs.init_from=sfft"], ["rs.init_from='sfft'", "did you mean 'sft'"]),
    (["annotator=reward_model", "annotator.name_or_path=run:reward"],
     ["annotator.name_or_path='run:reward'", "stage 'collect'", "artifact 'reward'", "list reward before it"]),
    # temperatures and counts
    (["rs.temperatures=[0.8,0]"], ["rs.temperatures=[0.8, 0.0]", "above 0", "greedily"]),
    (["rs.temperatures=[-0.5,1.0]"], ["rs.temperatures=[-0.5, 1.0]", "above 0"]),
    (["rs.temperatures=[]"], ["rs.temperatures=[]", "is empty"]),
    (["collect.temperatures=[0.7]"], ["collect.temperatures=[0.7]", "two temperatures"]),
    (["collect.temperatures=[0.7,1.0,1.2]"], ["collect.temperatures=[0.7, 1.0, 1.2]", "two temperatures"]),
    (["collect.temperatures=[0.7,0]"], ["collect.temperatures=[0.7, 0.0]", "above 0"]),
    (["ppo.temperature=0"], ["ppo.temperature=0.0", "above 0"]),
    (["gatt.temperature=-1"], ["gatt.temperature=-1.0", "above 0"]),
    (["rs.k=0"], ["rs.k=0", "1 or more"]),
    (["rs.n_prompts=0"], ["rs.n_prompts=0", "1 or more"]),
    (["rs.search_prompts=0"], ["rs.search_prompts=0", "1 or more"]),
    (["collect.n_prompts=0"], ["collect.n_prompts=0", "1 or more"]),
    (["sft.per_device_train_batch_size=0"], ["sft.per_device_train_batch_size=0", "1 or more"]),
    (["reward_model.gradient_accumulation_steps=0"], ["reward_model.gradient_accumulation_steps=0", "1 or more"]),
    (["sft.num_train_epochs=0"], ["sft.num_train_epochs=0.0", "train nothing"]),
    (["rs.train.num_train_epochs=0"], ["rs.train.num_train_epochs=0.0", "above 0"]),
    (["sft.learning_rate=0"], ["sft.learning_rate=0.0", "above 0", "2e-5"]),
    (["reward_model.learning_rate=-1e-5"], ["reward_model.learning_rate=-1e-05", "above 0"]),
    (["ppo.learning_rate=0"], ["ppo.learning_rate=0.0", "1e-6"]),
    (["rs.train.learning_rate=0"], ["rs.train.learning_rate=0.0", "above 0"]),
    (["sft.max_length=0"], ["sft.max_length=0", "1 or more"]),
    (["collect.max_new_tokens=0"], ["collect.max_new_tokens=0", "1 or more"]),
    (["eval.max_new_tokens=0"], ["eval.max_new_tokens=0", "1 or more"]),
    (["sft.bf16=maybe"], ["sft.bf16='maybe'", "auto, true, false"]),
    (["reward_model.round_init_from=prevous"], ["reward_model.round_init_from='prevous'", "did you mean 'previous'"]),
    (["reward_model.round_epochs=0"], ["reward_model.round_epochs=0.0", "above 0"]),
    (["reward_loss.margin_scale=-1"], ["reward_loss.margin_scale=-1.0", "0 or more"]),
    # PPO and its alternatives
    (["ppo.num_mini_batches=3"], ["ppo.num_mini_batches=3", "must divide", "= 8"]),
    (["ppo.n_prompts=4"], ["ppo.n_prompts=4", "fewer than one batch of rollouts (8"]),
    (["ppo.max_kl=0"], ["ppo.max_kl=0.0", "above 0"]),
    (["ppo.eval_samples=0"], ["ppo.eval_samples=0", "1 or more"]),
    (["ppo.cliprange=0"], ["ppo.cliprange=0.0", "above 0"]),
    (["pipeline.ppo_stages=[grpo]", "ppo.num_generations=1"], ["ppo.num_generations=1", "2 or more"]),
    (["pipeline.ppo_stages=[rloo]", "ppo.num_generations=3"], ["ppo.num_generations=3", "must divide", "= 8"]),
    # Ghost Attention
    (["gatt.max_turns=0"], ["gatt.max_turns=0", "gatt.min_turns (2)"]),
    (["gatt.min_turns=4"], ["gatt.max_turns=3", "gatt.min_turns (4)"]),
    (["gatt.start_round=5"], ["gatt.start_round=5", "1..3", "augmenter=none"]),
    (["gatt.start_round=0"], ["gatt.start_round=0", "1..3"]),
    (["gatt.eval_turns=-1"], ["gatt.eval_turns=-1", "0 or more"]),
    (["gatt.shorten=1.5"], ["gatt.shorten=1.5", "[0, 1]"]),
    (["gatt.constraints=lists"], ["gatt.constraints='lists'", "did you mean 'list'"]),
    (["gatt.toy_kinds=[mood]"], ["gatt.toy_kinds=['mood']", "persona, language, hobby"]),
    (["gatt.filter=true", "gatt.samples_per_turn=4", "gatt.first_draw=6"], ["gatt.first_draw=6", "[0, 4]"]),
    # data
    (["data.eval_fraction=1.5"], ["data.eval_fraction=1.5", "[0, 1]"]),
    (["data.limit=0"], ["data.limit=0", "1 or more"]),
    (["data.on_bad_row=warn"], ["data.on_bad_row='warn'", "skip, error"]),
    (["data.source=file"], ["data.source='file'", "did you mean 'files'"]),
    (["data.sft_path=demos.jsonl"], ["data.sft_path='demos.jsonl'", "data=jsonl"]),
    (["data.n_eval_prompts=0"], ["data.n_eval_prompts=0", "1 or more"]),
    (["toyworld.heldout_fraction=0"], ["toyworld.heldout_fraction=0.0", "(0, 1)"]),
    (["toyworld.families=[upper,nope]"], ["toyworld.families=['upper', 'nope']", "must name some of"]),
    (["toyworld.demo_error_rate=0.5"], ["toyworld.demo_error_rate=0.5", "[0, 1/3]"]),
    # the annotator and the data keys the planned stages read
    ([*FILES, "data.prompt_path=prompts.jsonl", "gatt.constraints=list"], ["annotator='toy'", "data.source=files",
                                                                           "annotator=reward_model"]),
    ([*FILES, "data.prompt_path=prompts.jsonl", "annotator=file"], ["gatt.constraints='toy'", "gatt.constraints=list"]),
    ([*FILES, "annotator=file", "gatt.constraints=list"], ["data.prompt_path", "not set", "the collect stage"]),
    (["data=jsonl", "data.preference_path=prefs.jsonl", "pipeline.stages=[sft,reward]", "pipeline.rounds=0"],
     ["data.sft_path", "not set", "the sft stage"]),
    (["data=jsonl", "data.sft_path=sft.jsonl", "pipeline.stages=[sft,reward]", "pipeline.rounds=0"],
     ["data.preference_path", "not set", "the reward stage"]),
    ([*FILES, "pipeline.stages=[sft,reward]", "pipeline.rounds=0", "data.eval_fraction=1"],
     ["data.eval_fraction=1.0", "nothing to train on"]),
    ([*REAL, "data.eval_fraction=0"], ["data.eval_fraction=0.0", "holds out no prompt"]),
    ([*REAL, "annotator=reward_model", "pipeline.stages=[sft,reward]"], ["annotator.name_or_path", "not set"]),
    ([*REAL, "annotator=reward_model", "annotator.name_or_path=run:reward", "pipeline.stages=[sft,reward]",
      "annotator.strength_quantiles=[0.5,0.25,0.75]"], ["annotator.strength_quantiles=[0.5, 0.25, 0.75]",
                                                        "3 increasing values in (0, 1)"]),
    # the model
    (["model.dtype=float64"], ["model.dtype='float64'", "auto, float32, bfloat16, float16"]),
    (["model.peft=qlora"], ["model.peft='qlora'", "did you mean 'lora'"]),
    (["model.kind=hf"], ["model.name_or_path", "not set", "model.kind=hf"]),
    (["model.kind=gguf"], ["model.kind='gguf'", "toy, hf"]),
    (["model.hidden_size=30"], ["model.hidden_size=30", "model.num_heads (2)"]),
    (["model.peft=lora", "model.lora_layers=3"], ["model.lora_layers=3", "1 layers"]),
    (["model.peft=lora", "model.lora_dropout=1.0"], ["model.lora_dropout=1.0", "[0, 1)"]),
    (["device=gpu"], ["device='gpu'", "auto, cpu, cuda"]),
]


@pytest.mark.parametrize("overrides,named", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_broken_rule_is_one_line_naming_the_key(cli, tmp_path, overrides, named):
    real_files(tmp_path)  # the files the data keys name are there and well formed: only the rule is broken
    run = tmp_path / "run"
    assert_bad(cli("--validate", f"hydra.run.dir={run}", *TINY, *overrides), *named)
    assert not run.exists()


RUN_CASES = [
    (["pipeline.rounds=-1"], ["pipeline.rounds=-1"]),
    (["rs.temperatures=[0.8,0]"], ["rs.temperatures=[0.8, 0.0]"]),
    (["pipeline.stages=[collect,sft,reward]"], ["artifact 'policy'"]),
    (["pipeline.ppo_rounds=[4]"], ["pipeline.ppo_rounds=[4]"]),
]


@pytest.mark.parametrize("overrides,named", RUN_CASES, ids=[" ".join(c[0]) for c in RUN_CASES])
def test_a_run_stops_before_its_first_stage(cli, tmp_path, overrides, named):
    run = tmp_path / "run"
    assert_bad(cli(f"hydra.run.dir={run}", *TINY, *overrides), *named)
    assert not (run / "sft").exists()


def test_a_run_with_real_files_and_the_toy_annotator_stops_before_sft(cli, tmp_path):
    real_files(tmp_path)
    run = tmp_path / "run"
    assert_bad(cli(f"hydra.run.dir={run}", *TINY, *FILES, "data.prompt_path=prompts.jsonl", "gatt.constraints=list"),
               "annotator='toy'")
    assert not (run / "sft").exists()


def test_every_problem_is_listed(cli, tmp_path):
    result = cli("--validate", f"hydra.run.dir={tmp_path / 'run'}", *TINY, "rs.k=0", "sft.learning_rate=0",
                 "gatt.shorten=2")
    assert result.code == 2 and "Traceback" not in result.err
    assert [line.split("=")[0] for line in result.lines] == ["llama2rlhf: sft.learning_rate", "llama2rlhf: rs.k",
                                                             "llama2rlhf: gatt.shorten"]


def test_a_rule_applies_only_when_its_stage_is_planned(cli, tmp_path):
    # no PPO round, no rejection sampling, no collect: their keys are not read
    result = cli("--validate", f"hydra.run.dir={tmp_path / 'run'}", *TINY, "pipeline.stages=[sft,reward]",
                 "pipeline.rounds=0", "ppo.temperature=0", "rs.k=0", "collect.temperatures=[0.7]", "gatt.max_turns=0")
    assert result.code == 0, result.err


def test_a_plugin_stage_declares_what_it_reads(cli, tmp_path, register_one):
    """A third-party stage's ``needs`` and ``makes`` take part in the order rule."""
    from llama2rlhf import Stage

    register_one("register_stages", "judge", Stage(lambda ctx: {}, needs=("verdicts",)), plugin="judging")
    register_one("register_stages", "verdicts", Stage(lambda ctx: {}, makes=("verdicts",)), plugin="verdicts_plugin")
    args = ("--validate", f"hydra.run.dir={tmp_path / 'run'}", *TINY, "pipeline.rounds=0")
    assert_bad(cli(*args, "pipeline.stages=[sft,judge,verdicts]"),
               "pipeline.stages=", "stage 'judge'", "artifact 'verdicts'", "list verdicts before it")
    assert cli(*args, "pipeline.stages=[sft,verdicts,judge]").code == 0


# -- what passes ----------------------------------------------------------------------


VALID = [
    [],
    TINY,
    # the commands of docs/getting-started.md
    ["pipeline.rounds=0", "pipeline.stages=[sft,reward]"],
    ["pipeline.rounds=5", "rs.k=16", "selector=best_of_k"],
    ["pipeline.ppo_rounds=[2,3]", "ppo.kl_coef=0.05"],
    ["pipeline.ppo_rounds=[]"],
    ["pipeline.ppo_stages=[grpo,rejection_sampling]", "reward=single"],
    ["augmenter=none"],
    # the fixed overrides of the shipped sweeps
    ["pipeline.rounds=2", "pipeline.ppo_rounds=[]", "augmenter=none"],
    ["pipeline.stages=[sft,collect,reward]", "pipeline.rounds=0"],
    # a reward model from the base model, and one of its own
    ["pipeline.stages=[reward]", "pipeline.rounds=0", "reward_model.init_from=base"],
]


@pytest.mark.parametrize("overrides", VALID, ids=[" ".join(v) or "default" for v in VALID])
def test_the_shipped_configs_and_documented_commands_pass(cli, tmp_path, overrides):
    run = tmp_path / "run"
    result = cli("--validate", f"hydra.run.dir={run}", "logger=none", *overrides)
    assert result.code == 0, result.err
    assert not run.exists()


def real_files(folder):
    """Small files in the formats of llama2rlhf.data.formats: conversational SFT rows,
    preference pairs with an explicit prompt and a strength, prompt-only rows."""
    def write(name, rows):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    questions = [(f"What is {i} + 1?", f"It is {i + 1}.", f"Perhaps {i + 7}.") for i in range(48)]
    write("sft.jsonl", [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                        for q, a, _ in questions])
    write("prefs.jsonl", [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": a}],
                           "rejected": [{"role": "assistant", "content": b}], "strength": "better"}
                          for q, a, b in questions])
    write("prompts.jsonl", [{"prompt": [{"role": "user", "content": q}]} for q, _, _ in questions])


def test_the_real_preset_with_real_files_passes(cli, tmp_path):
    real_files(tmp_path)
    run = tmp_path / "run"
    result = cli("--validate", f"hydra.run.dir={run}", "logger=none", "pipeline=real", "data=jsonl",
                 f"data.sft_path={tmp_path / 'sft.jsonl'}", f"data.preference_path={tmp_path / 'prefs.jsonl'}",
                 f"data.prompt_path={tmp_path / 'prompts.jsonl'}")
    assert result.code == 0, result.err
    assert "valid: 1 round(s)" in result.err
    assert not run.exists()


# -- the stages refuse the same values for those who call them without validation -------


def test_the_stages_raise_the_same_config_errors():
    from llama2rlhf.data.round_prompts import round_prompts
    from llama2rlhf.gatt.augmenter import constraint_source
    from llama2rlhf.gatt.dialogue import ListConstraints
    from llama2rlhf.toyworld import ToyWorld

    real = SimpleNamespace(world=None, cfg=SimpleNamespace(data=SimpleNamespace(prompt_path=None)))
    with pytest.raises(ConfigError, match="^data.prompt_path: not set"):
        round_prompts(real, "collect:1", 4)
    with pytest.raises(ConfigError, match=r"^gatt.constraints='lists': must be toy or list"):
        constraint_source(SimpleNamespace(gatt=SimpleNamespace(constraints="lists")))
    with pytest.raises(ConfigError, match="^gatt.constraints='list': needs at least one of gatt.figures"):
        ListConstraints([], [], [])
    with pytest.raises(ConfigError, match=r"^toyworld.heldout_fraction=1.0: must be in \(0, 1\)"):
        ToyWorld(heldout_fraction=1.0)
