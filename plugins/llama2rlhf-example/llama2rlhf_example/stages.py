"""``example_length_report``: a stage that reports the length of rejection sampling's samples.

Reward models tend to reward length as much as quality, and a policy fine-tuned on what
they pick drifts longer round after round. Listed after ``rejection_sampling`` in
``pipeline.round_stages``, this stage counts the tokens of every candidate of the round's
latest rejection sampling (the run's tokenizer), writes one JSON line per candidate to
``<round>/example_length_report/lengths.jsonl`` (prompt id, score, kept or not, tokens)
and returns mean lengths and the length-score correlation for ``summary.json``.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

NAME = "example_length_report"
SOURCE = "rejection_sampling"


def latest_rejection_sampling(ctx) -> Path:
    """The folder of this round's last finished rejection sampling (``rejection_sampling`` or,
    in a PPO round, ``rejection_sampling_after_ppo``)."""
    if ctx.round == 0:
        raise ValueError(f"{NAME} reports on a round's rejection sampling: list it in pipeline.round_stages "
                         f"after {SOURCE}, not in pipeline.stages")
    prefix = ctx.stage_key(SOURCE)
    done = [key for key in ctx.state.done if key == prefix or key.startswith(prefix + "_after_")]
    if not done:
        raise ValueError(f"{NAME} in round {ctx.round} found no finished {SOURCE} stage of this round "
                         f"(finished: {', '.join(ctx.state.done) or 'none'}); list it after {SOURCE} in "
                         f"pipeline.round_stages")
    return ctx.run_dir / done[-1]


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def correlation(x: list[float], y: list[float]) -> float | None:
    """Pearson's r, or None where it is undefined (fewer than two points, a constant series)."""
    try:
        return statistics.correlation(x, y)
    except statistics.StatisticsError:
        return None


def length_report_stage(ctx) -> dict[str, Any]:
    """The stage contract (:func:`llama2rlhf.plugins.hookspecs.register_stages`): ``run(ctx) -> metrics``,
    outputs under ``ctx.stage_dir()``; registered as ``Stage(length_report_stage)``, so its
    metrics are under its name in the round's entry of ``summary.json``."""
    from llama2rlhf.data.jsonl import read_jsonl, write_jsonl
    from llama2rlhf.runtime.models import load_tokenizer

    source = latest_rejection_sampling(ctx)
    candidates = [row for _, row in read_jsonl(source / "candidates.jsonl")]
    # kept samples may come from earlier rounds (selector=best_over_history): counted too
    kept = [row for _, row in read_jsonl(source / "kept.jsonl")]
    tokenizer = load_tokenizer(ctx.artifact("tokenizer"), trust_remote_code=ctx.cfg.model.trust_remote_code)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    kept_keys = {(k["prompt_id"], k["completion"]) for k in kept}
    rows = [{"prompt_id": c["prompt_id"], "round": c["round"], "score": c["score"],
             "kept": (c["prompt_id"], c["completion"]) in kept_keys, "tokens": n_tokens(c["completion"])}
            for c in candidates]
    write_jsonl(ctx.stage_dir() / "lengths.jsonl", rows)
    tokens = [r["tokens"] for r in rows]
    return {
        "source": source.relative_to(ctx.run_dir).as_posix(),
        "n_candidates": len(rows),
        "mean_tokens": mean(tokens),
        "n_kept": len(kept),
        "mean_tokens_kept": mean([n_tokens(k["completion"]) for k in kept]),
        # > 0: the reward model scores longer samples higher
        "length_score_correlation": correlation([float(t) for t in tokens], [r["score"] for r in rows]),
    }
