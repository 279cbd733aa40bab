"""The ``evaluate`` stage: the round's policy on held-out prompts (paper 3.4, Fig. 11).

Greedy replies to the held-out toy prompts, judged by the gold oracle (gold reward, task
accuracy) and compared prompt by prompt with the SFT model's replies by two judges, the
gold oracle and this round's reward (its reward models through the selected combiner), as
Fig. 11 reports win rates by two judges. Once Ghost Attention has started, it also measures
how long a system instruction holds over a dialogue (``llama2rlhf.gatt.evaluate``).

Fig. 11's two axes: the win rate against a baseline (SFT, or ``eval.baseline_model``, as the
paper compared with ChatGPT) on helpfulness and on safety, by each judge, over all the
prompts of each kind (``win_rate_by_axis``) and per prompt category (``win_rate_by_category``:
the toy world's task families, on real data the prompt rows' ``category`` or ``safety``
label). The gold oracle judges helpfulness by its ``helpfulness`` score and safety by its
``safety`` score; the reward-model judge is the helpfulness reward model on the one axis and
the safety reward model, when the run has one, on the other.

On real data there is no gold oracle: the held-out share of ``data.prompt_path`` is judged
by the reward models alone, combined and each on its own, with a few prompts' replies of
SFT and the policy kept for the report.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Sequence

from llama2rlhf.evaluation.heldout import heldout_prompts, heldout_replies
from llama2rlhf.evaluation.policy import (
    AXES,
    gold_metrics,
    prompt_category,
    win_rate,
    win_rates_by_axis,
    win_rates_by_category,
)
from llama2rlhf.gatt.evaluate import gatt_metrics
from llama2rlhf.reward.combined import CombinedReward
from llama2rlhf.runtime import artifacts

SFT_BASELINE = "SFT"  # the baseline's name in the summary when eval.baseline_model is not set
BASELINE_DIR = "baseline"  # under the run directory: the baseline models' cached replies


def baseline_cache(run_dir: Path, model: str) -> Path:
    """Where the greedy replies of the baseline ``model`` are kept: a folder of its own under
    ``run_dir/baseline``, named after the model (a local folder by its full path), so that
    another baseline in the same run directory is not read from this one's file."""
    path = Path(model).expanduser()
    key = str(path.resolve()) if path.exists() else model
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_.")[-48:]
    return run_dir / BASELINE_DIR / f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:8]}" / "heldout_replies.jsonl"


def baseline_replies(ctx, sft: list[str], prompts: list | None = None) -> tuple[str, list[str]]:
    """The baseline's name and its greedy replies: SFT's ``sft`` by default, else those of
    ``eval.baseline_model`` (a folder or Hub id), computed once and cached in the run directory."""
    model = ctx.cfg.eval.baseline_model
    if not model:
        return SFT_BASELINE, sft
    path = Path(str(model)).expanduser()
    source = str(path) if path.exists() else str(model)
    return str(model), heldout_replies(ctx, source, baseline_cache(ctx.run_dir, str(model)), prompts)


def _scored(ctx, reward: CombinedReward, messages: list, is_safety: list[bool],
            reply_sets: Sequence[list[str]]) -> tuple[list[dict[str, list[float]]], list[list[float]]]:
    """Every set of replies to ``messages`` scored in one pass: per set, each reward model's
    raw scores (by model name: ``helpfulness``, ``safety``) and the combined reward."""
    import torch

    n, k = len(messages), len(reply_sets)
    conversations = [[*m, {"role": "assistant", "content": r}]
                     for replies in reply_sets for m, r in zip(messages, replies, strict=True)]
    raw = reward.model_scores(conversations, desc="held-out replies", shard_size=ctx.cfg.shard_size)
    combined = reward.combine(raw, torch.tensor(list(is_safety) * k, dtype=torch.bool)).tolist()
    return ([{name: s[i * n:(i + 1) * n].tolist() for name, s in raw.items()} for i in range(k)],
            [combined[i * n:(i + 1) * n] for i in range(k)])


def _rm_judge(ours: dict[str, list[float]], theirs: dict[str, list[float]]) -> dict[str, dict[str, tuple]]:
    """The reward-model judge of each axis: the reward model of that name, where the run has one."""
    return {axis: {"rm": (ours[axis], theirs[axis])} for axis in AXES if axis in ours}


def _against_baseline(baseline: str, categories: list[str], is_safety: list[bool],
                      judged: dict[str, dict[str, tuple]]) -> dict[str, Any]:
    return {"baseline": baseline, "win_rate_by_axis": win_rates_by_axis(is_safety, judged),
            "win_rate_by_category": win_rates_by_category(categories, judged)}


def evaluate_stage(ctx) -> dict[str, Any]:
    """Run by every process: the replies and their scores are shared out among them
    (llama2rlhf.runtime.distributed), the main process writes."""
    if ctx.world is None:
        return _evaluate_real(ctx)
    prompts = heldout_prompts(ctx)
    ours = heldout_replies(ctx, ctx.artifact(artifacts.POLICY), ctx.stage_dir("evaluate") / "heldout_replies.jsonl")
    sft = heldout_replies(ctx, ctx.artifact(artifacts.SFT), ctx.run_dir / "sft" / "heldout_replies.jsonl")
    baseline, theirs = baseline_replies(ctx, sft)
    metrics = gold_metrics(ctx.world, prompts, ours)
    gold_ours, gold_sft, gold_theirs = (ctx.world.score_many(prompts, r) for r in (ours, sft, theirs))
    reward = CombinedReward.for_run(ctx)
    msgs, flags = [p.messages() for p in prompts], [p.unsafe for p in prompts]
    sets = [ours, sft] + ([] if theirs is sft else [theirs])  # SFT as the baseline: scored once
    raw, combined = _scored(ctx, reward, msgs, flags, sets)
    by_gold = win_rate([s.reward for s in gold_ours], [s.reward for s in gold_sft])
    by_rm = win_rate(combined[0], combined[1])
    rm = _rm_judge(raw[0], raw[-1])
    judged = {axis: {"gold": ([getattr(s, axis) for s in gold_ours], [getattr(s, axis) for s in gold_theirs]),
                     **rm.get(axis, {})} for axis in AXES}
    return {
        **metrics,
        "win_rate_vs_sft": by_gold["win_rate"],
        "win_rate_vs_sft_rm": by_rm["win_rate"],
        "vs_sft": {"gold": by_gold, "rm": by_rm},
        **_against_baseline(baseline, [p.family for p in prompts], flags, judged),
        **gatt_metrics(ctx),
    }


def _evaluate_real(ctx) -> dict[str, Any]:
    from llama2rlhf.data.round_prompts import round_prompts
    from llama2rlhf.reward.combined import is_safety_prompt

    prompts = round_prompts(ctx, "eval", ctx.cfg.data.n_eval_prompts, heldout=True)
    if not prompts:
        return {}
    ours = heldout_replies(ctx, ctx.artifact(artifacts.POLICY), ctx.stage_dir("evaluate") / "heldout_replies.jsonl",
                           prompts)
    sft = heldout_replies(ctx, ctx.artifact(artifacts.SFT), ctx.run_dir / "sft" / "heldout_replies.jsonl", prompts)
    baseline, theirs = baseline_replies(ctx, sft, prompts)
    reward = CombinedReward.for_run(ctx)
    msgs, flags = [p.messages for p in prompts], [is_safety_prompt(p.meta) for p in prompts]
    sets = [ours, sft] + ([] if theirs is sft else [theirs])
    raw, combined = _scored(ctx, reward, msgs, flags, sets)
    rm_ours, rm_sft = combined[0], combined[1]
    by_rm = win_rate(rm_ours, rm_sft)
    by_model = {name: win_rate(raw[0][name], raw[1][name]) for name in raw[0]}  # helpfulness, safety
    return {
        "win_rate_vs_sft_rm": by_rm["win_rate"],
        "vs_sft": {"rm": by_rm, **by_model},
        "reward_mean": sum(rm_ours) / len(rm_ours),
        "sft_reward_mean": sum(rm_sft) / len(rm_sft),
        "n_prompts": len(prompts),
        "examples": [{"prompt": m[-1]["content"], "sft": s, "reply": r}
                     for m, s, r in list(zip(msgs, sft, ours, strict=True))[:5]],
        **_against_baseline(baseline, [prompt_category(p.meta) for p in prompts], flags, _rm_judge(raw[0], raw[-1])),
        **gatt_metrics(ctx),
    }
