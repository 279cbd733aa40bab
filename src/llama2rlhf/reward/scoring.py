"""Scoring conversations with a reward model, batched by length, sharing prompt prefixes;
and the one way a conversation too long for a reward model is cut, in training and scoring."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from llama2rlhf.runtime.speedups.kv_cache import cache_kwarg
from llama2rlhf.sampling import Messages


@dataclass
class Cuts:
    """What :func:`fit_conversation` cut from the conversations it was given, counted."""

    conversations: int = 0  # conversations that were cut at all
    turns_dropped: int = 0  # whole earlier turns (a user message and the reply to it)
    prompts_cut: int = 0  # conversations whose last user message lost its beginning
    replies_cut: int = 0  # conversations whose reply alone did not fit and lost its end

    def add(self, other: "Cuts") -> None:
        for name in ("conversations", "turns_dropped", "prompts_cut", "replies_cut"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {"conversations": self.conversations, "turns_dropped": self.turns_dropped,
                "prompts_cut": self.prompts_cut, "replies_cut": self.replies_cut}


def fit_conversation(tokenizer, messages: Messages, max_length: int, cuts: Cuts) -> list[int]:
    """The chat-template token ids of ``messages`` (a prompt and the reply being judged),
    cut to at most ``max_length`` tokens the one way every reward path cuts (training and
    scoring alike), noted in ``cuts``:

    1. whole earlier turns go, oldest first, keeping a system message and the last user
       message with the reply;
    2. then the last user message loses its beginning (the words nearest the reply stay);
    3. only a reply that does not fit on its own loses its end (with the system message
       and the user message gone).
    """
    def ids(msgs: Messages) -> list[int]:
        return list(tokenizer.apply_chat_template(list(msgs), tokenize=True, return_dict=True)["input_ids"])

    out = ids(messages)
    if len(out) <= max_length:
        return out
    cuts.conversations += 1
    head = list(messages[:1]) if messages and messages[0]["role"] == "system" else []
    body = list(messages[len(head):])
    while len(body) > 2:
        body = body[2:]  # the oldest user message and the reply to it
        cuts.turns_dropped += 1
        out = ids(head + body)
        if len(out) <= max_length:
            return out
    *prompt, reply = body
    if prompt:
        # keep as many of the last user message's final tokens as fit, by bisection
        words = tokenizer(prompt[-1]["content"], add_special_tokens=False)["input_ids"]

        def with_tail(n: int) -> list[int]:
            text = tokenizer.decode(words[len(words) - n:]) if n else ""
            return ids(head + [{"role": "user", "content": text}, reply])

        low, high = 0, len(words)
        while low < high:
            mid = (low + high + 1) // 2
            if len(with_tail(mid)) <= max_length:
                low = mid
            else:
                high = mid - 1
        out = with_tail(low)
        if len(out) <= max_length:
            cuts.prompts_cut += 1
            return out
    # the reply alone is too long: it keeps its beginning, as many tokens as fit
    cuts.prompts_cut += bool(prompt)
    cuts.replies_cut += 1
    return ids([{"role": "user", "content": ""}, reply])[:max_length]


def model_max_length(model_or_config, tokenizer, limit: int | None = None) -> int | None:
    """The most tokens a reward model can read: its positions (``max_position_embeddings``),
    the tokenizer's ``model_max_length`` where it sets one, and ``limit``; None if none is known."""
    config = getattr(model_or_config, "config", model_or_config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    bounds = [getattr(text, "max_position_embeddings", None), limit]
    if getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 10**9:
        bounds.append(tokenizer.model_max_length)
    bounds = [b for b in bounds if isinstance(b, int) and b > 0]
    return min(bounds) if bounds else None


@dataclass(frozen=True)
class TokenizedConversations:
    """Chat-template token ids of conversations, and which of them share a prompt.

    Built once and handed to every reward model that scores the same conversations (the
    helpfulness and the safety model), so the template is rendered and tokenized once."""

    ids: list[list[int]]
    by_prompt: list[list[int]]  # indices of the conversations with the same prompt
    cuts: Cuts = field(default_factory=Cuts)  # what fitting them to the model cut


def tokenize_conversations(tokenizer, conversations: Sequence[Messages],
                           max_length: int | None = None) -> TokenizedConversations:
    """Chat-template ids of ``conversations``, each cut to ``max_length`` tokens by
    :func:`fit_conversation` where longer."""
    # one batched call: same ids as one call per conversation, less per-call overhead
    ids = list(tokenizer.apply_chat_template([list(c) for c in conversations], tokenize=True,
                                             return_dict=True)["input_ids"]) if conversations else []
    cuts = Cuts()
    if max_length is not None:
        ids = [list(x) if len(x) <= max_length else fit_conversation(tokenizer, conversations[i], max_length, cuts)
               for i, x in enumerate(ids)]
    groups: dict[str, list[int]] = {}
    for i, conv in enumerate(conversations):
        groups.setdefault(json.dumps(list(conv)[:-1], sort_keys=True, default=str), []).append(i)
    return TokenizedConversations(ids, list(groups.values()), cuts)


def score_conversations(
    model, tokenizer, conversations: Sequence[Messages], batch_size: int = 64, desc: str | None = None,
    share_prefix: bool = True, tokenized: TokenizedConversations | None = None, max_length: int | None = None,
) -> list[float]:
    """The reward of each full conversation (prompt + reply), in input order.

    Conversations with the same prompt (every message but the last) are scored by running
    their common token prefix once with the KV cache and each reply on top of it
    (``share_prefix``); the scores equal the plain path's up to float rounding. That needs a
    decoder classifier whose forward takes a cache (``cache`` or ``past_key_values``) and,
    as transformers' ``*ForSequenceClassification`` do, pools the rightmost token of
    ``input_ids`` that is not the pad token. Other models, and prompts seen once, take the
    plain path: whole conversations, right-padded, in batches sorted by length.
    ``tokenized`` is :func:`tokenize_conversations` of ``conversations``, when the caller has it;
    else they are tokenized here, cut to what the model reads (:func:`model_max_length` with
    ``max_length``).
    """
    from tqdm.auto import tqdm

    tokenized = tokenized or tokenize_conversations(tokenizer, conversations,
                                                    model_max_length(model, tokenizer, max_length))
    ids = tokenized.ids
    scores = [0.0] * len(ids)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    cache_arg = _cache_kwarg(model, pad) if share_prefix and pad is not None else None

    # Rejection sampling (paper 3.2.3) scores K samples per prompt: sharing the prompt's pass
    # saves K - 1 of its K runs through the model.
    shared = []  # (prefix length, conversation indices)
    plain = [] if cache_arg else list(range(len(ids)))
    for members in tokenized.by_prompt if cache_arg else ():
        cut = _shared_prefix_len([ids[i] for i in members], pad) if len(members) > 1 else 0
        if cut > 0:
            shared.append((cut, members))
        else:
            plain.extend(members)

    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(ids), desc=desc or "scoring", disable=desc is None, leave=False) as bar:
            # up to batch_size prompts per prefix pass, similar lengths together (less left padding)
            shared.sort(key=lambda g: g[0])
            for start in range(0, len(shared), batch_size):
                window = shared[start : start + batch_size]
                for i, s in _score_shared(model, ids, window, pad, cache_arg, batch_size, device):
                    scores[i] = s
                    bar.update(1)
            order = sorted(plain, key=lambda i: len(ids[i]))
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                for i, s in zip(batch, _score_plain(model, [ids[i] for i in batch], pad, device), strict=True):
                    scores[i] = s
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return scores


def _score_plain(model, seqs: list[list[int]], pad: int, device) -> list[float]:
    import torch

    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        # right padding: the classifier reads the last non-pad token
        input_ids[row, : len(s)] = torch.tensor(s)
        attention[row, : len(s)] = 1
    with torch.inference_mode():
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    return logits[:, 0].float().tolist()


def _score_shared(model, ids: list[list[int]], groups: list[tuple[int, list[int]]], pad: int, cache_arg: str,
                  batch_size: int, device) -> Iterator[tuple[int, float]]:
    """(conversation index, score) for every member of ``groups`` ((prefix length, conversation indices))."""
    import torch
    from transformers import DynamicCache

    # prefix pass: one row per group, left-padded so that every reply starts right after the cache
    width = max(cut for cut, _ in groups)
    prefix = torch.full((len(groups), width), pad, dtype=torch.long)
    prefix_mask = torch.zeros((len(groups), width), dtype=torch.long)
    for row, (cut, members) in enumerate(groups):
        prefix[row, width - cut :] = torch.tensor(ids[members[0]][:cut])
        prefix_mask[row, width - cut :] = 1
    # positions count real tokens only, as in the right-padded plain path
    prefix_pos = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = model(input_ids=prefix.to(device), attention_mask=prefix_mask.to(device),
                    position_ids=prefix_pos.to(device), use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if not isinstance(cache, DynamicCache):  # no cache after all, or one we cannot take rows of
        for _, members in groups:
            for start in range(0, len(members), batch_size):
                part = members[start : start + batch_size]
                yield from zip(part, _score_plain(model, [ids[i] for i in part], pad, device), strict=True)
        return

    # suffix passes: replies of all the window's prompts sorted by length (less right padding),
    # each on a copy of its prompt's cache rows
    rows = sorted(((len(ids[i]) - cut, g, i) for g, (cut, members) in enumerate(groups) for i in members))
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        owner = torch.tensor([g for _, g, _ in batch])
        swidth = max(n for n, _, _ in batch)
        suffix = torch.full((len(batch), swidth), pad, dtype=torch.long)
        suffix_mask = torch.zeros((len(batch), swidth), dtype=torch.long)
        for row, (n, g, i) in enumerate(batch):
            # right padding: the classifier's rightmost non-pad token is the plain path's (see _shared_prefix_len)
            suffix[row, :n] = torch.tensor(ids[i][groups[g][0] :])
            suffix_mask[row, :n] = 1
        # a fresh cache of just this batch's prompt rows: the suffix pass appends to it, and the
        # window's cache must stay the prompts alone for the next batch
        rows_of = owner.to(device)
        past = DynamicCache([(keys[rows_of], values[rows_of]) for keys, values, *_ in cache])
        mask = torch.cat([prefix_mask[owner], suffix_mask], dim=1)  # cached tokens, then new ones
        pos = torch.tensor([groups[g][0] for _, g, _ in batch])[:, None] + torch.arange(swidth)[None, :]
        with torch.inference_mode():
            logits = model(input_ids=suffix.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           use_cache=True, **{cache_arg: past}).logits
        yield from zip([i for _, _, i in batch], logits[:, 0].float().tolist(), strict=True)


def _shared_prefix_len(seqs: list[list[int]], pad: int) -> int:
    """Tokens all ``seqs`` share, as a prefix that leaves each one's scored token in its suffix.

    Common token ids rather than the tokenized prompt: a tokenizer may merge the prompt's
    last characters with the reply's first ones.
    """
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for j in range(n):
        if any(s[j] != first[j] for s in seqs):
            n = j
            break
    # the classifier reads each sequence's last non-pad token: it must be computed in the suffix pass
    for s in seqs:
        last = max((j for j in range(len(s)) if s[j] != pad), default=0)
        n = min(n, last)
    return n


def _cache_kwarg(model, pad: int) -> str | None:
    """kv_cache.cache_kwarg, for classifiers that skip exactly our padding to find the scored token."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    # the suffix pass relies on the classifier skipping our padding to find the scored token
    if getattr(text, "pad_token_id", None) != pad:
        return None
    return cache_kwarg(model)
