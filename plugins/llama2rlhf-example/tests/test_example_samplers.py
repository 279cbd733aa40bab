"""``sampler=example_distinct``: repeated samples redrawn, n per prompt kept, calls logged."""

from __future__ import annotations

import json

import pytest

from llama2rlhf.sampling import Sample
from llama2rlhf_example.samplers import DistinctSampler, make_distinct_sampler, replace_duplicates

PROMPTS = [[{"role": "user", "content": "first"}], [{"role": "user", "content": "second"}]]


def s(text, n_tokens=2, finished=True):
    return Sample(text, n_tokens, finished)


class Scripted:
    """A sampler that hands out prepared answers, one list per call, and records the calls."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def sample(self, prompts, n, temperature, max_new_tokens, desc=None, seeds=None):
        self.calls.append((len(prompts), n, temperature, desc))
        return self.answers.pop(0)


def texts(out):
    return [[x.text for x in ss] for ss in out]


def test_replace_duplicates_keeps_length_and_order():
    got = replace_duplicates([s("a"), s("a"), s("b"), s("a")], [s("b"), s("c"), s("a"), s("d")])
    assert [x.text for x in got] == ["a", "c", "b", "d"]
    # a pool with nothing new leaves the repeats in place: still four samples
    assert [x.text for x in replace_duplicates([s("a"), s("a")], [s("a")])] == ["a", "a"]


def test_only_the_prompts_with_repeats_are_sampled_again(tmp_path):
    inner = Scripted([[s("a"), s("a"), s("b")], [s("x"), s("y"), s("z")]],
                     [[s("a", 5), s("c", 7, False), s("b")]])
    sampler = DistinctSampler(inner, redraws=2, log_path=str(tmp_path / "logs" / "calls.jsonl"))
    out = sampler.sample(PROMPTS, 3, 1.0, 8, desc="rs")
    assert texts(out) == [["a", "c", "b"], ["x", "y", "z"]]
    assert out[0][1] == Sample("c", 7, False)  # the redrawn sample keeps its own token count
    # the second pass sampled prompt 0 only; a third was not needed
    assert inner.calls == [(2, 3, 1.0, "rs"), (1, 3, 1.0, "rs (redraw 1)")]
    [line] = [json.loads(x) for x in (tmp_path / "logs" / "calls.jsonl").read_text().splitlines()]
    assert {k: line[k] for k in ("prompts", "n", "samples", "tokens", "finished", "distinct_before",
                                 "distinct_after", "prompts_redrawn")} == {
        "prompts": 2, "n": 3, "samples": 6, "tokens": 2 + 7 + 2 + 6, "finished": 5, "distinct_before": 5,
        "distinct_after": 6, "prompts_redrawn": 1}


def test_redraws_stop_after_the_limit():
    same = [[s("a"), s("a")]]
    inner = Scripted(same, same, same, same)
    out = DistinctSampler(inner, redraws=2).sample(PROMPTS[:1], 2, 0.7, 4)
    assert texts(out) == [["a", "a"]] and len(inner.calls) == 3


def test_greedy_is_never_redrawn():
    inner = Scripted([[s("a")], [s("a")]])
    DistinctSampler(inner, redraws=3).sample(PROMPTS, 1, 0.0, 4)
    assert len(inner.calls) == 1


def test_negative_redraws_are_refused():
    with pytest.raises(ValueError, match="sampler.redraws must be >= 0, got -1"):
        DistinctSampler(Scripted(), redraws=-1)


def test_factory_wraps_the_builtin_hf_sampler(fresh_plugins, toy_tokenizer_dir, tmp_path):
    """Through the core, as the pipeline builds it: ``load_sampler(cfg, policy folder)`` calls
    ``factory(model_path, cfg, **options)`` with the ``sampler`` node's keys as options."""
    import torch
    from omegaconf import OmegaConf

    from llama2rlhf.runtime.models import load_tokenizer
    from llama2rlhf.sampling import load_sampler
    from llama2rlhf.sampling.hf import HFSampler
    from llama2rlhf.toyworld.model import build_tiny_llama

    tok = load_tokenizer(str(toy_tokenizer_dir))
    model = build_tiny_llama(tok, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
    policy = tmp_path / "policy"
    model.save_pretrained(policy)
    tok.save_pretrained(policy)
    cfg = OmegaConf.create({"device": "cpu", "model": {"dtype": "float32", "trust_remote_code": False},
                            "sampler": {"name": "example_distinct", "batch_tokens": 999, "redraws": 1,
                                        "log_path": str(tmp_path / "calls.jsonl")}})
    assert fresh_plugins.selected("samplers", cfg).obj is make_distinct_sampler
    sampler = load_sampler(cfg, str(policy))
    # a third-party sampler comes back wrapped, so that its failures name this plugin
    assert isinstance(sampler.__wrapped__, DistinctSampler)
    assert isinstance(sampler.inner, HFSampler) and sampler.inner.batch_tokens == 999
    assert sampler.inner.model.name_or_path == str(policy)
    sampler.inner.show_progress = False
    torch.manual_seed(0)
    out = sampler.sample(PROMPTS, 4, 1.0, 6)
    assert [len(ss) for ss in out] == [4, 4]
    assert all(1 <= x.n_tokens <= 6 for ss in out for x in ss)
    line = json.loads((tmp_path / "calls.jsonl").read_text())
    assert line["samples"] == 8 and line["distinct_after"] == sum(len({x.text for x in ss}) for ss in out)
    assert line["desc"] == "sampling"  # no desc given: the default label
