"""Evaluating a saved policy checkpoint on the toy world's held-out prompts."""

from __future__ import annotations

from typing import Any


def heldout_prompts(ctx) -> list:
    return ctx.world.prompts("heldout", ctx.cfg.data.n_eval_prompts, purpose="eval")


def evaluate_checkpoint(ctx, model_path: str) -> dict[str, Any]:
    from ..builtins.samplers import HFSampler
    from ..models import device_for, load_causal_lm, load_tokenizer
    from .policy import evaluate_policy

    cfg = ctx.cfg
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, cfg).to(device_for(cfg))
    sampler = HFSampler(model, tokenizer)
    return evaluate_policy(sampler, ctx.world, heldout_prompts(ctx), cfg.eval.max_new_tokens)
