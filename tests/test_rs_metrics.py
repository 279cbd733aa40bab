"""Rejection-sampling diagnostics on hand-made candidates (toy world's gold oracle)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llama2rlhf.recipe.rejection_sampling import _gold
from llama2rlhf.sampling.candidates import Candidate
from llama2rlhf.toyworld.tasks import Prompt

ADD = Prompt("add", "What is 3 + 4?", "add:3+4", "7")
UPPER = Prompt("upper", "Shout 'cat'.", "upper:cat", "CAT")


def cand(p, text, score):
    return Candidate(p.item, p.messages(), text, score, 1, {"toy_prompt": p.to_dict()})


def test_rm_pick_against_random_and_best(world):
    candidates = [
        # ADD: the RM ranks the right answer first
        cand(ADD, "The answer is 7.", 2.0), cand(ADD, "The answer is 8.", 1.0),
        cand(ADD, "The answer is 9.", 0.0), cand(ADD, "The answer is 6.", -1.0),
        # UPPER: a right answer exists but the RM prefers a wrong one
        cand(UPPER, "The answer is Cat.", 3.0), cand(UPPER, "The answer is CAT.", 1.0),
    ]
    kept = [candidates[0], candidates[4]]
    got = _gold(SimpleNamespace(world=world), candidates, kept)
    assert got["rm_pick_correct"] == 0.5
    assert got["sample_correct"] == pytest.approx((1 / 4 + 1 / 2) / 2)
    assert got["any_correct"] == 1.0
    assert got["rm_pick_correct_by_family"] == {"add": 1.0, "upper": 0.0}
    assert got["kept_correct"] == 0.5
    assert got["kept_gold_reward"] == pytest.approx((1.0 + 0.45 * (2 * 1 / 6)) / 2)


def test_no_gold_without_the_toy_world():
    assert _gold(SimpleNamespace(world=None), [], []) == {}
