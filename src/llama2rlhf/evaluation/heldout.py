"""Held-out prompts and a checkpoint's greedy replies to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def heldout_prompts(ctx) -> list:
    return ctx.world.prompts("heldout", ctx.cfg.data.n_eval_prompts, purpose="eval")


def heldout_replies(ctx, model_path: str, cache: Path | None = None, prompts: list | None = None) -> list[str]:
    """Greedy replies of ``model_path`` to the toy world's held-out prompts, or to ``prompts``
    (``RoundPrompt`` objects of real data); kept in ``cache`` so later rounds compare against
    them. Called by every process, which share the prompts out; the main process writes."""
    from llama2rlhf.data.jsonl import read_jsonl, write_jsonl
    from llama2rlhf.evaluation.policy import greedy_replies
    from llama2rlhf.runtime import distributed
    from llama2rlhf.sampling import load_sampler

    if cache is not None and distributed.from_main(cache.exists()):
        return distributed.main_process_only(lambda: [row["reply"] for _, row in read_jsonl(cache)])
    if prompts is None:
        toy = heldout_prompts(ctx)
        messages, texts = [p.messages() for p in toy], [p.text for p in toy]
    else:
        messages, texts = [p.messages for p in prompts], [p.messages[-1]["content"] for p in prompts]
    replies = greedy_replies(load_sampler(ctx.cfg, model_path), messages, ctx.cfg.eval.max_new_tokens,
                             ctx.cfg.shard_size)
    if cache is not None and distributed.is_main_process():
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(cache, [{"prompt": t, "reply": r} for t, r in zip(texts, replies, strict=True)])
    return replies


def evaluate_checkpoint(ctx, model_path: str, cache: Path | None = None) -> dict[str, Any]:
    from llama2rlhf.evaluation.policy import gold_metrics

    return gold_metrics(ctx.world, heldout_prompts(ctx), heldout_replies(ctx, model_path, cache))
