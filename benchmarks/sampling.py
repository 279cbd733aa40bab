"""Rejection-sampling throughput: the ``hf`` sampler and batched RM scoring against the
loops a user would write by hand, same model, prompts, K and token limits, one process.

    python benchmarks/sampling.py [--prompts 64] [--k 8] [--max-new-tokens 32] [--model RUN_DIR/sft/model]

Without ``--model`` it builds the toy tokenizer and a tiny Llama (random weights: every
sample runs to the token limit, the fair worst case for both sides). Prints samples/s of
each and the ratios; the last line reads ``sampler_ratio=<x> scoring_ratio=<y>``.
"""

from __future__ import annotations

import argparse
import time


def hand_sampling(model, tokenizer, prompts, k, max_new_tokens):
    """For each prompt, ``generate`` K samples: what a user writes first."""
    import torch

    out = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            return_tensors="pt")
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
        ids = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True, return_tensors="pt")
        with torch.inference_mode():
            scores.append(float(rm(**ids).logits[0, 0]))
    return scores


def main() -> None:
    import torch
    from transformers import LlamaForSequenceClassification

    from llama2rlhf.builtins.samplers import HFSampler
    from llama2rlhf.reward_scoring import score_conversations
    from llama2rlhf.toyworld import ToyWorld

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--model", default=None, help="a saved policy (default: a tiny random Llama)")
    args = ap.parse_args()

    world = ToyWorld()
    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model)
    else:
        from llama2rlhf.toyworld.model import build_tiny_llama
        from llama2rlhf.toyworld.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(world)
        model = build_tiny_llama(tokenizer)
    model.eval()
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(model.config.__class__(**{**model.config.to_dict(), "num_labels": 1})).eval()
    prompts = [p.messages() for p in world.prompts("heldout", args.prompts, purpose="benchmark")]
    n = args.prompts * args.k
    print(f"{args.prompts} prompts x K={args.k}, max_new_tokens={args.max_new_tokens}, "
          f"torch threads={torch.get_num_threads()}, model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M")

    t = time.perf_counter()
    hand = hand_sampling(model, tokenizer, prompts, args.k, args.max_new_tokens)
    hand_s = time.perf_counter() - t
    sampler = HFSampler(model, tokenizer, show_progress=False)
    t = time.perf_counter()
    ours = sampler.sample(prompts, args.k, 1.0, args.max_new_tokens)
    ours_s = time.perf_counter() - t
    assert len(ours) == len(hand) == args.prompts and all(len(s) == args.k for s in ours)
    print(f"sampling   hand loop {n / hand_s:9.1f} samples/s   hf sampler {n / ours_s:9.1f} samples/s   "
          f"ratio {hand_s / ours_s:.2f}x")

    convs = [p + [{"role": "assistant", "content": s.text}] for p, ss in zip(prompts, ours, strict=True) for s in ss]
    t = time.perf_counter()
    one_by_one = hand_scoring(rm, tokenizer, convs)
    hand_score_s = time.perf_counter() - t
    t = time.perf_counter()
    batched = score_conversations(rm, tokenizer, convs, batch_size=64)
    batched_s = time.perf_counter() - t
    worst = max(abs(a - b) for a, b in zip(one_by_one, batched, strict=True))
    print(f"scoring    one at a time {n / hand_score_s:9.1f} samples/s   batched {n / batched_s:9.1f} samples/s   "
          f"ratio {hand_score_s / batched_s:.2f}x   (max |difference| {worst:.2e})")
    print(f"sampler_ratio={hand_s / ours_s:.2f} scoring_ratio={hand_score_s / batched_s:.2f}")


if __name__ == "__main__":
    main()
