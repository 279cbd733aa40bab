"""Selectors on hand-made candidates (paper 3.2.3: best-of-K, best over all rounds)."""

from __future__ import annotations

import pytest

from llama2rlhf import plugins
from llama2rlhf.sampling.candidates import Candidate


def cand(pid, text, score, rnd=2):
    return Candidate(pid, [{"role": "user", "content": pid}], text, score, rnd)


def select(name, candidates, history=()):
    return plugins.get("selectors", name).obj(list(candidates), list(history))


THIS_ROUND = [cand("p1", "a", 0.1), cand("p1", "b", 0.9), cand("p2", "c", -1.0), cand("p2", "d", -0.5)]


def test_best_of_k_keeps_the_best_of_this_round_only():
    history = [cand("p1", "old", 5.0, rnd=1)]
    got = select("best_of_k", THIS_ROUND, history)
    assert [(c.prompt_id, c.completion) for c in got] == [("p1", "b"), ("p2", "d")]


def test_best_over_history_lets_a_rescored_earlier_sample_win():
    # the earlier keeper, re-scored by the newest RM, beats this round's best for p1 ...
    history = [cand("p1", "old", 0.2, rnd=1).rescored(1.5), cand("p2", "older", -3.0, rnd=1)]
    got = {c.prompt_id: c for c in select("best_over_history", THIS_ROUND, history)}
    assert got["p1"].completion == "old" and got["p1"].round == 1 and got["p1"].score == 1.5
    # ... and loses for p2, where this round sampled better
    assert got["p2"].completion == "d" and got["p2"].round == 2


def test_prompts_only_in_history_are_kept():
    history = [cand("p3", "kept earlier", 0.0, rnd=1)]
    got = select("best_over_history", THIS_ROUND, history)
    assert {c.prompt_id for c in got} == {"p1", "p2", "p3"}
    assert {c.prompt_id for c in select("best_of_k", THIS_ROUND, history)} == {"p1", "p2"}


def test_ties_keep_the_earliest_candidate():
    tied = [cand("p1", "first", 0.5), cand("p1", "second", 0.5)]
    assert select("best_of_k", tied)[0].completion == "first"
    history = [cand("p1", "keeper", 0.5, rnd=1)]
    assert select("best_over_history", tied, history)[0].completion == "keeper"


@pytest.mark.parametrize("name", ["best_of_k", "best_over_history"])
def test_empty_candidates(name):
    assert select(name, []) == []


def test_candidate_round_trips_through_json():
    c = Candidate("p1", [{"role": "user", "content": "q"}], "x", 0.25, 3, {"family": "add"})
    assert Candidate.from_dict(c.to_dict()) == c
    assert Candidate.from_dict(c.to_dict()).meta == {"family": "add"}


# --- how the rejection-sampling stage calls the selected selector -----------------------


def test_stage_passes_the_selector_node_extra_keys_as_options(register_one):
    from omegaconf import OmegaConf

    from llama2rlhf.recipe.rejection_sampling import select as stage_select

    seen = {}

    def above(candidates, history, *, threshold: float):
        seen["threshold"] = threshold
        return [c for c in candidates if c.score > threshold]

    register_one("register_selectors", "custom", above)
    cfg = OmegaConf.create({"selector": {"name": "custom", "threshold": 0.0}})
    assert [c.completion for c in stage_select(cfg, THIS_ROUND, [])] == ["a", "b"]
    assert seen == {"threshold": 0.0}
    # the built-ins' nodes hold only the name: called with no options
    builtin = OmegaConf.create({"selector": {"name": "best_of_k"}})
    assert [c.completion for c in stage_select(builtin, THIS_ROUND, [])] == ["b", "d"]


def test_a_failing_third_party_selector_is_named(register_one):
    from omegaconf import OmegaConf

    from llama2rlhf.recipe.rejection_sampling import select as stage_select

    def broken(candidates, history):
        raise ValueError("no scores")

    register_one("register_selectors", "custom", broken, plugin="broken_plugin")
    with pytest.raises(plugins.PluginError, match=r"selector 'custom' of plugin 'broken_plugin'.*ValueError: no scores"):
        stage_select(OmegaConf.create({"selector": {"name": "custom"}}), THIS_ROUND, [])
