"""The online RL stages on a tiny run: PPO raises an easy reward, the guards stop runaway
KL and NaN and carry on from the last good checkpoint, RLOO and GRPO run through the same
reward."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from llama2rlhf import RewardCombiner, plugins
from llama2rlhf.plugins import Registered
from test_pipeline import CLI, TINY


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """SFT, the reward models and one round of rejection sampling; no PPO yet."""
    tmp = tmp_path_factory.mktemp("ppo")
    proc = subprocess.run([CLI, f"hydra.run.dir={tmp / 'run'}", *TINY, "pipeline.rounds=1", "pipeline.ppo_rounds=[]"],
                          cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


def _ctx(tiny_run: Path, tmp_path: Path, stage: str, **ppo):
    from llama2rlhf.recipe.pipeline import make_world
    from llama2rlhf.runtime.run import RunContext

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.ppo.update(ppo)
    # six PPO steps of a tiny model are noisy; at this seed the climb shows
    cfg.seed = 1
    ctx = RunContext.open(cfg, run, make_world(cfg))
    # artifacts written by the fixture's run point into it: re-point them at the copy
    ctx.state.artifacts = {k: v.replace(str(tiny_run), str(run)) for k, v in ctx.state.artifacts.items()}
    ctx.round, ctx.current_stage = 1, stage
    return ctx


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


class _LowTokenCounter(torch.nn.Module):
    """A stand-in reward model: at each position, how many tokens so far are in the lower half
    of the vocabulary. Through the adapter its score at the reply's end grows with every such
    token the policy emits: an easy reward to raise."""

    base_model_prefix = "model"

    def __init__(self, half: int):
        super().__init__()
        self.half = half
        self.score = torch.nn.Identity()
        self.model = self._backbone

    def _backbone(self, input_ids, attention_mask=None, **kwargs):
        low = (input_ids < self.half) & attention_mask.bool()
        return SimpleNamespace(last_hidden_state=low.float().cumsum(-1)[..., None])


class LowTokenReward:
    """The combined-reward interface (``CombinedReward``) over ``_LowTokenCounter``."""

    combiner_name = "low_tokens"
    whitening = None  # its rewards are used as they come

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokenizers = {"helpfulness": tokenizer}  # it reads the policy's tokens
        self.half = len(tokenizer) // 2
        self.models = {"helpfulness": _LowTokenCounter(self.half)}

    def combine(self, scores, is_safety, whiten=True):
        return scores["helpfulness"]

    def score(self, prompts, completions, is_safety, desc=None, shard_size=None):
        ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
        return [float(sum(t < self.half for t in x)) for x in ids]


@pytest.fixture
def low_token_reward(monkeypatch):
    from llama2rlhf.recipe import ppo as ppo_module
    from llama2rlhf.runtime.models import load_tokenizer

    made = []

    def for_run(ctx):
        made.append(LowTokenReward(load_tokenizer(ctx.artifact("tokenizer"))))
        return made[-1]

    monkeypatch.setattr(ppo_module.CombinedReward, "for_run", staticmethod(for_run))
    return made


def test_ppo_raises_an_easy_reward_and_changes_the_weights(tiny_run, tmp_path, low_token_reward):
    from llama2rlhf.recipe.ppo import ppo_stage

    ctx = _ctx(tiny_run, tmp_path, "ppo", n_prompts=96, per_device_train_batch_size=16, num_mini_batches=2,
               num_ppo_epochs=4, learning_rate=3e-3, kl_coef=0.0, max_new_tokens=10, checkpoint_steps=0,
               eval_samples=16)
    start = ctx.artifact("policy")
    metrics = ppo_stage(ctx)
    scores = [h["objective/scores"] for h in metrics["history"]]
    assert len(scores) == 6
    assert sum(scores[-2:]) / 2 > sum(scores[:2]) / 2 + 0.5, scores
    assert metrics["kl"] > 0.01  # the exact per-token KL of a policy that moved
    # held-out task accuracy per family before and after: weighted by the families' shares of
    # the held-out prompts, it is the task accuracy
    from collections import Counter

    from llama2rlhf.evaluation.heldout import heldout_prompts

    counts = Counter(p.family for p in heldout_prompts(ctx))
    for prefix in ("", "greedy_"):  # the policy's samples, and its greedy replies
        for when in ("before", "after"):
            by_family = metrics[f"{prefix}accuracy_by_family_{when}"]
            assert set(by_family) == set(counts)
            weighted = sum(by_family[f] * n for f, n in counts.items()) / sum(counts.values())
            assert weighted == pytest.approx(metrics[f"{prefix}task_accuracy_{when}"])
    # the reward PPO raised, on held-out prompts it never trained on: the mean over the
    # policy's samples at the rollout temperature (the RS model's replies are mostly low
    # tokens already: about 11.0 before, 11.5-11.7 after in three runs)
    assert metrics["eval_samples"] == 16 and metrics["eval_temperature"] == ctx.cfg.ppo.temperature
    assert metrics["reward_after"] > metrics["reward_before"] + 0.2, (metrics["reward_before"], metrics["reward_after"])
    assert ctx.state.artifacts["policy"] == str(ctx.run_dir / "round_1" / "ppo" / "model")
    before, after = _weights(start), _weights(ctx.state.artifacts["policy"])
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def _nan_after_first_iteration():
    calls = {"rollouts": 0}

    def combine(scores, is_safety):
        h = scores["helpfulness"]
        if h.dim() == 2:  # inside PPO: one call per iteration's rollouts
            calls["rollouts"] += 1
            if calls["rollouts"] >= 2:
                return h * float("nan")
        return h

    return RewardCombiner(combine)


def test_nan_reward_stops_ppo_and_the_run_goes_on_from_the_last_good_checkpoint(tiny_run, tmp_path, monkeypatch):
    from llama2rlhf.recipe.pipeline import run_stage

    plugins.registry("reward_combiners")  # built before patching in a test-only combiner
    monkeypatch.setitem(plugins._registries["reward_combiners"], "nan_later",
                        Registered("nan_later", _nan_after_first_iteration(), "tests", None))
    ctx = _ctx(tiny_run, tmp_path, "ppo", n_prompts=32, per_device_train_batch_size=8, gradient_accumulation_steps=1,
               num_mini_batches=1, max_new_tokens=10, checkpoint_steps=1)
    ctx.cfg.reward = {"name": "nan_later", "whiten": True}
    start = ctx.artifact("policy")
    run_stage(ctx, "ppo")
    good = ctx.run_dir / "round_1" / "ppo" / "last_good"
    summary = json.loads((ctx.run_dir / "summary.json").read_text())
    stopped = summary["rounds"][0]["ppo"]["stopped"]
    assert stopped["reason"].startswith("NaN in objective/scores") and stopped["reason"].endswith("at step 2")
    assert (stopped["step"], stopped["last_good_step"], stopped["kept"]) == (2, 1, str(good))
    state = json.loads((ctx.run_dir / "state.json").read_text())
    events = [e for e in state["events"] if e["event"] == "stopped"]
    assert [(e["stage"], e["reason"]) for e in events] == [("round_1/ppo", stopped["reason"])]
    # the stage counts as done and the pipeline carries on from the last good model
    assert "round_1/ppo" in state["done"] and state["artifacts"]["policy"] == str(good)
    assert not (ctx.run_dir / "round_1" / "ppo" / "model").exists()
    weights = _weights(good)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert any(not torch.equal(w, _weights(start)[k]) for k, w in weights.items())


def test_kl_guard_keeps_the_starting_model_when_no_checkpoint_is_good(tiny_run, tmp_path):
    from llama2rlhf.recipe.ppo import ppo_stage

    ctx = _ctx(tiny_run, tmp_path, "ppo", n_prompts=16, per_device_train_batch_size=8, gradient_accumulation_steps=1,
               num_mini_batches=1, max_new_tokens=10, max_kl=-1.0, checkpoint_steps=1)
    start = ctx.artifact("policy")
    metrics = ppo_stage(ctx)
    assert metrics["stopped"]["reason"].startswith("KL ") and "ppo.max_kl=-1" in metrics["stopped"]["reason"]
    assert metrics["stopped"]["kept"] == start == ctx.state.artifacts["policy"]
    assert metrics["reward_after"] == metrics["reward_before"]
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # the same model on both sides


@pytest.mark.parametrize("kind", ["rloo", "grpo"])
def test_rloo_and_grpo_run_a_few_steps_on_the_same_reward(kind, tiny_run, tmp_path, low_token_reward):
    from llama2rlhf.recipe.ppo import grpo_stage, rloo_stage

    ctx = _ctx(tiny_run, tmp_path, kind, n_prompts=8, per_device_train_batch_size=8, gradient_accumulation_steps=1,
               num_generations=4, max_new_tokens=8, learning_rate=1e-3, checkpoint_steps=0)
    start = ctx.artifact("policy")
    metrics = {"rloo": rloo_stage, "grpo": grpo_stage}[kind](ctx)
    assert metrics["trainer"] == kind and metrics["steps"] >= 2 and "stopped" not in metrics
    assert all("reward" in h for h in metrics["history"])
    assert ctx.state.artifacts["policy"] == str(ctx.run_dir / "round_1" / kind / "model")
    assert any(not torch.equal(w, _weights(start)[k]) for k, w in _weights(ctx.state.artifacts["policy"]).items())


def test_ppo_with_lora_trains_an_adapter_and_saves_merged_weights(tiny_run, tmp_path, low_token_reward):
    from llama2rlhf.recipe.ppo import ppo_stage

    ctx = _ctx(tiny_run, tmp_path, "ppo", n_prompts=16, per_device_train_batch_size=8, gradient_accumulation_steps=1,
               num_mini_batches=1, max_new_tokens=8, learning_rate=1e-2, checkpoint_steps=1)
    ctx.cfg.model.peft = "lora"
    ctx.cfg.model.lora_r = 4
    start = ctx.artifact("policy")
    metrics = ppo_stage(ctx)
    assert metrics["steps"] == 2 and "stopped" not in metrics
    saved = ctx.run_dir / "round_1" / "ppo" / "model"
    # merged into plain Llama weights: the next stages load it like any checkpoint
    assert not (saved / "adapter_config.json").exists()
    before, after = _weights(start), _weights(saved)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_long_ppo_prompts_lose_their_oldest_middle_turns(tokenizer):
    from llama2rlhf.data.round_prompts import RoundPrompt
    from llama2rlhf.recipe.ppo import _fit_prompts

    turns = []
    for i in range(8):
        turns += [{"role": "user", "content": f"question number {i} about the weather"},
                  {"role": "assistant", "content": f"answer number {i}"}]
    long = RoundPrompt("a", turns + [{"role": "user", "content": "and now?"}], {"safety": True})
    short = RoundPrompt("b", [{"role": "user", "content": "hi"}])

    def n_tokens(messages):
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"])

    limit = n_tokens(long.messages) // 2
    out, n_cut = _fit_prompts([long, short], tokenizer, limit)
    assert n_cut == 1 and out[1] is short
    assert n_tokens(out[0].messages) <= limit < n_tokens(long.messages)
    # the first exchange and the latest turns stay, the prompt still ends with its question
    assert out[0].messages[:2] == turns[:2] and out[0].messages[-1]["content"] == "and now?"
    assert (out[0].id, out[0].meta) == ("a", {"safety": True})
