"""``sdpa_packed``: PyTorch SDPA that attends within each example of a padding-free batch.

A padding-free batch (``sft.padding_free``) is one row: the examples laid end to end, the
position ids starting again at 0 where each begins. Flash attention reads the boundaries
and attends within each example. transformers' ``sdpa`` reads them too, but as a block-
diagonal mask over the whole row, so it computes every query against every key of the row
and masks most of it away: with n examples in a row, n times the scores it needs.
``sdpa_packed`` attends within each
example alone: examples of similar length share one causal SDPA call, padded on the right
to the longest of them (``Layout``), so there is little masked-out work and few calls.
Models with sliding-window or other non-full attention layers keep transformers' sdpa.

Any other batch (padded, left-padded for generation, with a KV cache) goes to transformers'
``sdpa`` unchanged, so a model can keep this implementation in every stage.
"""

from __future__ import annotations

from typing import Any

NAME = "sdpa_packed"


# the last position ids read and their layout: every layer of a forward passes the same
# tensor, and reading it (``tolist``) waits for the device, so it is read once per forward
_last: list[Any] = [None, None]

# a group of examples shares one SDPA call, padded to its longest, while the padded tokens
# stay under this fraction of its real ones: one call per example cost more in calls than it
# saved (64 examples of 20-60 tokens, a reward-model batch, took as long as the padded batch)
PADDING_PER_GROUP = 0.25


def example_lengths(position_ids: Any) -> list[int] | None:
    """The lengths of the examples laid end to end in a one-row batch, read from where the
    position ids start again at 0; None where the row holds a single example."""
    layout = _layout(position_ids)
    return layout.lengths if layout is not None else None


class Layout:
    """Where a packed row's examples go: groups of similar length, each padded on the right
    to its longest (``gather``: the row positions of each group's slots, a slot past its
    example's end repeating the example's last token), and the order in which the groups'
    real tokens, laid end to end, give the row back (``restore``)."""

    def __init__(self, lengths: list[int], device: Any):
        import torch

        self.lengths = lengths
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        groups: list[list[int]] = []
        for i in order:  # longest first, so a group's first example is its longest
            g = groups[-1] if groups else None
            if g and (len(g) + 1) * lengths[g[0]] <= (1 + PADDING_PER_GROUP) * (sum(lengths[j] for j in g) + lengths[i]):
                g.append(i)
            else:
                groups.append([i])
        self.gather, self.valid, placed = [], [], []
        for g in groups:
            width = lengths[g[0]]
            self.gather.append(torch.tensor([[starts[i] + min(j, lengths[i] - 1) for j in range(width)] for i in g],
                                            device=device))
            self.valid.append(torch.tensor([k * width + j for k, i in enumerate(g) for j in range(lengths[i])],
                                           device=device))
            placed += [starts[i] + j for i in g for j in range(lengths[i])]
        restore = [0] * len(placed)
        for k, pos in enumerate(placed):
            restore[pos] = k
        self.restore = torch.tensor(restore, device=device)


def _layout(position_ids: Any) -> Layout | None:
    if _last[0] is not position_ids:
        lengths = _example_lengths(position_ids)
        _last[:] = [position_ids, Layout(lengths, position_ids.device) if lengths else None]
    return _last[1]


def _example_lengths(position_ids: Any) -> list[int] | None:
    row = position_ids[0]
    starts = (row == 0).nonzero().flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    return [b - a for a, b in zip(starts, [*starts[1:], row.numel()], strict=True)]


def sdpa_packed_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                        scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    layout = None
    # one row, no cache (the keys are the queries' own tokens), position ids that restart
    if position_ids is not None and query.shape[0] == 1 and key.shape[2] == query.shape[2] == position_ids.shape[-1]:
        layout = _layout(position_ids)
    if layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    outputs = []
    # index_select rather than indexing with tensors: its backward (index_add) was a fifth of
    # the time of indexing's (index_put with accumulation) on the CPU
    for gather, valid in zip(layout.gather, layout.valid, strict=True):
        # (1, heads, row, dim) -> (examples, heads, width, dim); right padding needs no mask
        # under a causal one: a real query never sees the slots after its example's end
        q, k, v = (t[0].index_select(1, gather.flatten()).unflatten(1, gather.shape).transpose(0, 1)
                   for t in (query, key, value))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True,
                                                               scale=scaling, enable_gqa=gqa)
        # -> (examples * width, heads, dim), the real tokens only
        outputs.append(out.transpose(1, 2).flatten(0, 1).index_select(0, valid))
    # (batch, length, heads, dim), as transformers' sdpa returns it
    return torch.cat(outputs).index_select(0, layout.restore).unsqueeze(0), None


def packed_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                attention_mask: Any = None, **kwargs: Any) -> Any:
    """transformers' sdpa mask, but none for one unpadded row without a cache: a padding-free
    row, whose examples ``sdpa_packed_forward`` reads from the position ids (transformers
    would build a row-by-row block-diagonal mask that it never reads), or a single example,
    which SDPA's own causal mask serves."""
    from transformers.masking_utils import sdpa_mask

    if batch_size == 1 and attention_mask is None and q_offset == kv_offset == 0 and q_length == kv_length:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Make ``sdpa_packed`` an attention implementation transformers accepts (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(NAME, sdpa_packed_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, packed_mask)
    return NAME


def use_for_padding_free(model: Any) -> bool:
    """Switch a model that runs transformers' sdpa to ``sdpa_packed``; True if it did.
    Flash attention and the other implementations already attend within each example."""
    from llama2rlhf.runtime.speedups.kv_cache import full_attention_only

    # a sliding window (or any other layer type) is a mask of its own that the per-example
    # calls would not apply
    if getattr(model.config, "_attn_implementation", None) != "sdpa" or not full_attention_only(model.config):
        return False
    register()
    model.set_attn_implementation(NAME)
    return True
