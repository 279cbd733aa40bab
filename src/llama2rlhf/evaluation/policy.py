"""Greedy evaluation of a policy on held-out toy-world prompts, judged by the gold oracle,
and its win rates against a baseline, by prompt category and on the two axes of paper Fig. 11."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

# Fig. 11's two axes; each judge scores a reply on each axis it can judge
AXES = ("helpfulness", "safety")
# ``judged[axis][judge] = (ours, baseline)``: one score per prompt for each of the two models
Judged = Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]


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


def prompt_category(meta: Mapping[str, Any] | None) -> str:
    """The category a real-data prompt is reported under: its row's ``category`` field
    when it has one, else ``safety`` or ``helpfulness`` by its ``safety`` label (hh-rlhf's
    harmless and helpful splits), else ``all``."""
    meta = meta or {}
    category = meta.get("category")
    if isinstance(category, str) and category.strip():
        return category.strip()
    if "safety" in meta:
        return "safety" if meta["safety"] else "helpfulness"
    return "all"


def win_rates_by_category(categories: Sequence[str], judged: Judged) -> dict[str, dict[str, dict[str, Any]]]:
    """``{category: {axis: {judge: win_rate(...)}}}``: our win rate against the baseline
    among the prompts of each category (``categories[i]`` is prompt i's), categories in
    sorted order, on every axis and by every judge of ``judged``."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, category in enumerate(categories):
        rows[category].append(i)
    return {category: _judge(judged, rows[category]) for category in sorted(rows)}


def win_rates_by_axis(is_safety: Sequence[bool], judged: Judged) -> dict[str, dict[str, dict[str, Any]]]:
    """``{axis: {judge: win_rate(...)}}``, the two numbers of paper Fig. 11 per judge: the
    helpfulness win rate over the helpfulness prompts, the safety win rate over the safety
    prompts. An axis whose kind of prompt the set has none of is judged over every prompt;
    each win-rate dict says which in ``prompts`` (``helpfulness``, ``safety`` or ``all``)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for axis, judges in judged.items():
        rows = [i for i, unsafe in enumerate(is_safety) if unsafe == (axis == "safety")]
        prompts = axis if rows else "all"
        for judge, result in _judge({axis: judges}, rows or range(len(is_safety))).get(axis, {}).items():
            out.setdefault(axis, {})[judge] = {**result, "prompts": prompts}
    return out


def _judge(judged: Judged, rows: Sequence[int]) -> dict[str, dict[str, dict[str, Any]]]:
    """Win rates over the prompts ``rows``; an axis without judges is left out."""
    return {axis: {judge: win_rate([ours[i] for i in rows], [theirs[i] for i in rows])
                   for judge, (ours, theirs) in judges.items()}
            for axis, judges in judged.items() if judges}
