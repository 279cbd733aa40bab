"""``sampler=vllm`` without vLLM: config, prompt rendering, output alignment and the engine's
lifecycle, with a fake ``vllm.LLM`` handed in where the real one would be."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from llama2rlhf.sampling import Sample
from llama2rlhf_vllm import sampler as vs

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

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.requests: list[tuple[list[int], dict]] = []
        self.shutdowns = 0
        self.llm_engine = SimpleNamespace(shutdown=self._shutdown)
        FakeLLM.made.append(self)

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
def fake_llm(toy_tokenizer):
    FakeLLM.made = []
    FakeLLM.tokenizer = toy_tokenizer
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
        "enforce_eager": True, "trust_remote_code": True, "swap_space": 0}
    assert vs.engine_kwargs("/p", vs.VLLMSamplerConfig(max_model_len=512))["max_model_len"] == 512
    assert "max_model_len" not in vs.engine_kwargs("/p", vs.VLLMSamplerConfig())


@pytest.mark.parametrize(("options", "message"), [
    ({"gpu_memory_utilization": 0.0}, r"sampler.gpu_memory_utilization must be within \(0, 1\], got 0.0"),
    ({"gpu_memory_utilization": 1.5}, r"sampler.gpu_memory_utilization must be within \(0, 1\], got 1.5"),
    ({"tensor_parallel_size": 0}, "sampler.tensor_parallel_size must be >= 1, got 0"),
    ({"engine_args": {"dtype": "half", "seed": 3}}, "sampler.engine_args sets dtype, which the sampler sets itself: "
                                                    "use sampler.dtype instead"),
    ({"engine_args": {"model": "/elsewhere"}}, "sets model, which the sampler sets itself: use the policy path"),
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
        assert {k: kw[k] for k in ("n", "temperature", "max_tokens", "stop_token_ids")} == {
            "n": 4, "temperature": 1.2, "max_tokens": 6, "stop_token_ids": [eos]}
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
    too unless it was there before the engine (accelerate's)."""
    calls = []
    parallel_state = SimpleNamespace(destroy_model_parallel=lambda: calls.append("model_parallel"),
                                     destroy_distributed_environment=lambda: calls.append("process_group"))
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
    with pytest.raises(ImportError, match=r"sampler=vllm needs vLLM.*pip install 'llama2rlhf-vllm\[vllm\]'"):
        vs.make_vllm_sampler("/p", OmegaConf.create({"model": {"trust_remote_code": False}}))


def test_importing_the_plugin_imports_neither_vllm_nor_torch():
    import llama2rlhf_vllm

    root = str(Path(llama2rlhf_vllm.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    code = ("import sys, llama2rlhf_vllm.plugin; "
            "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
