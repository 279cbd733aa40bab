"""Long-context sampling: the ``hf`` sampler decoding into reserved cache slots
(``llama2rlhf.runtime.speedups.kv_cache.reserved_cache``) against transformers' ``DynamicCache``, which
grows by concatenation, same model, prompts, K and token limits, one process.

    python benchmarks/kv_cache.py [--dialogues 48] [--k 4] [--max-new-tokens 32] [--repeats 5]
                                  [--turns 1 5 10 20] [--model RUN_DIR/sft/model] [--device cuda]

The prompts are Ghost Attention's (paper 3.3): toy-world dialogues of ``--turns`` turns
whose reply is sampled next, ``--k`` samples each (GAtt's first draw). Timing as in
``benchmarks/sampling.py`` (warm-up, alternating runs, median of per-repeat ratios).
The last line reads ``kv_cache_ratio=<ratio at the longest dialogues>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sampling import compare, load_policy  # noqa: E402


def dialogues(world, n: int, turns: int) -> list[list[dict]]:
    """``n`` dialogues of ``turns`` user turns, every earlier turn answered by the reference reply."""
    from llama2rlhf.toyworld import oracle

    pool = world.prompts("heldout", n * turns, purpose="benchmark-dialogues")
    out = []
    for i in range(n):
        messages = []
        for j, p in enumerate(pool[i * turns:(i + 1) * turns]):
            messages.append({"role": "user", "content": p.text})
            if j < turns - 1:
                messages.append({"role": "assistant", "content": oracle.reference_reply(p)})
        out.append(messages)
    return out


def main() -> None:
    import torch

    from llama2rlhf.sampling.hf import HFSampler
    from llama2rlhf.toyworld import ToyWorld

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dialogues", type=int, default=48)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--turns", type=int, nargs="+", default=[1, 5, 10, 20])
    ap.add_argument("--model", default=None, help="a saved policy (default: a tiny random Llama)")
    ap.add_argument("--device", default="cpu", help="where both sides run (cpu, cuda, cuda:1 ...)")
    args = ap.parse_args()

    world = ToyWorld()
    model, tokenizer = load_policy(args.model, world, args.device)
    dynamic = HFSampler(model, tokenizer, show_progress=False, reserve_cache=False)
    reserved = HFSampler(model, tokenizer, show_progress=False)
    print(f"{args.dialogues} dialogues x K={args.k}, max_new_tokens={args.max_new_tokens}, "
          f"device {args.device}, torch threads={torch.get_num_threads()}, medians of {args.repeats} alternating runs after a warm-up")
    def seeded(sampler, prompts):
        torch.manual_seed(0)  # the same draws on both sides: their samples must match
        return sampler.sample(prompts, args.k, 1.0, args.max_new_tokens)

    ratio = None
    for turns in args.turns:
        prompts = dialogues(world, args.dialogues, turns)
        tokens = sum(len(x) for x in reserved.encode(prompts)) / len(prompts)
        for s in (dynamic, reserved):
            s.sample(prompts[:2], args.k, 1.0, args.max_new_tokens)
        d_rate, r_rate, ratio, res = compare(lambda p=prompts: seeded(dynamic, p), lambda p=prompts: seeded(reserved, p),
                                             args.repeats, args.dialogues * args.k)
        same = res["hand"] == res["ours"]
        print(f"{turns:3d} turns ({tokens:5.0f} prompt tokens)   DynamicCache {d_rate:8.1f} samples/s   "
              f"reserved slots {r_rate:8.1f} samples/s   ratio {ratio:.2f}x   same samples: {same}")
    print(f"kv_cache_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
