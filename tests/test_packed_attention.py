"""``sdpa_packed``: a padding-free row attends within each example, as each example alone would."""

from __future__ import annotations

import pytest
import torch

from llama2rlhf.runtime.speedups.packed_attention import NAME, example_lengths, use_for_padding_free


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


def test_examples_of_similar_length_share_a_padded_call():
    from llama2rlhf.runtime.speedups.packed_attention import Layout

    layout = Layout([5, 9, 1, 7], torch.device("cpu"))
    # longest first; 9 and 7 share a call (2 slots of padding for 16 tokens), 5 and 1 do not join it
    assert [g.shape for g in layout.gather] == [(2, 9), (1, 5), (1, 1)]
    assert layout.gather[0].tolist() == [list(range(5, 14)), [15, 16, 17, 18, 19, 20, 21, 21, 21]]
    assert layout.gather[1].tolist() == [[0, 1, 2, 3, 4]] and layout.gather[2].tolist() == [[14]]
    assert layout.valid[0].tolist() == list(range(9)) + list(range(9, 16))
    # the groups' real tokens, end to end, go back to their places in the row
    placed = torch.cat([g.flatten()[v] for g, v in zip(layout.gather, layout.valid, strict=True)])
    assert placed[layout.restore].tolist() == list(range(22))


def test_no_mask_is_built_for_a_packed_row_but_padded_batches_keep_theirs():
    from llama2rlhf.runtime.speedups.packed_attention import packed_mask

    assert packed_mask(batch_size=1, q_length=8, kv_length=8) is None
    padded = packed_mask(batch_size=2, q_length=4, kv_length=4, attention_mask=torch.tensor([[0, 1, 1, 1], [1] * 4]),
                         allow_is_causal_skip=False)
    assert padded.shape == (2, 1, 4, 4) and not padded[0, 0, :, 0].any()
    cached = packed_mask(batch_size=1, q_length=1, kv_length=5, q_offset=4, allow_is_causal_skip=False)
    assert cached is not None and cached.shape == (1, 1, 1, 5)


def test_sliding_window_models_keep_sdpa():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4)
    config._attn_implementation = "sdpa"
    model = MistralForCausalLM(config)
    assert not use_for_padding_free(model) and model.config._attn_implementation == "sdpa"
