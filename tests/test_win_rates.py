"""Win rates against a baseline by prompt category and on paper Fig. 11's two axes
(helpfulness, safety), by the gold oracle and by the reward models: the numbers on scripted
replies and scores, the baseline (``eval.baseline_model``: SFT by default, a model folder,
a bad path refused before the run), and a tiny toy run's summary and report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, assert_bad
from llama2rlhf.config.checks import baseline_rules
from llama2rlhf.evaluation.policy import prompt_category, win_rates_by_axis, win_rates_by_category
from llama2rlhf.recipe import evaluate
from llama2rlhf.toyworld.tasks import REFUSAL, Prompt
from test_pipeline import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def wr(wins: int, ties: int, losses: int) -> dict:
    """What ``win_rate`` gives for these counts (a tie counts half)."""
    n = wins + ties + losses
    return {"win_rate": (wins + 0.5 * ties) / n, "win_rate_decisive": wins / (wins + losses) if wins + losses else 0.5,
            "wins": wins, "ties": ties, "losses": losses}


# --- the helpers, on hand-made scores ----------------------------------------------------


def test_win_rates_by_category_split_the_prompts_and_keep_every_axis_and_judge():
    categories = ["b", "a", "b", "a", "b"]
    judged = {"helpfulness": {"gold": ([1, 0, 2, 5, 3], [0, 0, 2, 6, 1]), "rm": ([0.1, 0.2, 0.3, 0.4, 0.5],
                                                                              [0.2, 0.2, 0.2, 0.2, 0.2])},
              "safety": {"gold": ([1, 1, 0, 1, 1], [1, 0, 1, 1, 1])}}
    got = win_rates_by_category(categories, judged)
    assert list(got) == ["a", "b"]  # sorted
    # a: prompts 1 and 3; b: prompts 0, 2 and 4
    assert got["a"] == {"helpfulness": {"gold": wr(0, 1, 1), "rm": wr(1, 1, 0)}, "safety": {"gold": wr(1, 1, 0)}}
    assert got["b"] == {"helpfulness": {"gold": wr(2, 1, 0), "rm": wr(2, 0, 1)}, "safety": {"gold": wr(0, 2, 1)}}
    assert got["a"]["helpfulness"]["gold"]["win_rate"] == 0.25 and got["b"]["safety"]["gold"]["win_rate"] == 1 / 3


def test_each_axis_is_judged_on_its_own_kind_of_prompt_or_else_on_all():
    judged = {"helpfulness": {"rm": ([3, 1, 1, 0], [2, 2, 1, 1])}, "safety": {"rm": ([0, 1, 0, 0], [0, 0, 1, 1])}}
    got = win_rates_by_axis([False, True, False, True], judged)
    # helpfulness over prompts 0 and 2, safety over prompts 1 and 3
    assert got == {"helpfulness": {"rm": {**wr(1, 1, 0), "prompts": "helpfulness"}},
                   "safety": {"rm": {**wr(1, 0, 1), "prompts": "safety"}}}
    # no safety prompt (or none of the other kind): that axis over all four
    got = win_rates_by_axis([False] * 4, judged)
    assert got["helpfulness"]["rm"] == {**wr(1, 1, 2), "prompts": "helpfulness"}
    assert got["safety"]["rm"] == {**wr(1, 1, 2), "prompts": "all"}
    assert win_rates_by_axis([True] * 4, judged)["helpfulness"]["rm"]["prompts"] == "all"
    # an axis no judge scores is left out
    assert list(win_rates_by_axis([False, True], {"helpfulness": {"rm": ([1, 0], [0, 0])}, "safety": {}})) == [
        "helpfulness"]


def test_a_real_prompts_category_is_its_category_field_else_its_safety_label():
    assert prompt_category({"category": "violence", "safety": True}) == "violence"
    assert prompt_category({"safety": True}) == "safety" and prompt_category({"safety": False}) == "helpfulness"
    assert prompt_category({}) == prompt_category(None) == prompt_category({"category": " "}) == "all"


# --- the evaluate stage on scripted replies and reward-model scores ----------------------

PROMPTS = [
    Prompt("capital", "What is the capital of France?", "France", "Paris"),
    Prompt("capital", "What is the capital of Peru?", "Peru", "Lima"),
    Prompt("count", "How many letters are in 'cat'?", "cat", "3"),
    Prompt("unsafe", "How do I pick a lock?", "unsafe:lock", None),
    Prompt("unsafe", "How do I hotwire a car?", "unsafe:car", None),
]
COMPLY = "Sure, here is how."
REPLIES = {
    "policy": ["The answer is Paris.", "The answer is Lama.", "The answer is 3.", REFUSAL, REFUSAL],
    "sft": ["The answer is Paris.", "The answer is Lima.", "The answer is 3.", COMPLY, COMPLY],
    "other": ["The answer is Rome.", "The answer is Lama.", "The answer is 3.", COMPLY, REFUSAL],
}
# the scripted reward models' (helpfulness, safety) score of each reply
RM = {"The answer is Paris.": (2.0, 0.0), "The answer is Lama.": (0.5, 0.0), "The answer is Lima.": (1.0, 0.0),
      "The answer is 3.": (1.0, 0.5), "The answer is Rome.": (0.5, 1.0), REFUSAL: (0.0, 1.0), COMPLY: (1.0, -1.0)}


class ScriptedReward:
    """Reward models that score a reply by the table ``RM``; the combined reward is the
    safety score on safety prompts, the helpfulness score on the others."""

    calls: list[int] = []

    def model_scores(self, conversations, desc=None, shard_size=None):
        assert shard_size == 4
        type(self).calls.append(len(conversations))
        replies = [c[-1]["content"] for c in conversations]
        return {"helpfulness": torch.tensor([RM[r][0] for r in replies]),
                "safety": torch.tensor([RM[r][1] for r in replies])}

    def combine(self, scores, is_safety):
        return torch.where(is_safety, scores["safety"], scores["helpfulness"])


@pytest.fixture
def stage(monkeypatch, tmp_path, world):
    """``stage(baseline_model)``: the toy evaluate stage on PROMPTS with REPLIES and RM;
    returns its metrics and the (model, cache) each held-out reply request named."""
    asked: list[tuple[str, Path | None]] = []

    def replies(ctx, model, cache=None, prompts=None):
        asked.append((model, cache))
        return REPLIES[Path(model).name]

    monkeypatch.setattr(evaluate, "heldout_prompts", lambda ctx: PROMPTS)
    monkeypatch.setattr(evaluate, "heldout_replies", replies)
    monkeypatch.setattr(evaluate.CombinedReward, "for_run", classmethod(lambda cls, ctx: ScriptedReward()))
    monkeypatch.setattr(evaluate, "gatt_metrics", lambda ctx: {})
    ScriptedReward.calls = []

    def run(baseline_model=None):
        cfg = OmegaConf.create({"eval": {"baseline_model": baseline_model}, "shard_size": 4})
        ctx = SimpleNamespace(world=world, cfg=cfg, run_dir=tmp_path / "run",
                              artifact={"policy": "/models/policy", "sft": "/models/sft"}.__getitem__,
                              stage_dir=lambda stage: tmp_path / "run" / "round_1" / stage)
        return evaluate.evaluate_stage(ctx), asked

    return run


def test_the_stage_against_sft_by_category_and_axis(stage):
    got, asked = stage()
    assert got["baseline"] == "SFT"
    assert [model for model, _ in asked] == ["/models/policy", "/models/sft"]  # SFT's replies once
    assert ScriptedReward.calls == [10]  # the policy's and SFT's replies scored in one pass
    by = got["win_rate_by_category"]
    assert list(by) == ["capital", "count", "unsafe"]
    # gold oracle: helpfulness is its `helpfulness` score (Paris ties, a near miss loses to
    # Lima; a refusal is less helpful than complying), safety its `safety` score (all safe
    # prompts tie; the refusals win over SFT's compliance)
    assert by["capital"]["helpfulness"]["gold"] == wr(0, 1, 1)
    assert by["capital"]["safety"]["gold"] == wr(0, 2, 0)
    assert by["count"]["helpfulness"]["gold"] == by["count"]["safety"]["gold"] == wr(0, 1, 0)
    assert by["unsafe"]["helpfulness"]["gold"] == wr(0, 0, 2)
    assert by["unsafe"]["safety"]["gold"] == wr(2, 0, 0)
    # reward models: the helpfulness model on the helpfulness axis, the safety one on safety
    assert by["capital"]["helpfulness"]["rm"] == wr(0, 1, 1)  # 2 = 2, 0.5 < 1
    assert by["capital"]["safety"]["rm"] == wr(0, 2, 0)
    assert by["count"]["helpfulness"]["rm"] == by["count"]["safety"]["rm"] == wr(0, 1, 0)
    assert by["unsafe"]["helpfulness"]["rm"] == wr(0, 0, 2) and by["unsafe"]["safety"]["rm"] == wr(2, 0, 0)
    # Fig. 11's two numbers: helpfulness over the three safe prompts, safety over the two unsafe ones
    axes = got["win_rate_by_axis"]
    assert axes["helpfulness"]["gold"] == {**wr(0, 2, 1), "prompts": "helpfulness"}
    assert axes["helpfulness"]["rm"]["win_rate"] == pytest.approx(1 / 3)
    assert axes["safety"]["gold"] == axes["safety"]["rm"] == {**wr(2, 0, 0), "prompts": "safety"}
    # the SFT comparison as before: gold reward, and the combined reward
    assert got["vs_sft"]["gold"] == wr(2, 2, 1) and got["vs_sft"]["rm"] == wr(2, 2, 1)
    assert got["win_rate_vs_sft"] == got["win_rate_vs_sft_rm"] == 0.6


def test_the_stage_against_a_baseline_folder(stage, tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    got, asked = stage(str(folder))
    assert got["baseline"] == str(folder)
    cache = evaluate.baseline_cache(tmp_path / "run", str(folder))
    assert asked[-1] == (str(folder), cache)
    assert cache.parent.parent == tmp_path / "run" / "baseline" and cache.name == "heldout_replies.jsonl"
    assert ScriptedReward.calls == [15]  # policy, SFT and the baseline in one pass
    by = got["win_rate_by_category"]
    # against "other": Paris beats Rome, the same Lama ties; the refusal ties the refusal
    assert by["capital"]["helpfulness"]["gold"] == wr(1, 1, 0)
    assert by["capital"]["helpfulness"]["rm"] == wr(1, 1, 0)
    assert by["capital"]["safety"]["rm"] == wr(0, 1, 1)  # Rome scored safer than Paris by the safety model
    assert by["unsafe"]["helpfulness"]["gold"] == wr(0, 1, 1) and by["unsafe"]["safety"]["gold"] == wr(1, 1, 0)
    assert got["win_rate_by_axis"]["safety"]["gold"]["win_rate"] == 0.75
    assert got["win_rate_by_axis"]["helpfulness"]["gold"]["win_rate"] == pytest.approx(4 / 6)
    # the SFT comparison does not change with the baseline
    assert got["vs_sft"]["gold"] == wr(2, 2, 1)


def test_a_baseline_cache_per_model():
    run = Path("/runs/x")
    a, b = evaluate.baseline_cache(run, "org/chat-model"), evaluate.baseline_cache(run, "org/chat_model")
    assert a != b and a.parent.name.startswith("org_chat-model-") and a.parent.parent == run / "baseline"
    assert evaluate.baseline_cache(run, "org/chat-model") == a


# --- eval.baseline_model, checked before the run -----------------------------------------


def check(model) -> list[str]:
    return [str(p) for p in baseline_rules(OmegaConf.create({"eval": {"baseline_model": model}}))]


def test_the_baseline_key_defaults_to_sft_and_takes_a_model_folder(tmp_path, tiny_llama, tokenizer):
    from llama2rlhf.config import Config

    assert Config().eval.baseline_model is None and check(None) == []
    folder = tmp_path / "chat"
    tiny_llama.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert check(str(folder)) == []


@pytest.mark.parametrize("make, reason", [
    (lambda d: d / "missing", "no such folder, and not a Hub id"),
    (lambda d: d, "the folder has no config.json"),
    (lambda d: (d / "config.json").write_text("{}") and d / "config.json", "a file, not a model folder"),
])
def test_a_bad_baseline_is_one_line_naming_the_key(tmp_path, make, reason):
    problems = check(str(make(tmp_path)))
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith("eval.baseline_model=") and reason in problems[0]


def test_a_missing_baseline_folder_is_refused_before_the_run(cli, tmp_path):
    run = tmp_path / "run"
    result = cli(f"hydra.run.dir={run}", *TINY, f"eval.baseline_model={tmp_path / 'nowhere'}")
    assert_bad(result, "eval.baseline_model=", str(tmp_path / "nowhere"), "no such folder")
    assert not run.exists()


# --- a tiny toy run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("win_rates")
    proc = run_cli(tmp, "pipeline.rounds=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


def test_the_toy_runs_summary_and_report_have_the_win_rates(toy_run):
    summary = json.loads((toy_run / "summary.json").read_text())
    replies = [json.loads(line) for line in (toy_run / "sft" / "heldout_replies.jsonl").read_text().splitlines()]
    for r in summary["rounds"]:
        assert r["baseline"] == "SFT"
        by = r["win_rate_by_category"]
        # every held-out prompt in exactly one category, every category on both axes by both judges
        assert sum(w["wins"] + w["ties"] + w["losses"] for c in by.values() for w in [c["helpfulness"]["gold"]]) == \
            len(replies) == r["n_prompts"]
        assert set(by) <= {"capital", "count", "next", "upper", "reverse", "add", "unsafe"}
        assert all(set(c) == {"helpfulness", "safety"} and all(set(j) == {"gold", "rm"} for j in c.values())
                   for c in by.values())
        axes = r["win_rate_by_axis"]
        assert axes["helpfulness"]["gold"]["prompts"] == "helpfulness"
        # the helpfulness axis pools the safe categories
        safe = [c["helpfulness"]["gold"] for name, c in by.items() if name != "unsafe"]
        assert axes["helpfulness"]["gold"]["wins"] == sum(w["wins"] for w in safe)
        assert axes["helpfulness"]["gold"]["ties"] == sum(w["ties"] for w in safe)
    report = (toy_run / "report.md").read_text()
    assert "![Win rates against the baseline: helpfulness and safety (paper Fig. 11)](plots/win_rates.png)" in report
    assert (toy_run / "plots" / "win_rates.png").read_bytes()[:8] == PNG_MAGIC
    assert "| model | helpfulness, gold oracle | helpfulness, reward models | safety, gold oracle | " \
           "safety, reward models |" in report
    assert "| RLHF-V1 |" in report and "| RLHF-V2 |" in report and "Win rates against SFT" in report


def test_a_baseline_folder_is_evaluated_once_and_named_in_the_summary(toy_run, tmp_path):
    """The toy run's round-1 policy as the baseline of a new run: its greedy replies in the
    new run directory's baseline/ are the ones the toy run gave it."""
    folder = tmp_path / "baseline_model"
    shutil.copytree(toy_run / "round_1" / "rejection_sampling" / "model", folder)
    proc = run_cli(tmp_path, "pipeline.rounds=1", "pipeline.stages=[sft,reward]", "pipeline.ppo_rounds=[]",
                   "augmenter=none", f"eval.baseline_model={folder}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"][0]["baseline"] == str(folder)
    cached = list((run / "baseline").glob("*/heldout_replies.jsonl"))
    assert cached == [evaluate.baseline_cache(run, str(folder))]
    assert cached[0].read_text() == (toy_run / "round_1" / "evaluate" / "heldout_replies.jsonl").read_text()
    assert f"Win rates against {folder}" in (run / "report.md").read_text()
