"""The ``hf`` sampler: K samples per prompt, in prompt order, under mixed prompt lengths."""

from __future__ import annotations

import pytest
import torch

from llama2rlhf import plugins

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Act as Newton. You love chess."},
     {"role": "user", "content": "How many words are in: cat dog sun moon tree bird fish?"}],
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "user", "content": "Reverse the list: red, cat, sun."}],
]


@pytest.fixture()
def sampler(tokenizer, tiny_llama):
    factory = plugins.get("samplers", "hf").obj
    s = factory(tiny_llama, tokenizer)
    s.show_progress = False
    return s


def _greedy_alone(model, tokenizer, messages, max_new_tokens):
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    out = model.generate(torch.tensor([ids["input_ids"]]), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    seq = out[0, len(ids["input_ids"]):].tolist()
    if tokenizer.eos_token_id in seq:
        seq = seq[: seq.index(tokenizer.eos_token_id) + 1]
    return tokenizer.decode(seq, skip_special_tokens=True).strip(), len(seq)


def test_batched_greedy_matches_one_prompt_at_a_time(sampler, tokenizer, tiny_llama):
    sampler.batch_tokens = 3 * 60  # forces several batches of mixed lengths
    got = sampler.sample(PROMPTS, n=1, temperature=0.0, max_new_tokens=10)
    assert len(got) == len(PROMPTS)
    for messages, samples in zip(PROMPTS, got, strict=True):
        text, n_tokens = _greedy_alone(tiny_llama, tokenizer, messages, 10)
        assert samples[0].text == text
        assert samples[0].n_tokens == n_tokens


def test_k_samples_per_prompt_and_token_counts(sampler, tokenizer):
    torch.manual_seed(0)
    got = sampler.sample(PROMPTS, n=5, temperature=1.5, max_new_tokens=8)
    assert [len(s) for s in got] == [5] * len(PROMPTS)
    for samples in got:
        for s in samples:
            assert 1 <= s.n_tokens <= 8
            assert s.finished or s.n_tokens == 8  # unfinished only when the limit cut it
        assert len({s.text for s in samples}) > 1  # sampling, not five copies


def test_batches_respect_the_token_budget(sampler):
    sampler.batch_tokens = 400
    lengths = [5, 50, 7, 30, 12, 60, 3]
    batches = sampler.batches(lengths, n=2, max_new_tokens=20)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b) + 20
        assert len(b) == 1 or len(b) * 2 * width <= 400
    # shortest first, so neighbours in a batch have similar lengths
    flat = [i for b in batches for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths)


def test_greedy_with_n_above_one_is_refused(sampler):
    with pytest.raises(ValueError, match="greedy"):
        sampler.sample(PROMPTS[:1], n=2, temperature=0.0, max_new_tokens=4)
