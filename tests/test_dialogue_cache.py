"""Dialogues sampled turn by turn keep their keys and values (``HFSampler.keep_prefixes``):
each turn prefills only its new tokens, and the replies are those of a full prefill."""

from __future__ import annotations

import pytest
import torch

from llama2rlhf.gatt.dialogue import converse, fit_dialogue
from llama2rlhf.runtime.speedups.dialogue_cache import Batch, Prefix, PrefixStore, gather
from llama2rlhf.sampling.hf import HFSampler


@pytest.fixture()
def peaked_llama(tokenizer):
    """Sharp next-token distributions that depend on the prompt (a plain random tiny Llama
    answers every prompt alike, and would hide a misplaced cache row)."""
    from llama2rlhf.toyworld.model import build_tiny_llama

    model = build_tiny_llama(tokenizer, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model.eval()


OPENINGS = [[{"role": "system", "content": "Always answer in capitals."}], [],
            [{"role": "system", "content": "Always answer in lower case."}]]
TURNS = [["What is 3 + 4?", "Next letter after 'b'?", "How many words are in: cat dog sun?", "Capital of Kovia?"],
         ["Hi", "Reverse the list: red, cat, sun.", "What is 2 + 2?"],
         ["Capital of Falor?", "What is 9 + 1?", "Next letter after 'q'?", "Hi", "What is 1 + 1?"]]


def _forwards(model, log):
    return model.register_forward_pre_hook(lambda m, args, kwargs: log.append(tuple(kwargs["input_ids"].shape)),
                                           with_kwargs=True)


@pytest.mark.parametrize("max_length", [4096, 120])  # 120: later turns lose middle turns, so prefixes stop matching
def test_dialogue_replies_equal_a_full_prefill_at_every_turn(tokenizer, peaked_llama, max_length):
    def n_tokens(messages):
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"])

    def fit(messages):
        return fit_dialogue(messages, n_tokens, max_length)

    replies, shapes = {}, {}
    for mb in (0, 64):
        sampler = HFSampler(peaked_llama, tokenizer, show_progress=False, dialogue_cache_mb=mb)
        shapes[mb] = []
        hook = _forwards(peaked_llama, shapes[mb])
        try:
            replies[mb] = converse(sampler, OPENINGS, TURNS, 0.0, 8, fit)
        finally:
            hook.remove()
    assert replies[64] == replies[0]
    assert [len(r) for r in replies[0]] == [len(t) for t in TURNS]
    assert len({r for rs in replies[0] for r in rs}) > 3  # the replies differ with the prompt
    # the prefill of each turn (decoding runs one token at a time)
    prefills = {mb: [s[1] for s in shapes[mb] if s[1] > 1] for mb in shapes}
    assert len(prefills[64]) == len(prefills[0]) == max(len(t) for t in TURNS)
    assert prefills[64][0] == prefills[0][0]  # turn 1: nothing stored yet
    if max_length == 4096:
        # from turn 2 on, only the last reply and the new user turn run, not the dialogue again:
        # what a turn prefills stops growing with the dialogue
        assert all(k < p for k, p in zip(prefills[64][1:], prefills[0][1:], strict=True))
        assert prefills[64][-1] < prefills[0][-1] / 4
    else:
        assert sum(prefills[64]) < sum(prefills[0])


def test_stored_prefix_gives_the_first_token_logits_of_a_full_prefill(tokenizer, peaked_llama):
    sampler = HFSampler(peaked_llama, tokenizer, show_progress=False)
    first = [[{"role": "user", "content": "What is 3 + 4?"}], [{"role": "user", "content": "Hi"}]]
    later = [first[0] + [{"role": "assistant", "content": "7"}, {"role": "user", "content": "Capital of Kovia?"}],
             first[1] + [{"role": "assistant", "content": "Hello there, how can I help?"},
                         {"role": "user", "content": "What is 2 + 2?"}],
             [{"role": "user", "content": "Next letter after 'b'?"}]]  # nothing stored for this one
    kwargs = dict(max_new_tokens=1, do_sample=False, temperature=None, top_p=None, top_k=None, output_logits=True,
                  return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id, use_cache=True)
    ids = sampler.encode(later)
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x):] = torch.tensor(x)
        attention[row, width - len(x):] = 1
    with torch.inference_mode():
        full = sampler.generate(input_ids, attention, 2, **kwargs).logits[0]
        with sampler.keep_prefixes() as store:
            sampler.sample(first, n=1, temperature=0.0, max_new_tokens=3)
            assert len(store) == 2
            out, new_at = sampler._generate_from_store(ids, 2, **kwargs)
            assert (store.hits, store.misses) == (2, 1 + len(first))  # the first call found nothing
            assert store.hit_tokens == sum(len(x) - 1 for x in sampler.encode(first))
    assert new_at == out.sequences.shape[1] - 1
    torch.testing.assert_close(out.logits[0], full, atol=1e-4, rtol=0)
    assert not torch.allclose(full[0], full[2], atol=1e-2)  # the prompts differ, so a swapped row would show


def test_a_prompt_drawn_again_prefills_nothing(tokenizer, peaked_llama):
    """GAtt's second draw: the same prompts, more samples, only decoding steps."""
    sampler = HFSampler(peaked_llama, tokenizer, show_progress=False)
    prompts = [[{"role": "user", "content": t}] for t in TURNS[0]]
    with sampler.keep_prefixes():
        sampler.sample(prompts, n=2, temperature=1.0, max_new_tokens=4)
        shapes = []
        hook = _forwards(peaked_llama, shapes)
        try:
            again = sampler.sample(prompts, n=3, temperature=1.0, max_new_tokens=4)
        finally:
            hook.remove()
    assert [len(s) for s in again] == [3] * len(prompts)
    assert shapes and all(s == (len(prompts) * 3, 1) for s in shapes)


def _batch(rows: int, tokens: int) -> Batch:
    return Batch([torch.arange(rows * 2 * tokens * 4.0).view(rows, 2, tokens, 4)], [torch.zeros(rows, 2, tokens, 4)])


def test_store_finds_the_longest_prefix_keeps_to_its_budget_and_forgets_what_two_calls_left_unused():
    first = _batch(2, 6)
    store = PrefixStore(budget_bytes=2 * first.nbytes)  # two batches of 2 rows x 6 slots
    assert store.put(first, [([1, 2], 0, ((4, 6),)), ([1, 2, 3, 4], 1, ((0, 1), (3, 6)))])
    assert store.put(_batch(2, 6), [([7, 8], 0, ((4, 6),))])
    assert store.nbytes == 2 * first.nbytes
    assert not store.put(_batch(1, 1), [([9], 0, ((0, 1),))])  # past the budget: not stored
    assert [9] not in store
    assert store.longest([1, 2, 3, 4, 5])[0] == 4
    assert store.longest([1, 2, 3, 9])[0] == 2
    assert store.longest([1, 2, 3, 4])[0] == 4  # a whole prompt drawn again
    assert store.longest([5, 1, 2]) == (0, None)
    store.end_call()  # everything was stored or read in this call
    assert store.longest([7, 8, 0])[0] == 2
    store.end_call()  # [7, 8] read; [1, 2] and [1, 2, 3, 4] last used a call before
    assert len(store) == 3
    store.end_call()
    assert len(store) == 1 and store.nbytes == first.nbytes  # the first batch went with its last entry
    store.end_call()
    assert len(store) == 0 and store.nbytes == 0


def test_gather_right_aligns_each_rows_spans_in_one_batch():
    b = _batch(2, 6)
    entry = Prefix(b, 1, ((0, 1), (3, 6)))  # slots 0 and 3-5 of row 1
    keys, values = gather([(4, entry), (0, None), (2, Prefix(b, 0, ((4, 6),)))], width=5)
    assert keys[0].shape == values[0].shape == (3, 2, 5, 4)
    assert torch.equal(keys[0][0, :, 1:], b.keys[0][1][:, [0, 3, 4, 5]])
    assert not keys[0][0, :, :1].any() and not keys[0][1].any()
    assert torch.equal(keys[0][2, :, 3:], b.keys[0][0][:, 4:6])
    assert gather([(0, None)], width=3) is None
