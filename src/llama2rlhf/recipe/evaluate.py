"""The ``evaluate`` stage: the round's policy on held-out prompts (paper 3.4, Fig. 11).

Greedy replies to the held-out toy prompts, judged by the gold oracle (gold reward, task
accuracy) and compared prompt by prompt with the SFT model's replies by two judges, the
gold oracle and this round's reward (its reward models through the selected combiner), as
Fig. 11 reports win rates by two judges. Once Ghost Attention has started, it also measures
how long a system instruction holds over a dialogue (``llama2rlhf.gatt.evaluate``).

On real data there is no gold oracle: the held-out share of ``data.prompt_path`` is judged
by the reward models alone, combined and each on its own (helpfulness, safety: the two
axes of Fig. 11), with a few prompts' replies of SFT and the policy kept for the report.
"""

from __future__ import annotations

from typing import Any

from llama2rlhf.evaluation.heldout import heldout_prompts, heldout_replies
from llama2rlhf.evaluation.policy import gold_metrics, win_rate
from llama2rlhf.gatt.evaluate import gatt_metrics
from llama2rlhf.reward.combined import CombinedReward
from llama2rlhf.runtime import artifacts


def evaluate_stage(ctx) -> dict[str, Any]:
    """Run by every process: the replies and their scores are shared out among them
    (llama2rlhf.runtime.distributed), the main process writes."""
    if ctx.world is None:
        return _evaluate_real(ctx)
    prompts = heldout_prompts(ctx)
    ours = heldout_replies(ctx, ctx.artifact(artifacts.POLICY), ctx.stage_dir("evaluate") / "heldout_replies.jsonl")
    sft = heldout_replies(ctx, ctx.artifact(artifacts.SFT), ctx.run_dir / "sft" / "heldout_replies.jsonl")
    metrics = gold_metrics(ctx.world, prompts, ours)
    gold_ours = [s.reward for s in ctx.world.score_many(prompts, ours)]
    gold_sft = [s.reward for s in ctx.world.score_many(prompts, sft)]
    reward = CombinedReward.for_run(ctx)
    msgs, flags = [p.messages() for p in prompts], [p.unsafe for p in prompts]
    rm_ours, rm_sft = (reward.score(msgs, replies, flags, shard_size=ctx.cfg.shard_size) for replies in (ours, sft))
    by_gold, by_rm = win_rate(gold_ours, gold_sft), win_rate(rm_ours, rm_sft)
    return {
        **metrics,
        "win_rate_vs_sft": by_gold["win_rate"],
        "win_rate_vs_sft_rm": by_rm["win_rate"],
        "vs_sft": {"gold": by_gold, "rm": by_rm},
        **gatt_metrics(ctx),
    }


def _evaluate_real(ctx) -> dict[str, Any]:
    import torch

    from llama2rlhf.data.round_prompts import round_prompts
    from llama2rlhf.reward.combined import is_safety_prompt

    prompts = round_prompts(ctx, "eval", ctx.cfg.data.n_eval_prompts, heldout=True)
    if not prompts:
        return {}
    ours = heldout_replies(ctx, ctx.artifact(artifacts.POLICY), ctx.stage_dir("evaluate") / "heldout_replies.jsonl",
                           prompts)
    sft = heldout_replies(ctx, ctx.artifact(artifacts.SFT), ctx.run_dir / "sft" / "heldout_replies.jsonl", prompts)
    reward = CombinedReward.for_run(ctx)
    msgs, flags = [p.messages for p in prompts], [is_safety_prompt(p.meta) for p in prompts]
    n = len(msgs)
    # both models' replies scored in one pass; the combined reward and each model on its own
    raw = reward.model_scores([[*m, {"role": "assistant", "content": r}]
                               for m, r in zip(msgs + msgs, ours + sft, strict=True)], desc="held-out replies",
                              shard_size=ctx.cfg.shard_size)
    combined = reward.combine(raw, torch.tensor(flags + flags, dtype=torch.bool)).tolist()
    rm_ours, rm_sft = combined[:n], combined[n:]
    by_rm = win_rate(rm_ours, rm_sft)
    by_model = {name: win_rate(s[:n].tolist(), s[n:].tolist()) for name, s in raw.items()}  # helpfulness, safety
    return {
        "win_rate_vs_sft_rm": by_rm["win_rate"],
        "vs_sft": {"rm": by_rm, **by_model},
        "reward_mean": sum(rm_ours) / len(rm_ours),
        "sft_reward_mean": sum(rm_sft) / len(rm_sft),
        "n_prompts": len(prompts),
        "examples": [{"prompt": m[-1]["content"], "sft": s, "reply": r}
                     for m, s, r in list(zip(msgs, sft, ours, strict=True))[:5]],
        **gatt_metrics(ctx),
    }
