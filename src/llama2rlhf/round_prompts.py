"""Prompts for a round's sampling: from the toy world, or from ``data.prompt_path``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class RoundPrompt:
    id: str  # stable across rounds, so samples of the same prompt meet in the history
    messages: Messages
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def prompt_id(messages: Messages) -> str:
    text = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def round_prompts(ctx, purpose: str, n: int) -> list[RoundPrompt]:
    """``n`` training prompts for ``purpose`` (the same ``purpose`` gives the same prompts)."""
    if ctx.world is not None:
        return [RoundPrompt(prompt_id(p.messages()), p.messages(), {"toy_prompt": p.to_dict()})
                for p in ctx.world.prompts("train", n, purpose=purpose)]
    from .data.formats import LoadReport, load_prompts
    from .data.sources import where

    if not ctx.cfg.data.prompt_path:
        raise ValueError("RLHF rounds on real data need data.prompt_path (JSONL or a data set with a 'prompt' "
                         "field, or Anthropic hh-rlhf transcripts)")
    report = LoadReport()
    rows = load_prompts(ctx.cfg.data.prompt_path, on_bad_row=ctx.cfg.data.on_bad_row, report=report,
                        **where(ctx.cfg.data)).to_list()[:n]
    ctx.record_data("prompts", report)
    return [RoundPrompt(prompt_id(r["prompt"]), r["prompt"], {k: v for k, v in r.items() if k != "prompt"})
            for r in rows]
