"""Reward losses against hand-computed values (paper 3.2.2, Table 27)."""

from __future__ import annotations

import math

import pytest
import torch

from llama2rlhf import plugins
from llama2rlhf.data.strength import MARGINS_LARGE, MARGINS_SMALL
from llama2rlhf.recipe.reward_model import with_margins


def nls(x):  # -log sigmoid(x), by hand
    return math.log(1.0 + math.exp(-x))


RC = torch.tensor([2.0, 0.5, 1.0])
RR = torch.tensor([1.0, 1.0, 0.0])
STRENGTHS = ["significantly_better", "negligibly_better", "better"]


def _loss(name, margin):
    return float(plugins.get("reward_losses", name).obj(RC, RR, margin))


def test_table_27_margins():
    assert MARGINS_SMALL == pytest.approx({"significantly_better": 1, "better": 2 / 3, "slightly_better": 1 / 3,
                                           "negligibly_better": 0})
    assert MARGINS_LARGE == {"significantly_better": 3, "better": 2, "slightly_better": 1, "negligibly_better": 0}


def test_bradley_terry_by_hand():
    expected = (nls(1.0) + nls(-0.5) + nls(1.0)) / 3
    assert _loss("bradley_terry", None) == pytest.approx(expected, rel=1e-6)
    # a margin in the data does not change the plain binary ranking loss
    assert _loss("bradley_terry", torch.tensor([3.0, 3.0, 3.0])) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name,table", [("margin_small", MARGINS_SMALL), ("margin_large", MARGINS_LARGE)])
def test_margin_losses_by_hand(name, table):
    loss = plugins.get("reward_losses", name).obj
    assert loss.margins == table
    margin = torch.tensor([table[s] for s in STRENGTHS])
    diffs = [2.0 - 1.0, 0.5 - 1.0, 1.0 - 0.0]
    expected = sum(nls(d - m) for d, m in zip(diffs, margin.tolist(), strict=True)) / 3
    assert _loss(name, margin) == pytest.approx(expected, rel=1e-6)


def test_margin_small_values():
    # significantly better: -log sigmoid(1 - 1) = log 2; better: -log sigmoid(1 - 2/3)
    m = torch.tensor([1.0, 2 / 3])
    got = float(plugins.get("reward_losses", "margin_small").obj(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0]), m))
    assert got == pytest.approx((math.log(2) + nls(1 / 3)) / 2, rel=1e-6)


def test_larger_margin_means_larger_loss():
    m_small = torch.tensor([MARGINS_SMALL[s] for s in STRENGTHS])
    m_large = torch.tensor([MARGINS_LARGE[s] for s in STRENGTHS])
    assert _loss("bradley_terry", None) < _loss("margin_small", m_small) < _loss("margin_large", m_large)


def test_with_margins_maps_strength_and_keeps_explicit_margins():
    loss = plugins.get("reward_losses", "margin_large").obj
    rows = [{"chosen": "a", "rejected": "b", "strength": s} for s in STRENGTHS]
    assert [r["margin"] for r in with_margins(rows, loss, "x.jsonl")] == [3.0, 0.0, 2.0]
    explicit = [{"chosen": "a", "rejected": "b", "margin": 0.25}]
    assert with_margins(explicit, loss, "x.jsonl") == explicit
    bt = plugins.get("reward_losses", "bradley_terry").obj
    assert "margin" not in with_margins(rows, bt, "x.jsonl")[0]


def test_with_margins_names_file_row_and_field():
    loss = plugins.get("reward_losses", "margin_small").obj
    rows = [{"chosen": "a", "rejected": "b", "strength": "better"}, {"chosen": "a", "rejected": "b", "strength": "meh"}]
    with pytest.raises(ValueError, match=r"prefs.jsonl: row 2: field 'strength': 'meh'"):
        with_margins(rows, loss, "prefs.jsonl")


def test_margin_scale_multiplies_the_table_only():
    """``reward_loss.margin_scale``: margin_small x 3 is margin_large, x 0 is Bradley-Terry's
    zero margin; margins the data gives and losses without a table are left alone."""
    small = plugins.get("reward_losses", "margin_small").obj
    rows = [{"chosen": "a", "rejected": "b", "strength": s} for s in STRENGTHS]
    large = with_margins(rows, plugins.get("reward_losses", "margin_large").obj, "x.jsonl")
    assert [r["margin"] for r in with_margins(rows, small, "x.jsonl", scale=3.0)] == pytest.approx(
        [r["margin"] for r in large])
    assert [r["margin"] for r in with_margins(rows, small, "x.jsonl", scale=0.0)] == [0.0, 0.0, 0.0]
    assert [r["margin"] for r in with_margins(rows, small, "x.jsonl", scale=0.5)] == pytest.approx([0.5, 0.0, 1 / 3])
    explicit = [{"chosen": "a", "rejected": "b", "margin": 0.25}]
    assert with_margins(explicit, small, "x.jsonl", scale=2.0) == explicit
    bt = plugins.get("reward_losses", "bradley_terry").obj
    assert "margin" not in with_margins(rows, bt, "x.jsonl", scale=2.0)[0]


def test_margin_scale_is_the_reward_stages_not_an_option_of_the_loss():
    from omegaconf import OmegaConf


    cfg = OmegaConf.create({"reward_loss": {"name": "margin_small", "margin_scale": 2.0}})
    loss = plugins.selected("reward_losses", cfg)
    assert loss.name == "margin_small" and loss.options == {}
    assert loss.obj.margins == MARGINS_SMALL
