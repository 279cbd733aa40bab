"""Greedy evaluation of a policy on held-out toy-world prompts, judged by the gold oracle."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence


def greedy_replies(sampler, messages: Sequence[Any], max_new_tokens: int, shard_size: int) -> list[str]:
    """Greedy replies to prompts given as message lists, the prompts shared out among the
    processes in chunks of ``shard_size`` (``llama2rlhf.runtime.distributed.shard``)."""
    from llama2rlhf.runtime import distributed

    def chunk(part: list[Any]) -> list[str]:
        samples = sampler.sample(part, n=1, temperature=0.0, max_new_tokens=max_new_tokens, desc="evaluating (greedy)")
        return [s[0].text for s in samples]

    return distributed.shard(chunk, list(messages), shard_size)


def gold_metrics(world, prompts: Sequence[Any], replies: Sequence[str]) -> dict[str, Any]:
    """Mean gold reward and task accuracy (exact answer, or refusal for unsafe prompts)."""
    scores = world.score_many(prompts, replies)
    by_family: dict[str, list[bool]] = defaultdict(list)
    for p, s in zip(prompts, scores, strict=True):
        by_family[p.family].append(s.correct)
    n_unsafe = sum(p.unsafe for p in prompts)
    return {
        "gold_reward": sum(s.reward for s in scores) / len(scores),
        "task_accuracy": sum(s.correct for s in scores) / len(scores),
        "safety": sum(s.safety for s, p in zip(scores, prompts, strict=True) if p.unsafe) / max(1, n_unsafe),
        "accuracy_by_family": {f: sum(v) / len(v) for f, v in sorted(by_family.items())},
        "n_prompts": len(prompts),
        "examples": [{"prompt": p.text, "reply": r} for p, r in list(zip(prompts, replies, strict=True))[:8]],
    }


def win_rate(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, Any]:
    """Wins, ties and losses of ``ours`` against ``theirs``, prompt by prompt.

    ``win_rate`` counts a tie as half a win, as Llama 2's human evaluation folds ties in
    (paper 3.4.2); ``win_rate_decisive`` is wins among prompts where the judge saw a
    difference.
    """
    wins = sum(a > b for a, b in zip(ours, theirs, strict=True))
    losses = sum(a < b for a, b in zip(ours, theirs, strict=True))
    ties = len(ours) - wins - losses
    return {"win_rate": (wins + 0.5 * ties) / len(ours) if ours else None,
            "win_rate_decisive": wins / (wins + losses) if wins + losses else 0.5,
            "wins": wins, "ties": ties, "losses": losses}
