"""The toy world's held-out prompts and a checkpoint's greedy replies to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def heldout_prompts(ctx) -> list:
    return ctx.world.prompts("heldout", ctx.cfg.data.n_eval_prompts, purpose="eval")


def heldout_replies(ctx, model_path: str, cache: Path | None = None) -> list[str]:
    """Greedy replies of ``model_path``; kept in ``cache`` so later rounds compare against them."""
    from ..data.jsonl import read_jsonl, write_jsonl
    from ..sampling import load_sampler
    from .policy import greedy_replies

    if cache is not None and cache.exists():
        return [row["reply"] for _, row in read_jsonl(cache)]
    prompts = heldout_prompts(ctx)
    replies = greedy_replies(load_sampler(ctx.cfg, model_path), [p.messages() for p in prompts],
                             ctx.cfg.eval.max_new_tokens)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(cache, [{"prompt": p.text, "reply": r} for p, r in zip(prompts, replies, strict=True)])
    return replies


def evaluate_checkpoint(ctx, model_path: str, cache: Path | None = None) -> dict[str, Any]:
    from .policy import gold_metrics

    return gold_metrics(ctx.world, heldout_prompts(ctx), heldout_replies(ctx, model_path, cache))
