"""Reward-model training steps: padding-free batches (``reward_model.padding_free``,
``llama2rlhf.runtime.speedups.packed_preferences`` with ``sdpa_packed``) against TRL's padded ones, same
model, pairs, batch size and optimiser, one process.

    python benchmarks/reward_packing.py [--pairs 1024] [--batch 32] [--repeats 5]
                                        [--model RUN_DIR/sft/model] [--device cuda]

The pairs are the toy world's seed comparisons (paper 3.2.2's data at toy scale), each
batch collated by TRL's ``DataCollatorForPreference`` on one side and by
``llama2rlhf.runtime.speedups.packed_preferences.collate`` on the other. A step is forward, the margin
loss, backward and an AdamW step. Both sides start each repeat from the same weights, and
their rewards on the first batch are compared. Timing as in ``benchmarks/sampling.py``
(a warm-up, alternating runs, the median of per-repeat ratios). The last line reads
``reward_packing_ratio=<pairs/s packed over padded>``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sampling import compare  # noqa: E402


def main() -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from llama2rlhf.runtime.speedups.packed_attention import use_for_padding_free
    from llama2rlhf.runtime.speedups.packed_preferences import collate, packed_rewards
    from llama2rlhf.toyworld import ToyWorld

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32, help="pairs per step (the toy pipeline's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default=None, help="a saved policy or reward model (default: a tiny random Llama)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    world = ToyWorld(families=["upper", "next", "count", "capital"])
    if args.model:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1)
    else:
        from llama2rlhf.toyworld.model import build_tiny_llama
        from llama2rlhf.toyworld.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(world)
        policy_dir = Path(__import__("tempfile").mkdtemp()) / "policy"
        build_tiny_llama(tokenizer).save_pretrained(policy_dir)
        model = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(args.device)

    def ids(messages):
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]

    rows = world.seed_comparisons(args.pairs, "train")
    examples = [{"chosen_ids": ids(r["prompt"] + r["chosen"]), "rejected_ids": ids(r["prompt"] + r["rejected"]),
                 "margin": float(r["gold_gap"] > 0)} for r in rows]
    chunks = [examples[i:i + args.batch] for i in range(0, len(examples), args.batch)]
    padded_batches = [DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(c) for c in chunks]
    packed_batches = [collate(c) for c in chunks]
    real = sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
    slots = sum(b["input_ids"].numel() for b in padded_batches)

    padded_model = model
    packed_model = copy.deepcopy(model)
    use_for_padding_free(packed_model)
    start = copy.deepcopy(model.state_dict())

    def to_device(batch):
        return {k: v.to(args.device) for k, v in batch.items()}

    def padded_rewards(m, batch):
        batch = dict(batch)
        batch.pop("margin", None)
        return m(**batch, use_cache=False).logits.squeeze(-1)

    def packed(m, batch):
        batch = dict(batch)
        batch.pop("margin", None)
        return packed_rewards(m, batch, batch.pop("sequence_ends"))

    def train(m, batches, rewards):
        m.load_state_dict(start)
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        for b in batches:
            b = to_device(b)
            r_c, r_r = torch.chunk(rewards(m, b), 2)
            loss = -torch.nn.functional.logsigmoid(r_c - r_r - b["margin"]).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        return float(loss)

    with torch.no_grad():
        padded_model.eval()
        packed_model.eval()
        a = padded_rewards(padded_model, to_device(padded_batches[0]))
        b = packed(packed_model, to_device(packed_batches[0]))
    print(f"{len(examples)} pairs in {len(chunks)} steps of {args.batch}, device {args.device}, "
          f"torch threads={torch.get_num_threads()}; padded batches hold {slots / real:.2f}x the real tokens; "
          f"first batch's rewards agree to {float((a - b).abs().max()):.1e}")
    train(padded_model, padded_batches[:2], padded_rewards)  # warm-up
    train(packed_model, packed_batches[:2], packed)
    hand_rate, ours_rate, ratio, res = compare(lambda: train(padded_model, padded_batches, padded_rewards),
                                               lambda: train(packed_model, packed_batches, packed),
                                               args.repeats, len(examples))
    print(f"padded {hand_rate:8.1f} pairs/s   padding-free {ours_rate:8.1f} pairs/s   ratio {ratio:.2f}x   "
          f"last loss padded {res['hand']:.4f} padding-free {res['ours']:.4f}")
    print(f"reward_packing_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
