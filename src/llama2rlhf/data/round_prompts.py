"""Prompts for a round's sampling: from the toy world, or from ``data.prompt_path``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from llama2rlhf.data.errors import ConfigError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class RoundPrompt:
    id: str  # stable across rounds, so samples of the same prompt meet in the history
    messages: Messages
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def prompt_id(messages: Messages) -> str:
    text = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def heldout_share(messages: Messages, fraction: float) -> bool:
    """Whether a real-data prompt is held out for evaluation: a fixed ``fraction`` of prompts
    by a hash of their text, whatever the file's order, so no stage trains on them."""
    return int(prompt_id(messages), 16) / 16**16 < fraction


def round_prompts(ctx, purpose: str, n: int, heldout: bool = False) -> list[RoundPrompt]:
    """``n`` prompts for ``purpose`` (the same ``purpose`` gives the same prompts), from the
    training prompts, or with ``heldout`` from those kept for evaluation. On real data
    (``data.prompt_path``) every purpose draws its own random share of the file, and
    ``data.eval_fraction`` of its prompts are held out; fewer than ``n`` there gives them all."""
    if ctx.world is not None:
        return [RoundPrompt(prompt_id(p.messages()), p.messages(), {"toy_prompt": p.to_dict()})
                for p in ctx.world.prompts("heldout" if heldout else "train", n, purpose=purpose)]
    import random

    from llama2rlhf.data.formats import LoadReport, load_prompts
    from llama2rlhf.data.sources import where

    if not ctx.cfg.data.prompt_path:
        raise ConfigError("data.prompt_path", "is not set: RLHF rounds on real data sample their prompts from it "
                                              "(JSONL or a data set with a 'prompt' field, or Anthropic hh-rlhf "
                                              "transcripts)")
    report = LoadReport()
    rows = load_prompts(ctx.cfg.data.prompt_path, on_bad_row=ctx.cfg.data.on_bad_row, report=report,
                        **where(ctx.cfg.data)).to_list()
    ctx.record_data("prompts", report)
    label = {} if ctx.cfg.data.safety is None else {"safety": ctx.cfg.data.safety}
    pool = [RoundPrompt(prompt_id(r["prompt"]), r["prompt"],
                        {**label, **{k: v for k, v in r.items() if k != "prompt" and v is not None}}) for r in rows]
    pool = [p for p in pool if heldout_share(p.messages, ctx.cfg.data.eval_fraction) == heldout]
    return random.Random(f"{ctx.cfg.seed}:{purpose}").sample(pool, min(n, len(pool)))
