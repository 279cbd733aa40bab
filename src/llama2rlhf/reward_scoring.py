"""Scoring conversations with a reward model, batched by length."""

from __future__ import annotations

from typing import Sequence

from .sampling import Messages


def score_conversations(
    model, tokenizer, conversations: Sequence[Messages], batch_size: int = 64, desc: str | None = None
) -> list[float]:
    """The reward of each full conversation (prompt + reply), in input order."""
    import torch
    from tqdm.auto import tqdm

    ids = [
        tokenizer.apply_chat_template(list(c), tokenize=True, return_dict=True)["input_ids"] for c in conversations
    ]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    scores = [0.0] * len(ids)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc or "scoring", disable=desc is None, leave=False):
            batch = order[start : start + batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                # right padding: the classifier reads the last non-pad token
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                attention[row, : len(ids[i])] = 1
            with torch.inference_mode():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            for row, i in enumerate(batch):
                scores[i] = float(logits[row, 0])
    finally:
        model.train(was_training)
    return scores


class RewardScorer:
    """A saved reward model, loaded once, scoring (prompt, completion) pairs in batches."""

    def __init__(self, cfg, model_path: str, batch_size: int = 64):
        from .models import device_for, load_reward_model, load_tokenizer

        self.tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
        self.model = load_reward_model(model_path, cfg, self.tokenizer).to(device_for(cfg))
        self.batch_size = batch_size

    def score(self, prompts: Sequence[Messages], completions: Sequence[str], desc: str | None = None) -> list[float]:
        conversations = [list(p) + [{"role": "assistant", "content": c}]
                         for p, c in zip(prompts, completions, strict=True)]
        return score_conversations(self.model, self.tokenizer, conversations, self.batch_size, desc=desc)
