"""``annotator=example_shorter``: the shorter reply wins, the strength from the length gap."""

from __future__ import annotations

import pytest

from llama2rlhf.recipe.annotation import PairToLabel
from llama2rlhf_example.annotators import ShorterAnnotator, make_shorter_annotator, strength

PROMPT = [{"role": "user", "content": "Say something."}]


def pair(i, a, b):
    return PairToLabel(f"r1-{i}", PROMPT, a, b)


@pytest.mark.parametrize(("gap", "label"), [
    (1.0, "significantly_better"), (0.5, "significantly_better"), (0.49, "better"), (0.25, "better"),
    (0.2, "slightly_better"), (0.1, "slightly_better"), (0.09, "negligibly_better"), (0.0, "negligibly_better"),
])
def test_strength_from_the_relative_gap(gap, label):
    assert strength(gap, [0.5, 0.25, 0.1]) == label


def test_rows_in_pair_order_with_ids_and_the_shorter_reply_chosen(tmp_path):
    pairs = [pair(0, "one two three four", "one two"),  # b half as long: significantly better
             pair(1, "a b c", "a b c d"),  # a, 1/4 shorter: better
             pair(2, "same length", "equal words"),  # a tie: a, negligibly
             pair(3, "x " * 9 + "x", "y " * 8 + "y")]  # b 1/10 shorter: slightly
    rows = ShorterAnnotator().annotate(pairs, tmp_path)
    assert [r["id"] for r in rows] == ["r1-0", "r1-1", "r1-2", "r1-3"]
    assert [(r["chosen"][0]["content"], r["strength"]) for r in rows] == [
        ("one two", "significantly_better"), ("a b c", "better"), ("same length", "negligibly_better"),
        ("y " * 8 + "y", "slightly_better")]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": "one two three four"}]
    assert all(r["prompt"] == PROMPT for r in rows)


def test_characters_instead_of_words(tmp_path):
    [row] = ShorterAnnotator(unit="chars").annotate([pair(0, "abcdefghij", "a b c d")], tmp_path)
    assert row["chosen"][0]["content"] == "a b c d" and row["strength"] == "better"  # 7 vs 10 chars: 0.3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"unit": "tokens"}, "annotator.unit must be one of words, chars, got 'tokens'"),
    ({"thresholds": [0.5, 0.25]}, "annotator.thresholds needs 3 values"),
    ({"thresholds": [0.5, 0.5, 0.1]}, "must fall strictly"),
    ({"thresholds": [1.5, 0.5, 0.1]}, "must fall strictly"),
    ({"thresholds": [0.5, 0.25, 0.0]}, "must fall strictly"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShorterAnnotator(**kwargs)


def test_factory_gets_the_annotator_node_as_options(fresh_plugins, tmp_path):
    from omegaconf import OmegaConf

    from llama2rlhf_example.annotators import ExampleShorterConfig

    cfg = OmegaConf.create({"annotator": OmegaConf.structured(ExampleShorterConfig(unit="chars",
                                                                                    thresholds=[0.9, 0.6, 0.3]))})
    item = fresh_plugins.selected("annotators", cfg)
    assert item.obj is make_shorter_annotator and item.options == {"unit": "chars", "thresholds": [0.9, 0.6, 0.3]}
    annotator = item.call(cfg, None)
    assert annotator.unit == "chars" and annotator.thresholds == [0.9, 0.6, 0.3]
    [row] = annotator.annotate([pair(0, "abcdefghij", "a b c d")], tmp_path)
    assert row["strength"] == "slightly_better"  # a 0.3 gap under these thresholds
