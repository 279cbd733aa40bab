"""Padding-free batches of preference pairs for reward-model training (``reward_model.padding_free``).

TRL's ``DataCollatorForPreference`` pads a batch's chosen and rejected sequences to the
longest of them, and the reward model runs every padding token through every layer. Here
the batch is one row instead: the chosen sequences end to end, then the rejected ones, the
position ids starting again at 0 where each begins (the layout of TRL's padding-free SFT
batches). Attention stays within each sequence: flash attention and ``sdpa_packed``
(``llama2rlhf.runtime.speedups.packed_attention``) read the boundaries from the position ids, and so do
transformers' masks for the other implementations.

A sequence classifier pools its head's output at the last token of each *row*, which here
is the last token of the last sequence only. Its head is a per-token linear map, though
(transformers' ``*ForSequenceClassification`` for decoders run it on every position
before pooling), so the reward of each sequence is the head's output at that sequence's
last token: :func:`packed_rewards` reads the head's output with a forward hook and picks
those positions. The rewards, and their gradients, are those of the padded batch.
"""

from __future__ import annotations

from typing import Any


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """One padding-free row: ``input_ids`` and ``position_ids`` of shape ``(1, tokens)``,
    ``sequence_ends`` (where each sequence's last token lies: the chosen of every pair,
    then the rejected), and ``margin`` when the examples carry one."""
    import torch

    sequences = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
    lengths = torch.tensor([len(s) for s in sequences])
    if int(lengths.min()) < 1:
        raise ValueError("a preference pair has an empty chosen or rejected sequence")
    out = {
        "input_ids": torch.tensor([t for s in sequences for t in s]).unsqueeze(0),
        "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()]).unsqueeze(0),
        "sequence_ends": lengths.cumsum(0) - 1,
    }
    if "margin" in examples[0]:
        out["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float)
    return out


def score_head(model: Any) -> Any:
    """The classifier's head (``score``: Llama, Mistral, Qwen, Gemma, GPT-2 ...), through
    DDP and PEFT wrappers; None for a model whose head is elsewhere."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        head = getattr(model, "score", None)
        if head is not None and hasattr(head, "register_forward_hook"):
            return head
        model = getattr(model, "module", None) or (model.get_base_model() if hasattr(model, "get_base_model") else model)
    return None


def packed_rewards(model: Any, inputs: dict[str, Any], sequence_ends: Any) -> Any:
    """The reward of every sequence of a :func:`collate` row: the head's output at each
    sequence's last token, shape ``(sequences,)``."""
    head = score_head(model)
    if head is None:
        raise ValueError(f"reward_model.padding_free: {type(model).__name__} has no `score` head to read per token; "
                         "set reward_model.padding_free=false")
    seen: list[Any] = []
    handle = head.register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        model(**inputs, use_cache=False)
    finally:
        handle.remove()
    if len(seen) != 1 or seen[0].dim() != 3:
        raise RuntimeError(f"reward_model.padding_free: the `score` head of {type(model).__name__} did not run once "
                           "per token")
    return seen[0][0, sequence_ends.to(seen[0].device), 0]
