"""The ``evaluate`` stage: the round's policy on held-out prompts (paper 3.4, Fig. 11).

Greedy replies to the held-out toy prompts, judged by the gold oracle (gold reward, task
accuracy) and compared prompt by prompt with the SFT model's replies by two judges, the
gold oracle and this round's reward (its reward models through the selected combiner), as
Fig. 11 reports win rates by two judges. Once Ghost Attention has started, it also measures
how long a system instruction holds over a dialogue (``llama2rlhf.evaluation.gatt``).
"""

from __future__ import annotations

from typing import Any

from ... import distributed
from ...combined_reward import CombinedReward
from ...evaluation.gatt import gatt_metrics
from ...evaluation.heldout import heldout_prompts, heldout_replies
from ...evaluation.policy import gold_metrics, win_rate


def evaluate_stage(ctx) -> dict[str, Any]:
    # on the main process alone; the others wait (llama2rlhf.distributed)
    return distributed.main_process_only(_evaluate, ctx)


def _evaluate(ctx) -> dict[str, Any]:
    if ctx.world is None:
        return {}  # no gold oracle on real data; the reward stage reports RM accuracy
    prompts = heldout_prompts(ctx)
    ours = heldout_replies(ctx, ctx.artifact("policy"), ctx.stage_dir("evaluate") / "heldout_replies.jsonl")
    sft = heldout_replies(ctx, ctx.artifact("sft"), ctx.run_dir / "sft" / "heldout_replies.jsonl")
    metrics = gold_metrics(ctx.world, prompts, ours)
    gold_ours = [s.reward for s in ctx.world.score_many(prompts, ours)]
    gold_sft = [s.reward for s in ctx.world.score_many(prompts, sft)]
    reward = CombinedReward.for_run(ctx)
    msgs, flags = [p.messages() for p in prompts], [p.unsafe for p in prompts]
    rm_ours, rm_sft = reward.score(msgs, ours, flags), reward.score(msgs, sft, flags)
    by_gold, by_rm = win_rate(gold_ours, gold_sft), win_rate(rm_ours, rm_sft)
    return {
        **metrics,
        "win_rate_vs_sft": by_gold["win_rate"],
        "win_rate_vs_sft_rm": by_rm["win_rate"],
        "vs_sft": {"gold": by_gold, "rm": by_rm},
        **gatt_metrics(ctx),
    }


evaluate_stage.summary_key = None  # its numbers go straight into rounds[i]
