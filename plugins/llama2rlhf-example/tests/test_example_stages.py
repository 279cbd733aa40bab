"""``example_length_report``: completion lengths of the round's rejection sampling."""

from __future__ import annotations

import json

import pytest

from llama2rlhf.data.jsonl import write_jsonl
from llama2rlhf.sampling.candidates import Candidate
from llama2rlhf_example.stages import correlation, length_report_stage

PROMPT = [{"role": "user", "content": "q"}]


def cand(pid, text, score, rnd=1):
    return Candidate(pid, PROMPT, text, score, rnd).to_dict()


def rs_folder(ctx, name, candidates, kept):
    folder = ctx.run_dir / ctx.stage_key(name)
    folder.mkdir(parents=True)
    write_jsonl(folder / "candidates.jsonl", candidates)
    write_jsonl(folder / "kept.jsonl", kept)
    ctx.state.mark_done(ctx.stage_key(name))


@pytest.fixture
def report_ctx(make_ctx, toy_tokenizer_dir):
    ctx = make_ctx(round=1, stage="example_length_report")
    ctx.state.artifacts["tokenizer"] = str(toy_tokenizer_dir)
    return ctx


def n_tokens(tokenizer_dir, text):
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer_dir)(text, add_special_tokens=False)["input_ids"])


def test_writes_one_line_per_candidate_and_reports_means(report_ctx, toy_tokenizer_dir):
    texts = ["The answer is 7.", "7", "Seven, I think, or maybe eight.", "8"]
    candidates = [cand("p1", texts[0], 1.5), cand("p1", texts[1], 0.2), cand("p2", texts[2], 2.0),
                  cand("p2", texts[3], -1.0)]
    kept = [candidates[0], candidates[2], cand("p3", "kept in round 0", 0.1, rnd=0)]
    rs_folder(report_ctx, "rejection_sampling", candidates, kept)
    metrics = length_report_stage(report_ctx)

    lengths = [n_tokens(toy_tokenizer_dir, t) for t in texts]
    lines = [json.loads(x) for x in (report_ctx.run_dir / "round_1" / "example_length_report" / "lengths.jsonl")
             .read_text().splitlines()]
    assert [(x["prompt_id"], x["score"], x["kept"], x["tokens"]) for x in lines] == [
        ("p1", 1.5, True, lengths[0]), ("p1", 0.2, False, lengths[1]), ("p2", 2.0, True, lengths[2]),
        ("p2", -1.0, False, lengths[3])]
    assert metrics["source"] == "round_1/rejection_sampling"
    assert metrics["n_candidates"] == 4 and metrics["n_kept"] == 3
    assert metrics["mean_tokens"] == pytest.approx(sum(lengths) / 4)
    kept_lengths = [lengths[0], lengths[2], n_tokens(toy_tokenizer_dir, "kept in round 0")]
    assert metrics["mean_tokens_kept"] == pytest.approx(sum(kept_lengths) / 3)
    # here the longer replies scored higher
    assert metrics["length_score_correlation"] == pytest.approx(correlation(lengths, [1.5, 0.2, 2.0, -1.0]))
    assert metrics["length_score_correlation"] > 0.5


def test_reads_the_last_rejection_sampling_of_the_round(report_ctx):
    rs_folder(report_ctx, "rejection_sampling", [cand("p1", "a", 0.0)], [cand("p1", "a", 0.0)])
    rs_folder(report_ctx, "rejection_sampling_after_ppo", [cand("p1", "b b", 0.0), cand("p1", "c", 1.0)],
              [cand("p1", "c", 1.0)])
    metrics = length_report_stage(report_ctx)
    assert metrics["source"] == "round_1/rejection_sampling_after_ppo" and metrics["n_candidates"] == 2


def test_correlation_is_none_where_undefined():
    assert correlation([3.0, 3.0, 3.0], [0.1, 0.5, 0.9]) is None
    assert correlation([1.0], [2.0]) is None
    assert correlation([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)


def test_misplaced_stage_says_where_it_belongs(report_ctx, make_ctx):
    with pytest.raises(ValueError, match="found no finished rejection_sampling stage of this round"):
        length_report_stage(report_ctx)
    with pytest.raises(ValueError, match="list it in pipeline.round_stages after rejection_sampling"):
        length_report_stage(make_ctx(round=0, stage="example_length_report"))


def test_a_failing_plugin_stage_is_named_by_the_pipeline(fresh_plugins, report_ctx):
    from llama2rlhf.recipe.pipeline import run_stage

    with pytest.raises(fresh_plugins.PluginError,
                       match=r"stage 'example_length_report' of plugin 'example' \(distribution llama2rlhf-example\) "
                             r"failed"):
        run_stage(report_ctx, "example_length_report")
