"""Which stages each round runs: PPO after rejection sampling in the PPO rounds, then
rejection sampling again under its own name (paper 3.2.3: V4 -> PPO -> RS -> V5)."""

from __future__ import annotations

from omegaconf import OmegaConf

from llama2rlhf.config import ppo_rounds
from llama2rlhf.recipe.pipeline import round_plan

ROUND = ["collect", "reward", "rejection_sampling", "evaluate"]


def _cfg(**pipeline):
    base = {"rounds": 3, "round_stages": ROUND, "ppo_rounds": None, "ppo_stages": ["ppo", "rejection_sampling"]}
    return OmegaConf.create({"pipeline": {**base, **pipeline}})


def test_ppo_runs_in_the_last_round_by_default():
    cfg = _cfg()
    assert ppo_rounds(cfg) == [3]
    assert round_plan(cfg, 1) == [(s, s) for s in ROUND]
    assert round_plan(cfg, 3) == [("collect", "collect"), ("reward", "reward"),
                                  ("rejection_sampling", "rejection_sampling"), ("ppo", "ppo"),
                                  ("rejection_sampling", "rejection_sampling_after_ppo"), ("evaluate", "evaluate")]


def test_ppo_rounds_and_stages_are_configurable():
    assert ppo_rounds(_cfg(ppo_rounds=[])) == [] and ppo_rounds(_cfg(rounds=0)) == []
    cfg = _cfg(ppo_rounds=[2, 3], ppo_stages=["grpo"])
    assert [a for _, a in round_plan(cfg, 2)] == ["collect", "reward", "rejection_sampling", "grpo", "evaluate"]
    assert [a for _, a in round_plan(cfg, 1)] == ROUND
