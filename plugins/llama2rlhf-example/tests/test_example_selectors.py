"""``selector=example_threshold``: best per prompt, kept only above the threshold."""

from __future__ import annotations

import math

import pytest

from llama2rlhf.sampling.candidates import Candidate
from llama2rlhf_example.selectors import threshold_select


def cand(pid, text, score, rnd=2):
    return Candidate(pid, [{"role": "user", "content": pid}], text, score, rnd)


THIS_ROUND = [cand("p1", "a", 0.4), cand("p1", "b", 1.2), cand("p2", "c", -0.3), cand("p2", "d", 0.1),
              cand("p3", "e", -2.0)]
HISTORY = [cand("p2", "old", 0.5, rnd=1), cand("p3", "older", 0.9, rnd=1)]


def picked(got):
    return [(c.prompt_id, c.completion) for c in got]


@pytest.mark.parametrize(("threshold", "expected"), [
    # best per prompt over history + this round: p1 b (1.2), p2 old (0.5), p3 older (0.9)
    (0.0, [("p2", "old"), ("p3", "older"), ("p1", "b")]),
    (0.6, [("p3", "older"), ("p1", "b")]),
    (1.0, [("p1", "b")]),
    (1.2, []),  # "beats": equal is not enough
])
def test_threshold_over_history(threshold, expected):
    assert picked(threshold_select(THIS_ROUND, HISTORY, threshold=threshold)) == expected


def test_this_round_only():
    got = threshold_select(THIS_ROUND, HISTORY, threshold=0.0, over_history=False)
    assert picked(got) == [("p1", "b"), ("p2", "d")]  # p3's best this round is -2.0


def test_a_tie_keeps_the_earlier_keeper():
    got = threshold_select([cand("p2", "new", 0.5)], HISTORY, threshold=0.0)
    assert picked(got) == [("p2", "old"), ("p3", "older")]


def test_nan_scores_and_thresholds_are_refused():
    with pytest.raises(ValueError, match="prompt 'p9' \\(round 2\\) has a NaN score"):
        threshold_select([cand("p9", "x", math.nan)], [])
    with pytest.raises(ValueError, match="selector.threshold is NaN"):
        threshold_select(THIS_ROUND, [], threshold=math.nan)


def test_the_stage_passes_the_config_node_options(fresh_plugins):
    """``selector=example_threshold selector.threshold=1.0``, composed by Hydra and called the
    way the rejection-sampling stage calls it."""
    from hydra import compose, initialize_config_module

    from llama2rlhf.config import store_configs
    from llama2rlhf.recipe.rejection_sampling import select

    store_configs()
    with initialize_config_module(config_module="llama2rlhf.config.conf", version_base="1.3"):
        cfg = compose("config", overrides=["selector=example_threshold", "selector.threshold=1.0"])
    assert dict(cfg.selector) == {"name": "example_threshold", "threshold": 1.0, "over_history": True}
    assert picked(select(cfg, THIS_ROUND, HISTORY)) == [("p1", "b")]
