"""The example plugins in a real (tiny) pipeline, selected with Hydra overrides on the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("llama2rlhf"))
# the core's tiny settings (tests/test_pipeline.py), enough for one round in about a minute
TINY = [
    "data.n_sft=160", "data.n_pairs=160", "data.n_eval_pairs=40", "data.n_eval_prompts=16",
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2",
    "model.vocab_size=400", "sft.num_train_epochs=1", "reward_model.num_train_epochs=1",
    "collect.n_prompts=24", "collect.max_new_tokens=10", "rs.n_prompts=16", "rs.k=3", "rs.search_prompts=6",
    "rs.temperatures=[0.8,1.3]", "rs.train.num_train_epochs=1", "rs.max_new_tokens=10", "logger=none",
]
THRESHOLD = 0.4
EXAMPLES = [
    "pipeline.rounds=1", "pipeline.ppo_rounds=[]",
    "pipeline.round_stages=[collect,reward,rejection_sampling,example_length_report]",
    # a threshold inside the spread of the seeded run's best score per prompt, so that it
    # keeps some prompts and drops others
    "selector=example_threshold", f"selector.threshold={THRESHOLD}",
    "augmenter=example_system_prompt", "annotator=example_shorter", "sampler=example_distinct",
]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("example_pipeline")
    calls = tmp / "sampler_calls.jsonl"
    proc = subprocess.run([CLI, f"hydra.run.dir={tmp / 'run'}", *TINY, *EXAMPLES, f"sampler.log_path={calls}"],
                          cwd=tmp, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", calls


def test_the_threshold_selector_kept_the_best_sample_of_each_prompt_above_the_threshold(run):
    run_dir, _ = run
    rs = run_dir / "round_1" / "rejection_sampling"
    best: dict[str, dict] = {}
    for c in rows(rs / "candidates.jsonl"):
        if c["prompt_id"] not in best or c["score"] > best[c["prompt_id"]]["score"]:
            best[c["prompt_id"]] = c
    expected = {(c["prompt_id"], c["completion"]) for c in best.values() if c["score"] > THRESHOLD}
    kept = rows(rs / "kept.jsonl")
    assert {(k["prompt_id"], k["completion"]) for k in kept} == expected
    assert 0 < len(expected) < len(best) == 16, sorted(c["score"] for c in best.values())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"][0]["rs"]["n_kept"] == len(expected)


def test_the_augmenter_added_a_system_prompt_copy_of_each_kept_row(run):
    run_dir, _ = run
    rs = run_dir / "round_1" / "rejection_sampling"
    kept = rows(rs / "kept.jsonl")
    variants = rows(rs / "example_system_prompt" / "variants.jsonl")
    without_system = [k for k in kept if k["prompt"][0]["role"] != "system"]
    assert len(variants) == len(without_system) > 0
    defaults = {"You are a helpful assistant.", "Answer briefly and accurately."}
    for k, v in zip(without_system, variants, strict=True):
        assert v["messages"][0]["role"] == "system" and v["messages"][0]["content"] in defaults
        assert v["messages"][1:] == k["prompt"] + [{"role": "assistant", "content": k["completion"]}]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"][0]["rs"]["n_augmented"] == len(variants)


def test_the_length_report_stage_ran_after_rejection_sampling(run):
    run_dir, _ = run
    state = json.loads((run_dir / "state.json").read_text())
    assert state["done"][-3:] == ["round_1/rejection_sampling", "round_1/example_length_report", "round_1"]
    candidates = rows(run_dir / "round_1" / "rejection_sampling" / "candidates.jsonl")
    lengths = rows(run_dir / "round_1" / "example_length_report" / "lengths.jsonl")
    assert [(x["prompt_id"], x["score"]) for x in lengths] == [(c["prompt_id"], c["score"]) for c in candidates]
    assert all(0 <= x["tokens"] <= 40 for x in lengths)  # 10 new tokens at most (none: EOS first)
    report = json.loads((run_dir / "summary.json").read_text())["rounds"][0]["example_length_report"]
    assert report["n_candidates"] == len(candidates) == 16 * 3
    assert report["mean_tokens"] == pytest.approx(sum(x["tokens"] for x in lengths) / len(lengths))


def test_the_annotator_preferred_the_shorter_reply(run):
    run_dir, _ = run
    for path in (run_dir / "collect" / "comparisons.jsonl", run_dir / "round_1" / "collect" / "comparisons.jsonl"):
        comparisons = rows(path)
        assert comparisons
        for c in comparisons:
            assert len(c["chosen"][0]["content"].split()) <= len(c["rejected"][0]["content"].split())


def test_the_sampler_logged_every_call(run):
    _, calls = run
    lines = rows(calls)
    # collect (two temperatures, twice), the temperature search (two), rejection sampling
    assert len(lines) >= 7
    assert all(x["samples"] == x["prompts"] * x["n"] for x in lines)
    [rs] = [x for x in lines if x["desc"].startswith("rejection sampling")]
    assert rs["prompts"] == 16 and rs["n"] == 3 and rs["distinct_after"] >= rs["distinct_before"]
