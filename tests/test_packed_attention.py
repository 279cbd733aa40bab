"""``sdpa_packed``: a padding-free row attends within each example, as each example alone would."""

from __future__ import annotations

import pytest
import torch

from llama2rlhf.packed_attention import NAME, example_lengths, use_for_padding_free


def _llama(kv_heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval()


def test_example_lengths_read_from_restarting_position_ids():
    assert example_lengths(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])) == [3, 2, 4]
    assert example_lengths(torch.tensor([[0, 1, 2, 3]])) is None  # one example: nothing to split


@pytest.mark.parametrize("kv_heads", [4, 2])  # multi-head and grouped-query attention
def test_packed_row_equals_each_example_alone(kv_heads):
    model = _llama(kv_heads)
    assert use_for_padding_free(model) and model.config._attn_implementation == NAME
    lengths = [5, 9, 1, 7]
    examples = [torch.randint(0, 64, (1, n)) for n in lengths]
    ids = torch.cat(examples, dim=1)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    alone = torch.cat([model(input_ids=x).logits for x in examples], dim=1)
    assert torch.allclose(packed, alone, atol=1e-5)
    # and the same gradients as transformers' sdpa with its block-diagonal mask (which it
    # builds only without a cache, as in training)
    model.set_attn_implementation("sdpa")
    reference = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    grads = []
    for logits in (reference, None):
        if logits is None:
            model.set_attn_implementation(NAME)
            logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        model.zero_grad()
        logits.square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


def test_padded_batches_and_cached_generation_go_to_sdpa_unchanged():
    model = _llama(4)
    ids = torch.randint(3, 64, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding
    expected = model(input_ids=ids, attention_mask=mask).logits
    out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    use_for_padding_free(model)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, expected)
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False), out)


def test_other_attention_implementations_are_left_alone():
    model = _llama(4)
    model.set_attn_implementation("eager")
    assert not use_for_padding_free(model) and model.config._attn_implementation == "eager"
