"""Greedy evaluation of a policy on held-out toy-world prompts, judged by the gold oracle."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence


def evaluate_policy(sampler, world, prompts: Sequence[Any], max_new_tokens: int) -> dict[str, Any]:
    """Mean gold reward and task accuracy (exact answer, or refusal for unsafe prompts)."""
    samples = sampler.sample([p.messages() for p in prompts], n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                             desc="evaluating (greedy)")
    replies = [s[0].text for s in samples]
    scores = world.score_many(prompts, replies)
    by_family: dict[str, list[bool]] = defaultdict(list)
    for p, s in zip(prompts, scores, strict=True):
        by_family[p.family].append(s.correct)
    return {
        "gold_reward": sum(s.reward for s in scores) / len(scores),
        "task_accuracy": sum(s.correct for s in scores) / len(scores),
        "safety": sum(s.safety for s, p in zip(scores, prompts, strict=True) if p.unsafe) / max(1, sum(p.unsafe for p in prompts)),
        "accuracy_by_family": {f: sum(v) / len(v) for f, v in sorted(by_family.items())},
        "n_prompts": len(prompts),
        "examples": [{"prompt": p.text, "reply": r} for p, r in list(zip(prompts, replies, strict=True))[:8]],
    }
