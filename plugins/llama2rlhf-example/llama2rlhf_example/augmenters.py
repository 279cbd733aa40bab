"""``augmenter=example_system_prompt``: each fine-tuning row again, under a system prompt.

A policy fine-tuned only on rows without a system prompt may answer differently once a
deployment adds one. This augmenter adds, for a share of the rows that have no system
message, a copy with one of ``system_prompts`` in front; which rows and which prompt are
fixed by a hash of the row, the seed and the round, so a re-run round adds the same rows.
The copies are written to ``<stage dir>/example_system_prompt/variants.jsonl``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

from llama2rlhf.config import AugmenterConfig

NAME = "example_system_prompt"
DEFAULT_SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly and accurately.")


@dataclass
class ExampleSystemPromptConfig(AugmenterConfig):
    name: str = NAME
    system_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_SYSTEM_PROMPTS))
    # share of the rows without a system message that get a copy (0..1)
    share: float = 1.0


def _draw(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` (the same on every machine and run, unlike hash())."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def _messages(row: dict, index: int) -> tuple[str, list[dict]]:
    if "messages" in row:
        return "messages", row["messages"]
    if "prompt" in row and "completion" in row:
        return "prompt", row["prompt"]
    raise ValueError(f"row {index}: expected a 'messages' or a 'prompt' and 'completion' row, got keys "
                     f"{sorted(row)}")


def with_system_prompts(rows: list[dict], system_prompts: list[str], share: float, salt: str) -> list[dict]:
    """The copies to add: one per chosen row, with a system message first."""
    if not system_prompts:
        raise ValueError("augmenter.system_prompts is empty")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"augmenter.share must be within [0, 1], got {share}")
    out = []
    for i, row in enumerate(rows):
        key, messages = _messages(row, i)
        if not messages or messages[0].get("role") == "system":
            continue
        text = "\n".join(str(m.get("content", "")) for m in messages)
        if _draw(f"{salt}:keep:{text}") >= share:
            continue
        system = system_prompts[int(_draw(f"{salt}:which:{text}") * len(system_prompts))]
        out.append({**row, key: [{"role": "system", "content": system}, *messages]})
    return out


def system_prompt_augment(rows: list[dict], ctx, *, system_prompts: Sequence[str] = DEFAULT_SYSTEM_PROMPTS,
                          share: float = 1.0) -> list[dict]:
    """The augmenter contract (:func:`llama2rlhf.plugins.hookspecs.register_augmenters`):
    ``augment(rows, ctx, **options) -> rows``; the options are the ``augmenter`` node's
    fields but ``name`` (:class:`ExampleSystemPromptConfig`)."""
    from llama2rlhf.data.jsonl import write_jsonl

    variants = with_system_prompts(rows, list(system_prompts), share, salt=f"{ctx.cfg.seed}:{ctx.round}")
    out_dir = ctx.stage_dir() / NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "variants.jsonl", variants)
    return rows + variants
