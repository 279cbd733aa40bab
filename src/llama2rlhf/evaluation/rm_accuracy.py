"""Reward-model accuracy per preference-strength bucket (paper Table 8)."""

from __future__ import annotations

from typing import Any, Sequence

from llama2rlhf.data.strength import STRENGTHS
from llama2rlhf.reward.scoring import score_conversations


def bucket_accuracy(chosen_scores: Sequence[float], rejected_scores: Sequence[float],
                    strengths: Sequence[str | None]) -> dict[str, Any]:
    """Fraction of pairs where the chosen reply scores higher, per strength and overall.

    Ties count as wrong: a reward model that cannot separate two replies has not
    predicted the annotator's choice.
    """
    hits: dict[str, list[bool]] = {s: [] for s in STRENGTHS}
    overall = []
    for c, r, s in zip(chosen_scores, rejected_scores, strengths, strict=True):
        hit = c > r
        overall.append(hit)
        if s is not None:
            hits[s].append(hit)
    out: dict[str, Any] = {s: (sum(v) / len(v) if v else None) for s, v in hits.items()}
    out["overall"] = sum(overall) / len(overall) if overall else None
    out["counts"] = {s: len(v) for s, v in hits.items()} | {"overall": len(overall)}
    return out


def pair_conversations(pairs: Sequence[dict]) -> list:
    """The chosen conversation of every preference row (TRL format), then every rejected one."""
    def conv(row, side):
        prompt = row.get("prompt") or []
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        return list(prompt) + list(row[side])

    return [conv(r, "chosen") for r in pairs] + [conv(r, "rejected") for r in pairs]


def rm_accuracy(model, tokenizer, pairs: Sequence[dict], batch_size: int = 64) -> dict[str, Any]:
    """Score held-out preference rows (TRL format) and report :func:`bucket_accuracy`."""
    scores = score_conversations(model, tokenizer, pair_conversations(pairs), batch_size=batch_size,
                                 desc="RM accuracy")
    n = len(pairs)
    return bucket_accuracy(scores[:n], scores[n:], [r.get("strength") for r in pairs])
