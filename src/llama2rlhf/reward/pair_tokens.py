"""Token ids of conversational preference pairs, kept from one reward stage to the next.

Every round's reward stage trains on all comparisons collected so far (paper 3.2.2-3.2.3),
so TRL's RewardTrainer would render and tokenize the same conversations again in every
round. :func:`tokenize_pairs` gives TRL the ``chosen_ids``/``rejected_ids`` columns itself
(TRL then skips its own tokenization), with the ids TRL's would have (the chat template
over prompt + reply, as ``RewardTrainer`` does), and keeps each conversation's ids for
the rest of the process, keyed by a digest of its messages and the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from typing import Any, Sequence

from llama2rlhf.reward.scoring import Cuts, fit_conversation

# (tokenizer fingerprint, length limit) -> message digest -> (ids as int32, a third of a list's
# memory; what cutting it to the limit cut, or None)
_memo: dict[tuple, dict[bytes, tuple[array, Cuts | None]]] = {}


def _fingerprint(tokenizer: Any) -> tuple:
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else json.dumps(tokenizer.chat_template)
    return (tokenizer.name_or_path, len(tokenizer), hashlib.blake2b(template.encode(), digest_size=16).digest())


def tokenize_pairs(rows: Sequence[dict], tokenizer: Any, max_length: int | None = None,
                   cuts: Cuts | None = None) -> list[dict] | None:
    """``rows`` (TRL's preference format, conversational, with an optional ``margin``) as
    ``{"chosen_ids", "rejected_ids"[, "margin"]}``, each conversation cut to ``max_length``
    tokens the way scoring cuts it (``llama2rlhf.reward.scoring.fit_conversation``, noted in
    ``cuts``), so TRL drops none; None when some row is not conversational (TRL tokenizes
    those itself) or the tokenizer has no chat template."""
    from trl.data_utils import is_conversational

    if not rows or not tokenizer.chat_template or not all(is_conversational(r) for r in rows):
        return None
    memo = _memo.setdefault((*_fingerprint(tokenizer), max_length), {})
    cuts = cuts if cuts is not None else Cuts()

    def ids(messages: list) -> list[int]:
        key = hashlib.blake2b(json.dumps(messages, sort_keys=True).encode(), digest_size=16).digest()
        if key not in memo:
            full, cut = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"], None
            if max_length is not None and len(full) > max_length:
                cut = Cuts()
                full = fit_conversation(tokenizer, messages, max_length, cut)
            memo[key] = (array("i", full), cut)
        kept, cut = memo[key]
        if cut is not None:  # counted in every stage that trains on it
            cuts.add(cut)
        return kept.tolist()

    out = []
    for r in rows:
        prompt = list(r.get("prompt") or [])
        row = {"chosen_ids": ids(prompt + list(r["chosen"])), "rejected_ids": ids(prompt + list(r["rejected"]))}
        if "margin" in r:
            row["margin"] = r["margin"]
        out.append(row)
    return out
