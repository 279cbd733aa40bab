"""Rejection-sampling throughput: the ``hf`` sampler and batched RM scoring against the
loops a user would write by hand, same model, prompts, K and token limits, one process.

    python benchmarks/sampling.py [--prompts 64] [--k 8] [--max-new-tokens 32] [--repeats 7]
                                  [--model RUN_DIR/sft/model] [--device cuda]

Without ``--model`` it builds the toy tokenizer and a tiny Llama (random weights: every
sample runs to the token limit, the fair worst case for both sides).

Each comparison first calls both sides once, untimed, on a few prompts (lazy imports,
allocator and kernel warm-up, so neither side pays the cold start), then times
``--repeats`` runs of each side, alternating the two and flipping which goes first
every repeat (hand, ours, ours, hand, ...), so drift in the machine's load falls on both.
Prints the median samples/s of each side and the median of the per-repeat ratios (each
repeat's two runs are back to back); the last line reads
``sampler_ratio=<x> scoring_ratio=<y>``.
"""

from __future__ import annotations

import argparse
import statistics
import time


def hand_sampling(model, tokenizer, prompts, k, max_new_tokens):
    """For each prompt, ``generate`` K samples: what a user writes first."""
    import torch

    out = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            return_tensors="pt").to(model.device)
        with torch.inference_mode():
            seqs = model.generate(**ids, do_sample=True, temperature=1.0, top_k=0, num_return_sequences=k,
                                  max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        out.append([tokenizer.decode(s[ids["input_ids"].shape[1]:], skip_special_tokens=True) for s in seqs])
    return out


def hand_scoring(rm, tokenizer, conversations):
    """Score each sample with the reward model, one at a time."""
    import torch

    scores = []
    for conv in conversations:
        ids = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True, return_tensors="pt").to(rm.device)
        with torch.inference_mode():
            scores.append(float(rm(**ids).logits[0, 0]))
    return scores


def compare(hand, ours, repeats: int, n: int):
    """Time ``repeats`` alternating runs of the two zero-argument callables (first one first on even
    repeats, second first on odd ones). Returns (median samples/s of hand, of ours, median of the
    per-repeat ratios, last results): each repeat's two runs are back to back, so their ratio
    cancels drift in the machine's speed that the ratio of two medians would keep."""
    rates: dict[str, list[float]] = {"hand": [], "ours": []}
    results = {}
    sides = [("hand", hand), ("ours", ours)]
    for r in range(repeats):
        for name, fn in sides if r % 2 == 0 else sides[::-1]:
            t = time.perf_counter()
            results[name] = fn()
            rates[name].append(n / (time.perf_counter() - t))
    ratios = [o / h for o, h in zip(rates["ours"], rates["hand"], strict=True)]
    return statistics.median(rates["hand"]), statistics.median(rates["ours"]), statistics.median(ratios), results


def load_policy(path: str | None, world, device: str = "cpu"):
    """(model in eval mode on ``device``, tokenizer): a saved policy, loaded as the ``hf``
    sampler's factory loads it (``llama2rlhf.sampling.load_policy``, in float32), or the toy
    tokenizer and a tiny random Llama."""
    if path:
        from omegaconf import OmegaConf

        from llama2rlhf.sampling import load_policy as load_saved

        cfg = OmegaConf.create({"model": {"dtype": "float32", "trust_remote_code": False}, "device": device})
        model, tokenizer = load_saved(path, cfg)
        return model.eval(), tokenizer
    from llama2rlhf.toyworld.model import build_tiny_llama
    from llama2rlhf.toyworld.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(world)
    return build_tiny_llama(tokenizer).to(device).eval(), tokenizer


def main() -> None:
    import torch
    from transformers import LlamaForSequenceClassification

    from llama2rlhf.reward.scoring import score_conversations
    from llama2rlhf.sampling.hf import HFSampler
    from llama2rlhf.toyworld import ToyWorld

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7, help="timed runs of each side; medians are reported")
    ap.add_argument("--warmup-prompts", type=int, default=2, help="prompts in the untimed warm-up call of each side")
    ap.add_argument("--model", default=None, help="a saved policy (default: a tiny random Llama)")
    ap.add_argument("--device", default="cpu", help="where both sides run (cpu, cuda, cuda:1 ...)")
    args = ap.parse_args()

    world = ToyWorld()
    model, tokenizer = load_policy(args.model, world, args.device)
    torch.manual_seed(0)
    rm_config = model.config.__class__(**{**model.config.to_dict(), "num_labels": 1})
    rm = LlamaForSequenceClassification(rm_config).to(args.device).eval()
    prompts = [p.messages() for p in world.prompts("heldout", args.prompts, purpose="benchmark")]
    n = args.prompts * args.k
    print(f"{args.prompts} prompts x K={args.k}, max_new_tokens={args.max_new_tokens}, "
          f"device {args.device}, torch threads={torch.get_num_threads()}, model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M, "
          f"medians of {args.repeats} alternating runs after a warm-up")

    sampler = HFSampler(model, tokenizer, show_progress=False)
    few = prompts[: args.warmup_prompts]
    hand_sampling(model, tokenizer, few, args.k, args.max_new_tokens)
    sampler.sample(few, args.k, 1.0, args.max_new_tokens)
    hand_rate, ours_rate, sampler_ratio, res = compare(
        lambda: hand_sampling(model, tokenizer, prompts, args.k, args.max_new_tokens),
        lambda: sampler.sample(prompts, args.k, 1.0, args.max_new_tokens),
        args.repeats, n,
    )
    hand, ours = res["hand"], res["ours"]
    assert len(ours) == len(hand) == args.prompts and all(len(s) == args.k for s in ours)
    print(f"sampling   hand loop {hand_rate:9.1f} samples/s   hf sampler {ours_rate:9.1f} samples/s   "
          f"ratio {sampler_ratio:.2f}x")

    convs = [p + [{"role": "assistant", "content": s.text}] for p, ss in zip(prompts, ours, strict=True) for s in ss]
    few = convs[: args.warmup_prompts * args.k]
    hand_scoring(rm, tokenizer, few)
    score_conversations(rm, tokenizer, few, batch_size=64)
    hand_score_rate, batched_rate, scoring_ratio, res = compare(
        lambda: hand_scoring(rm, tokenizer, convs),
        lambda: score_conversations(rm, tokenizer, convs, batch_size=64),
        args.repeats, n,
    )
    worst = max(abs(a - b) for a, b in zip(res["hand"], res["ours"], strict=True))
    print(f"scoring    one at a time {hand_score_rate:9.1f} samples/s   batched {batched_rate:9.1f} samples/s   "
          f"ratio {scoring_ratio:.2f}x   (max |difference| {worst:.2e})")
    print(f"sampler_ratio={sampler_ratio:.2f} scoring_ratio={scoring_ratio:.2f}")


if __name__ == "__main__":
    main()
