"""``sampler=vllm`` without vLLM: config, prompt rendering, output alignment, seeds, the
engine's lifecycle and environment, and the weight push's two ends, with a fake
``vllm.LLM`` handed in where the real one would be. ``test_vllm_engine.py`` runs the real one."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from llama2rlhf.sampling import Sample
from llama2rlhf_vllm import parallel as vp
from llama2rlhf_vllm import sampler as vs
from llama2rlhf_vllm import weights as vw

PROMPTS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Reverse the list: red, cat, sun."}],
]


@pytest.fixture(autouse=True)
def no_engine_left_open():
    yield
    if vs.Engine.current is not None:
        vs.Engine.current.close()


class FakeParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeLLM:
    """Stands in for ``vllm.LLM``: answers each request with ``n`` scripted completions.

    Completion j of a prompt is ``"reply {j} of {prompt length}"``; even j end with the EOS
    token in ``token_ids`` (as vLLM reports a stop at EOS), odd j run to ``max_tokens``
    (``finish_reason="length"``). Completions come back in reverse ``index`` order, which
    the sampler must undo.
    """

    made: list["FakeLLM"] = []
    reloads: list[dict] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.environ = dict(os.environ)  # what the engine's processes would start with
        self.requests: list[tuple[list[int], dict]] = []
        self.shutdowns = 0
        self.rpcs: list[tuple[str, tuple]] = []
        self.prefix_cache_resets = 0
        self.llm_engine = SimpleNamespace(shutdown=self._shutdown)
        FakeLLM.made.append(self)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        """vLLM's worker, with the plugin's extension mixed in: reload_weights records."""
        self.rpcs.append((method, args))
        worker = type("Worker", (vw.WeightReceiver,), {})()
        worker.reload_weights = lambda weights_iterator: self.reloads.append(
            {name: t.clone() for name, t in weights_iterator})
        return [getattr(worker, method)(*args, **(kwargs or {}))]

    def reset_prefix_cache(self):
        self.prefix_cache_resets += 1
        return True

    def _shutdown(self):
        self.shutdowns += 1

    def generate(self, prompts, params, use_tqdm=True):
        tok = self.tokenizer
        outputs = []
        for prompt, p in zip(prompts, params, strict=True):
            ids, kw = prompt["prompt_token_ids"], p.kwargs
            self.requests.append((ids, kw))
            completions = []
            for j in range(kw["n"]):
                text_ids = tok.encode(f"reply {j} of {len(ids)}", add_special_tokens=False)
                if j % 2 == 0:
                    completions.append(SimpleNamespace(index=j, token_ids=text_ids + [tok.eos_token_id],
                                                       finish_reason="stop", stop_reason=None))
                else:
                    filler = (text_ids * kw["max_tokens"])[: kw["max_tokens"]]
                    completions.append(SimpleNamespace(index=j, token_ids=filler, finish_reason="length",
                                                       stop_reason=None))
            outputs.append(SimpleNamespace(prompt_token_ids=list(ids), outputs=completions[::-1]))
        return outputs


@pytest.fixture
def fake_llm(toy_tokenizer, monkeypatch):
    FakeLLM.made = []
    FakeLLM.reloads = []
    FakeLLM.tokenizer = toy_tokenizer
    # one process on a 4-core machine with 16 GiB, unless a test says otherwise
    monkeypatch.setattr(vp, "this_machine", lambda: (0, [0, 1, 2, 3], 16 * vp.GiB))
    for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE",
                 "VLLM_PORT", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_WORKER_MULTIPROC_METHOD"):
        monkeypatch.delenv(name, raising=False)
    return FakeLLM


def make(tokenizer, **options):
    return vs.VLLMSampler("/runs/r/round_1/policy", tokenizer, vs.VLLMSamplerConfig(**options),
                          llm_class=FakeLLM, sampling_params_class=FakeParams)


# --- config -----------------------------------------------------------------------------


def test_config_node_is_a_typed_sampler_config_selected_with_sampler_vllm(vllm_plugins):
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException

    from llama2rlhf.config import SamplerConfig, store_configs

    assert issubclass(vs.VLLMSamplerConfig, SamplerConfig)
    store_configs()
    with initialize_config_module(config_module="llama2rlhf.config.conf", version_base="1.3"):
        cfg = compose("config", overrides=["sampler=vllm", "sampler.gpu_memory_utilization=0.7",
                                           "sampler.tensor_parallel_size=2", "sampler.dtype=bfloat16",
                                           "+sampler.engine_args.max_num_seqs=64"])
        assert dict(cfg.sampler) == {"name": "vllm", "batch_tokens": 65536, "dtype": "bfloat16",
                                     "gpu_memory_utilization": 0.7, "tensor_parallel_size": 2,
                                     "max_model_len": None, "enforce_eager": False,
                                     "engine_args": {"max_num_seqs": 64}}
        with pytest.raises(ConfigCompositionException):
            compose("config", overrides=["sampler=vllm", "sampler.tensor_parallel_size=two"])
    assert vllm_plugins.get("samplers", "vllm").obj is vs.make_vllm_sampler


def test_engine_kwargs_from_the_config():
    options = vs.VLLMSamplerConfig(dtype="float16", gpu_memory_utilization=0.3, tensor_parallel_size=2,
                                   enforce_eager=True, engine_args={"swap_space": 0})
    assert vs.engine_kwargs("/p", options, trust_remote_code=True) == {
        "model": "/p", "dtype": "float16", "gpu_memory_utilization": 0.3, "tensor_parallel_size": 2,
        "enforce_eager": True, "trust_remote_code": True, "swap_space": 0,
        # no sampling defaults from the folder; the push's receiving end
        "generation_config": "vllm",
        "worker_extension_cls": "llama2rlhf_vllm.weights.WeightReceiver"}
    assert vs.engine_kwargs("/p", vs.VLLMSamplerConfig(max_model_len=512))["max_model_len"] == 512
    assert "max_model_len" not in vs.engine_kwargs("/p", vs.VLLMSamplerConfig())


@pytest.mark.parametrize(("options", "message"), [
    ({"gpu_memory_utilization": 0.0}, r"sampler.gpu_memory_utilization must be within \(0, 1\], got 0.0"),
    ({"gpu_memory_utilization": 1.5}, r"sampler.gpu_memory_utilization must be within \(0, 1\], got 1.5"),
    ({"tensor_parallel_size": 0}, "sampler.tensor_parallel_size must be >= 1, got 0"),
    ({"engine_args": {"dtype": "half", "seed": 3}}, "sampler.engine_args sets dtype, which the sampler sets itself: "
                                                    "use sampler.dtype instead"),
    ({"engine_args": {"model": "/elsewhere"}}, "sets model, which the sampler sets itself: use the policy path"),
    ({"engine_args": {"generation_config": "auto"}}, "sets generation_config, which the sampler sets itself$"),
    ({"engine_args": {"worker_extension_cls": "x.Y"}}, "sets worker_extension_cls, which the sampler sets itself$"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        vs.engine_kwargs("/p", vs.VLLMSamplerConfig(**options))


# --- prompts ----------------------------------------------------------------------------


def test_prompts_render_as_the_hf_sampler_renders_them(toy_tokenizer):
    from llama2rlhf.sampling.hf import HFSampler

    hf = HFSampler.encode(SimpleNamespace(tokenizer=toy_tokenizer), PROMPTS)
    assert vs.encode(toy_tokenizer, PROMPTS) == hf
    assert toy_tokenizer.decode(hf[1]).startswith("<s>[INST] <<SYS>>\nAnswer in French.\n<</SYS>>")


def test_a_tokenizer_without_a_chat_template_gets_llama2s(toy_tokenizer):
    import copy

    from llama2rlhf.data.templates import llama2_chat_template

    bare = copy.deepcopy(toy_tokenizer)
    bare.chat_template = None
    vs.ensure_chat_template(bare)
    assert bare.chat_template == llama2_chat_template()
    assert vs.encode(bare, PROMPTS) == vs.encode(toy_tokenizer, PROMPTS)  # the toy tokenizer ships Llama 2's


# --- outputs ----------------------------------------------------------------------------


def test_k_samples_per_prompt_in_prompt_order_with_hf_token_counts(fake_llm, toy_tokenizer):
    import torch

    sampler = make(toy_tokenizer)
    torch.manual_seed(7)
    got = sampler.sample(PROMPTS, n=4, temperature=1.2, max_new_tokens=6)
    [llm] = fake_llm.made
    ids = vs.encode(toy_tokenizer, PROMPTS)
    # one request per prompt, in order, as token ids, with the sampling parameters
    assert [r[0] for r in llm.requests] == ids
    eos = toy_tokenizer.eos_token_id
    for _, kw in llm.requests:
        assert {k: kw[k] for k in ("n", "temperature", "max_tokens", "stop_token_ids", "detokenize")} == {
            "n": 4, "temperature": 1.2, "max_tokens": 6, "stop_token_ids": [eos], "detokenize": False}
    assert [len(s) for s in got] == [4, 4, 4]
    for prompt_ids, samples in zip(ids, got, strict=True):
        for j, s in enumerate(samples):  # back in index order
            reply = toy_tokenizer.encode(f"reply {j} of {len(prompt_ids)}", add_special_tokens=False)
            if j % 2 == 0:  # stopped at EOS: counted with it, as hf counts
                assert s == Sample(f"reply {j} of {len(prompt_ids)}", len(reply) + 1, True)
            else:  # cut at max_new_tokens
                assert s.n_tokens == 6 and s.finished is False
                assert s.text == toy_tokenizer.decode((reply * 6)[:6], skip_special_tokens=True).strip()


def test_seeds_differ_per_request_and_follow_torchs_generator(fake_llm, toy_tokenizer):
    import torch

    sampler = make(toy_tokenizer)
    torch.manual_seed(3)
    sampler.sample(PROMPTS, 2, 1.0, 4)
    torch.manual_seed(3)
    sampler.sample(PROMPTS, 2, 1.0, 4)
    sampler.sample(PROMPTS, 2, 1.0, 4)
    seeds = [kw["seed"] for _, kw in fake_llm.made[0].requests]
    assert len(set(seeds[:3])) == 3  # one per prompt
    assert seeds[:3] == seeds[3:6]  # the stage's torch.manual_seed fixes them
    assert seeds[6:] != seeds[:3]  # the next call draws new ones


def test_a_prompts_request_seed_is_its_own_seeds_whatever_the_other_prompts(fake_llm, toy_tokenizer):
    import torch

    sampler = make(toy_tokenizer)
    torch.manual_seed(0)
    sampler.sample(PROMPTS, 3, 1.0, 4, seeds=[70, 71, 72])
    torch.manual_seed(1)  # torch's generator plays no part
    sampler.sample(PROMPTS[1:2], 3, 1.0, 4, seeds=[71])
    sampler.sample(PROMPTS[::-1], 3, 1.0, 4, seeds=[72, 71, 70])
    requests = fake_llm.made[0].requests
    by_prompt = {}
    for ids, kw in requests:
        by_prompt.setdefault(tuple(ids), set()).add(kw["seed"])
    assert all(len(seeds) == 1 for seeds in by_prompt.values())  # the same seed in all three calls
    assert [kw["seed"] for _, kw in requests[:3]] == [vs.spread(70), vs.spread(71), vs.spread(72)]


@pytest.mark.parametrize(("seeds", "message"), [
    ([1, 2], "seeds must hold one seed per prompt: got 2 for 3 prompts"),
    ([1, "2", 3], r"seeds\[1\] must be an int, got '2'"),
    ([1, 2.5, 3], r"seeds\[1\] must be an int, got 2.5"),
])
def test_bad_seeds_are_named(fake_llm, toy_tokenizer, seeds, message):
    with pytest.raises(ValueError, match=message):
        make(toy_tokenizer).sample(PROMPTS, 2, 1.0, 4, seeds=seeds)
    assert fake_llm.made == []


def test_spread_seeds_give_the_samples_of_nearby_seeds_streams_of_their_own():
    """vLLM seeds sample j of a request with its seed + j: the seeds of prompts seeded
    0, 1, 2... must not fall within K of each other."""
    import numpy as np

    k = 64
    starts = np.array(sorted(vs.spread(s) for s in range(20000)), dtype=np.uint64)
    assert int(starts[0]) >= 0 and int(starts[-1]) + k < 2**62
    assert int(np.diff(starts).min()) > k  # windows [seed, seed + K) apart
    assert vs.spread(5) == vs.spread(5) and vs.spread(-5) != vs.spread(5)
    assert vs.request_seeds(2, [2**70, -3]) == [vs.spread(2**70), vs.spread(-3)]  # any int


@pytest.mark.parametrize(("completion", "expected"), [
    # EOS inside token_ids: cut after it, counted
    (dict(token_ids=[10, 11, 2, 12], finish_reason="stop", stop_reason=None), (3, True)),
    # a vLLM that leaves the EOS out of token_ids: still counted
    (dict(token_ids=[10, 11], finish_reason="stop", stop_reason=None), (3, True)),
    # stopped on a stop token it reports and keeps: not counted twice
    (dict(token_ids=[10, 11, 7], finish_reason="stop", stop_reason=7), (3, True)),
    (dict(token_ids=[10, 11, 12], finish_reason="length", stop_reason=None), (3, False)),
])
def test_token_counts(completion, expected, toy_tokenizer):
    s = vs.to_sample(SimpleNamespace(**completion), 2, toy_tokenizer)
    assert (s.n_tokens, s.finished) == expected


def test_misaligned_outputs_are_refused(toy_tokenizer):
    ids = [[1, 5], [1, 6]]

    def out(prompt, n):
        return SimpleNamespace(prompt_token_ids=prompt, outputs=[
            SimpleNamespace(index=j, token_ids=[9, 2], finish_reason="stop", stop_reason=None) for j in range(n)])

    with pytest.raises(RuntimeError, match="vLLM returned 1 results for 2 prompts"):
        vs.to_samples([out([1, 5], 2)], ids, 2, 2, toy_tokenizer)
    with pytest.raises(RuntimeError, match="vLLM result 0 answers another prompt than prompt 0"):
        vs.to_samples([out([1, 6], 2), out([1, 5], 2)], ids, 2, 2, toy_tokenizer)
    with pytest.raises(RuntimeError, match="vLLM returned 1 samples for prompt 1, expected 2"):
        vs.to_samples([out([1, 5], 2), out([1, 6], 1)], ids, 2, 2, toy_tokenizer)


def test_the_hf_samplers_argument_errors(fake_llm, toy_tokenizer):
    sampler = make(toy_tokenizer)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        sampler.sample(PROMPTS, 0, 1.0, 4)
    with pytest.raises(ValueError, match="greedy decoding"):
        sampler.sample(PROMPTS, 2, 0.0, 4)
    assert sampler.sample([], 3, 1.0, 4) == []
    assert fake_llm.made == []  # none of these started an engine


# --- the engine's lifecycle -------------------------------------------------------------


def test_engine_starts_on_first_sample_and_is_reused(fake_llm, toy_tokenizer):
    sampler = make(toy_tokenizer, gpu_memory_utilization=0.4)
    assert fake_llm.made == []
    sampler.sample(PROMPTS, 1, 0.0, 4)
    sampler.sample(PROMPTS, 2, 1.0, 4)
    [llm] = fake_llm.made
    assert llm.kwargs["model"] == "/runs/r/round_1/policy" and llm.kwargs["gpu_memory_utilization"] == 0.4
    assert len(llm.requests) == 6 and llm.shutdowns == 0


def test_a_new_policys_sampler_shuts_the_last_engine_down(fake_llm, toy_tokenizer):
    first = make(toy_tokenizer)
    first.sample(PROMPTS, 1, 0.0, 4)
    second = vs.VLLMSampler("/runs/r/round_2/policy", toy_tokenizer, llm_class=FakeLLM,
                            sampling_params_class=FakeParams)
    second.sample(PROMPTS, 1, 0.0, 4)
    old, new = fake_llm.made
    assert old.shutdowns == 1 and new.shutdowns == 0  # one engine on the GPU at a time
    assert new.kwargs["model"] == "/runs/r/round_2/policy"
    # the first sampler still works: it starts an engine again, closing the second's
    first.sample(PROMPTS, 1, 0.0, 4)
    assert len(fake_llm.made) == 3 and new.shutdowns == 1


def test_dropping_or_closing_the_sampler_frees_the_engine(fake_llm, toy_tokenizer):
    sampler = make(toy_tokenizer)
    sampler.sample(PROMPTS, 1, 0.0, 4)
    del sampler  # what a stage does before it trains (sampler = None)
    gc.collect()
    assert fake_llm.made[0].shutdowns == 1 and vs.Engine.current is None

    with make(toy_tokenizer) as sampler:
        sampler.sample(PROMPTS, 1, 0.0, 4)
    sampler.close()  # closing twice is harmless
    assert fake_llm.made[1].shutdowns == 1


def test_release_destroys_only_the_process_group_vllm_made(monkeypatch):
    """In-process engines leave vLLM's parallel groups behind; torch's process group goes
    too unless it was there before the engine (accelerate's), or vLLM made none here (its
    engine ran in processes of its own)."""
    calls = []
    parallel_state = SimpleNamespace(destroy_model_parallel=lambda: calls.append("model_parallel"),
                                     destroy_distributed_environment=lambda: calls.append("process_group"),
                                     _WORLD=object())
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "vllm.distributed", SimpleNamespace(parallel_state=parallel_state))
    monkeypatch.setitem(sys.modules, "vllm.distributed.parallel_state", parallel_state)
    engine_core = SimpleNamespace(shutdown=lambda: calls.append("engine_core"))
    vs.release(SimpleNamespace(llm_engine=SimpleNamespace(engine_core=engine_core)), destroy_process_group=False)
    assert calls == ["engine_core", "model_parallel"]
    calls.clear()
    vs.release(SimpleNamespace(llm_engine=SimpleNamespace(shutdown=lambda: calls.append("engine"))),
               destroy_process_group=True)
    assert calls == ["engine", "model_parallel", "process_group"]
    calls.clear()
    parallel_state._WORLD = None  # the engine's groups were in its own processes
    vs.release(SimpleNamespace(llm_engine=SimpleNamespace(shutdown=lambda: calls.append("engine"))),
               destroy_process_group=True)
    assert calls == ["engine", "model_parallel"]


def test_each_process_starts_its_engine_on_its_own_cores(fake_llm, toy_tokenizer, monkeypatch):
    """Process 1 of 2 under accelerate launch on a 4-core machine: its engine's processes
    start bound to cores 2-3 with half of the KV cache an engine alone would get; this
    process's own environment is as it was."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    before = dict(os.environ)
    make(toy_tokenizer).sample(PROMPTS, 1, 0.0, 4)
    [llm] = fake_llm.made
    assert {k: llm.environ.get(k) for k in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE",
                                            "VLLM_WORKER_MULTIPROC_METHOD")} == {
        "VLLM_CPU_OMP_THREADS_BIND": "2-3", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    assert dict(os.environ) == before


def test_a_cpu_engine_prefills_whole_prompts(fake_llm, toy_tokenizer, monkeypatch):
    """vLLM 0.32's CPU engine fails on a seeded request whose prefill it split."""
    make(toy_tokenizer).sample(PROMPTS, 1, 0.0, 4)
    make(toy_tokenizer, engine_args={"enable_chunked_prefill": True}).sample(PROMPTS, 1, 0.0, 4)
    monkeypatch.setattr(vp, "this_machine", lambda: (1, [0, 1], 16 * vp.GiB))
    make(toy_tokenizer).sample(PROMPTS, 1, 0.0, 4)
    assert [llm.kwargs.get("enable_chunked_prefill") for llm in fake_llm.made] == [False, True, None]


def test_a_kv_cache_sized_in_the_engine_args_is_left_to_them(fake_llm, toy_tokenizer):
    make(toy_tokenizer, engine_args={"kv_cache_memory_bytes": 2**29}).sample(PROMPTS, 1, 0.0, 4)
    make(toy_tokenizer).sample(PROMPTS, 1, 0.0, 4)
    first, second = fake_llm.made
    assert "VLLM_CPU_KVCACHE_SPACE" not in first.environ and first.kwargs["kv_cache_memory_bytes"] == 2**29
    assert second.environ["VLLM_CPU_KVCACHE_SPACE"] == "2"  # an eighth of the 16 GiB


# --- the weight push ----------------------------------------------------------------------


def test_packed_weights_come_back_as_they_went_in(tmp_path):
    import torch

    embed = torch.randn(7, 3)
    named = [("model.embed_tokens.weight", embed), ("model.norm.weight", torch.randn(3, dtype=torch.bfloat16)),
             ("lm_head.weight", embed),  # tied: the same tensor, sent once under its first name
             ("model.layers.0.mlp.up_proj.weight", torch.randn(5, 3).t()),  # not contiguous
             ("steps", torch.tensor([3, 4], dtype=torch.int64)), ("empty", torch.zeros(0))]
    path, layout = vw.pack(named, str(tmp_path))
    assert path.parent == tmp_path and path.name.startswith("llama2rlhf-vllm-weights-")
    assert [n for n, *_ in layout] == ["model.embed_tokens.weight", "model.norm.weight",
                                       "model.layers.0.mlp.up_proj.weight", "steps", "empty"]
    assert all(offset % vw.ALIGN == 0 for *_, offset in layout)
    back = dict(vw.unpack(str(path), layout))
    expected = dict(named)
    for name, t in back.items():
        assert t.dtype == expected[name].dtype and torch.equal(t, expected[name]), name


def test_the_worker_extension_reloads_from_the_packed_file(tmp_path):
    import torch

    got = []

    class Worker(vw.WeightReceiver):
        def reload_weights(self, weights_iterator=None):  # vLLM's Worker.reload_weights
            got.extend((n, t.clone()) for n, t in weights_iterator)

    w = torch.randn(4, 2)
    path, layout = vw.pack([("a.weight", w), ("b.bias", torch.ones(2))], str(tmp_path))
    assert getattr(Worker(), vw.METHOD)(str(path), layout) == 2
    assert [n for n, _ in got] == ["a.weight", "b.bias"] and torch.equal(got[0][1], w)


def test_update_from_pushes_the_models_weights_into_the_running_engine(fake_llm, toy_tokenizer, monkeypatch,
                                                                       tmp_path):
    import torch

    from llama2rlhf.toyworld.model import build_tiny_llama

    monkeypatch.setattr(vw, "shared_memory_dir", lambda: str(tmp_path))
    model = build_tiny_llama(toy_tokenizer, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    sampler = make(toy_tokenizer)
    assert sampler.update_from(model) == len(vw.distinct(model.state_dict().items()))
    [llm] = fake_llm.made  # the engine started from the sampler's folder, then took the weights
    assert llm.kwargs["model"] == "/runs/r/round_1/policy" and llm.rpcs[0][0] == vw.METHOD
    [pushed] = fake_llm.reloads
    for name, t in model.state_dict().items():
        if name != "lm_head.weight":  # tied to the embedding, which carries it
            assert torch.equal(pushed[name], t), name
    assert llm.prefix_cache_resets == 1  # no keys and values of the old weights are reused
    assert list(tmp_path.iterdir()) == []  # the shared-memory file is gone
    # a wrapped model (DDP's .module) is unwrapped; the same engine takes the next push
    sampler.update_from(SimpleNamespace(module=model))
    assert len(fake_llm.made) == 1 and len(fake_llm.reloads) == 2


def test_update_from_refuses_unmerged_adapters_and_nothing(fake_llm, toy_tokenizer):
    sampler = make(toy_tokenizer)
    with pytest.raises(ValueError, match=r"update_from got a PEFT model: merge its adapters first"):
        sampler.update_from(SimpleNamespace(peft_config={}, state_dict=dict))
    with pytest.raises(ValueError, match="load_weights got no tensors"):
        sampler.load_weights({})
    assert fake_llm.made == []


# --- the factory --------------------------------------------------------------------------


def test_the_core_hands_the_factory_the_policy_folder_and_the_node_options(vllm_plugins, monkeypatch, fake_llm,
                                                                            toy_tokenizer, tmp_path):
    """``load_sampler(cfg, folder)``, as every stage builds its sampler: vLLM gets the folder,
    no transformers model is loaded, and the ``sampler`` node's fields arrive as options."""
    from omegaconf import OmegaConf

    from llama2rlhf.runtime import models
    from llama2rlhf.sampling import load_sampler

    monkeypatch.setattr(vs, "vllm_classes", lambda: (FakeLLM, FakeParams))
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("a transformers model was loaded"))
    toy_tokenizer.save_pretrained(tmp_path / "sft" / "model")  # the folder holds the tokenizer too
    cfg = OmegaConf.create({"model": {"trust_remote_code": True},
                            "sampler": OmegaConf.structured(vs.VLLMSamplerConfig(enforce_eager=True, dtype="float16"))})
    sampler = load_sampler(cfg, str(tmp_path / "sft" / "model"))
    assert isinstance(sampler.__wrapped__, vs.VLLMSampler)  # wrapped: its failures name the plugin
    assert sampler.options == vs.VLLMSamplerConfig(enforce_eager=True, dtype="float16")
    sampler.show_progress = False
    sampler.sample(PROMPTS[:1], 1, 0.0, 3)
    sampler.sample(PROMPTS[:2], 2, 1.0, 3, seeds=[9, 4])  # the per-prompt seeds pass the wrapper
    assert [kw["seed"] for _, kw in fake_llm.made[0].requests[1:]] == [vs.spread(9), vs.spread(4)]
    kwargs = fake_llm.made[0].kwargs
    assert (kwargs["model"], kwargs["trust_remote_code"], kwargs["enforce_eager"], kwargs["dtype"]) == (
        str(tmp_path / "sft" / "model"), True, True, "float16")
    with pytest.raises(ValueError, match="sampler=vllm has no option sampler.beams"):
        vs.make_vllm_sampler(str(tmp_path / "sft" / "model"), cfg, beams=4)


def test_a_failing_engine_names_the_plugin(vllm_plugins, monkeypatch, toy_tokenizer, tmp_path):
    from omegaconf import OmegaConf

    from llama2rlhf.sampling import load_sampler

    class BrokenLLM(FakeLLM):
        def generate(self, prompts, params, use_tqdm=True):
            raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(vs, "vllm_classes", lambda: (BrokenLLM, FakeParams))
    toy_tokenizer.save_pretrained(tmp_path / "policy")
    cfg = OmegaConf.create({"model": {"trust_remote_code": False},
                            "sampler": OmegaConf.structured(vs.VLLMSamplerConfig())})
    sampler = load_sampler(cfg, str(tmp_path / "policy"))
    with pytest.raises(vllm_plugins.PluginError, match=r"^sampler 'vllm' of plugin 'vllm' \(distribution "
                                                       r"llama2rlhf-vllm\) failed: RuntimeError: CUDA out of memory$"):
        sampler.sample(PROMPTS[:1], 1, 0.0, 3)


def test_without_vllm_the_error_says_how_to_install_it(monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ImportError, match=r"sampler=vllm needs vLLM.*make vllm.*pip install 'llama2rlhf-vllm\[vllm\]'"):
        vs.make_vllm_sampler("/p", OmegaConf.create({"model": {"trust_remote_code": False}}))


def test_importing_the_plugin_imports_neither_vllm_nor_torch():
    import llama2rlhf_vllm

    root = str(Path(llama2rlhf_vllm.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    code = ("import sys, llama2rlhf_vllm.plugin; "
            "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
