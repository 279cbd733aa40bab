"""Annotators: the toy rater, and the file exchange round trip for human labels."""

from __future__ import annotations

import json

import pytest

from llama2rlhf import plugins
from llama2rlhf.data.errors import DataError
from llama2rlhf.recipe.annotation import AwaitingLabels, PairToLabel
from llama2rlhf.toyworld.tasks import Prompt

ADD = Prompt("add", "What is 3 + 4?", "add:3+4", "7")


def pairs():
    return [
        PairToLabel("r1-p0", ADD.messages(), "The answer is 7.", "The answer is 8.", {"toy_prompt": ADD.to_dict()}),
        PairToLabel("r1-p1", ADD.messages(), "I don't know.", "The answer is 7.", {"toy_prompt": ADD.to_dict()}),
    ]


def make(name, world=None):
    return plugins.get("annotators", name).obj(None, world)


def test_toy_annotator_labels_by_gold_and_is_stable_per_pair(world, tmp_path):
    rows = make("toy", world).annotate(pairs(), tmp_path)
    assert [r["id"] for r in rows] == ["r1-p0", "r1-p1"]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "The answer is 7."}]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "The answer is 7."}]
    assert rows[0]["strength"] == "significantly_better" and rows[0]["prompt"] == ADD.messages()
    # labelling one pair alone gives the same label: resumed rounds relabel identically
    assert make("toy", world).annotate(pairs()[1:], tmp_path) == rows[1:]


def test_toy_annotator_needs_the_toy_world():
    with pytest.raises(ValueError, match="annotator=file"):
        make("toy", None)


def test_file_exchange_round_trip(tmp_path):
    annotator = make("file")
    with pytest.raises(AwaitingLabels) as waiting:
        annotator.annotate(pairs(), tmp_path)
    to_label = tmp_path / "to_label.jsonl"
    assert waiting.value.to_label == to_label and str(to_label) in str(waiting.value)
    assert str(tmp_path / "labelled.jsonl") in str(waiting.value)
    written = [json.loads(x) for x in to_label.read_text().splitlines()]
    assert written == [{"id": "r1-p0", "prompt": ADD.messages(), "response_a": "The answer is 7.",
                        "response_b": "The answer is 8."},
                       {"id": "r1-p1", "prompt": ADD.messages(), "response_a": "I don't know.",
                        "response_b": "The answer is 7."}]
    # asking again before the labels exist does not rewrite what the labellers are working on
    before = to_label.stat().st_mtime_ns
    with pytest.raises(AwaitingLabels):
        annotator.annotate(pairs(), tmp_path)
    assert to_label.stat().st_mtime_ns == before

    (tmp_path / "labelled.jsonl").write_text(
        json.dumps({"id": "r1-p1", "preferred": "b", "strength": "better"}) + "\n"
        + json.dumps({"id": "r1-p0", "preferred": "a", "strength": "slightly_better"}) + "\n")
    rows = annotator.annotate(pairs(), tmp_path)
    assert [r["id"] for r in rows] == ["r1-p0", "r1-p1"]  # in the order of the pairs
    assert rows[0]["chosen"][0]["content"] == "The answer is 7." and rows[0]["strength"] == "slightly_better"
    assert rows[1]["chosen"][0]["content"] == "The answer is 7."
    assert rows[1]["rejected"][0]["content"] == "I don't know." and rows[1]["strength"] == "better"


@pytest.mark.parametrize(
    "lines,line,field,reason",
    [
        ([{"id": "r1-p0", "preferred": "c", "strength": "better"}], 1, "preferred", "must be"),
        ([{"id": "r1-p0", "preferred": "a", "strength": "much"}], 1, "strength", "'much'"),
        ([{"id": "r1-p0", "preferred": "a", "strength": "better"}, {"id": "zz", "preferred": "a",
                                                                     "strength": "better"}], 2, "id", "'zz'"),
        ([{"id": "r1-p0", "preferred": "a", "strength": "better"}] * 2, 2, "id", "twice"),
        ([{"id": "r1-p0", "preferred": "a", "strength": "better"}], None, "id", "1 of 2 pairs have no label"),
    ],
)
def test_bad_labels_name_file_line_and_field(tmp_path, lines, line, field, reason):
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(DataError) as err:
        make("file").annotate(pairs(), tmp_path)
    assert err.value.file == str(labelled) and err.value.line == line and err.value.field == field
    assert reason in str(err.value)
