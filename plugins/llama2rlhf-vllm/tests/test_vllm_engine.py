"""``sampler=vllm`` against the built-in ``hf`` sampler on a tiny saved policy, on a real GPU.

Skipped where vLLM or a CUDA GPU is missing; run on a GPU machine with the extra installed
(``pip install -e 'plugins/llama2rlhf-vllm[vllm]'``).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs vLLM and a CUDA GPU", allow_module_level=True)
pytest.importorskip("vllm", reason="needs vLLM and a CUDA GPU")

from llama2rlhf_vllm.sampler import Engine, VLLMSamplerConfig, make_vllm_sampler  # noqa: E402

PROMPTS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Reverse the list: red, cat, sun."}],
    [{"role": "user", "content": "Hi"}],
]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny Llama saved the way every stage saves its policy (weights and tokenizer in one folder)."""
    from llama2rlhf.toyworld import ToyWorld
    from llama2rlhf.toyworld.model import build_tiny_llama
    from llama2rlhf.toyworld.tokenizer import build_tokenizer

    path = tmp_path_factory.mktemp("policy")
    tok = build_tokenizer(ToyWorld(), vocab_size=400, n_prompts=300)
    model = build_tiny_llama(tok, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_vllm_samples_line_up_with_the_hf_samplers(policy):
    from omegaconf import OmegaConf

    from llama2rlhf.sampling import load_sampler
    from llama2rlhf.sampling.hf import make_hf_sampler

    options = VLLMSamplerConfig(dtype="float32", enforce_eager=True, gpu_memory_utilization=0.3)
    cfg = OmegaConf.create({"model": {"kind": "toy", "dtype": "float32", "trust_remote_code": False},
                            "device": "cuda", "sampler": OmegaConf.structured(options)})
    free_before = torch.cuda.mem_get_info()[0]

    # the way every stage builds its sampler
    vllm_sampler = load_sampler(cfg, str(policy))
    assert type(vllm_sampler.__wrapped__).__name__ == "VLLMSampler"  # wrapped: its failures name the plugin
    vllm_sampler.show_progress = False
    greedy = vllm_sampler.sample(PROMPTS, 1, 0.0, 12)
    torch.manual_seed(0)
    sampled = vllm_sampler.sample(PROMPTS, 5, 1.0, 12)
    torch.manual_seed(0)
    again = vllm_sampler.sample(PROMPTS, 5, 1.0, 12)
    vllm_sampler.close()
    assert Engine.current is None
    # the engine's memory is given back (within 1 GiB of allocator slack)
    assert torch.cuda.mem_get_info()[0] > free_before - 2**30

    hf = make_hf_sampler(str(policy), cfg)  # float32, on cuda
    hf.show_progress = False
    hf_greedy = hf.sample(PROMPTS, 1, 0.0, 12)

    # greedy decoding of the same weights in float32: the same replies, counted the same way
    assert [[(s.text, s.n_tokens, s.finished) for s in ss] for ss in greedy] == [
        [(s.text, s.n_tokens, s.finished) for s in ss] for ss in hf_greedy]
    assert [len(ss) for ss in sampled] == [5] * len(PROMPTS)
    for ss in sampled:
        for s in ss:
            assert 1 <= s.n_tokens <= 12 and (s.finished or s.n_tokens == 12)
        assert len({s.text for s in ss}) > 1  # sampling, not five copies
    assert sampled == again  # seeded from torch's generator, as the stages seed it


def test_a_second_policy_replaces_the_first_engine(policy, tmp_path):
    import shutil

    from omegaconf import OmegaConf

    second = tmp_path / "round_2"
    shutil.copytree(policy, second)
    cfg = OmegaConf.create({"model": {"trust_remote_code": False}})
    # two engines at 0.6 of the GPU each cannot both be up
    options = {"dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.6}
    first = make_vllm_sampler(str(policy), cfg, **options)
    first.show_progress = False
    a = first.sample(PROMPTS, 1, 0.0, 8)
    nxt = make_vllm_sampler(str(second), cfg, **options)
    nxt.show_progress = False
    b = nxt.sample(PROMPTS, 1, 0.0, 8)
    assert a == b and Engine.current is nxt._engine
    nxt.close()
