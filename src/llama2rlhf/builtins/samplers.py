"""The ``hf`` sampler: transformers' ``generate`` with batching that keeps the CPU/GPU busy.

Prompts are rendered with the tokenizer's chat template, sorted by length so a batch
carries little padding, left-padded (decoder-only models continue from the right edge),
and grouped under a token budget. ``num_return_sequences`` draws the ``n`` samples of a
prompt in one call with the KV cache on, and generation stops at EOS.
"""

from __future__ import annotations

from typing import Any, Sequence

from .. import hookimpl
from ..sampling import Messages, Sample


class HFSampler:
    def __init__(self, model, tokenizer, batch_tokens: int = 65536, device=None, show_progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_tokens = batch_tokens
        self.device = device or next(model.parameters()).device
        self.show_progress = show_progress

    def encode(self, prompts: Sequence[Messages]) -> list[list[int]]:
        return [
            self.tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
            for p in prompts
        ]

    def batches(self, lengths: list[int], n: int, max_new_tokens: int) -> list[list[int]]:
        """Prompt indices, shortest first, in batches of at most ``batch_tokens`` tokens."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        out: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            width = lengths[i] + max_new_tokens  # sorted, so i is the longest so far
            if cur and (len(cur) + 1) * n * width > self.batch_tokens:
                out.append(cur)
                cur = []
            cur.append(i)
        if cur:
            out.append(cur)
        return out

    def sample(
        self, prompts: Sequence[Messages], n: int, temperature: float, max_new_tokens: int, desc: str = "sampling"
    ) -> list[list[Sample]]:
        import torch
        from tqdm.auto import tqdm

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if temperature == 0 and n > 1:
            raise ValueError("greedy decoding (temperature 0) gives n identical samples; use n=1")
        ids = self.encode(prompts)
        results: list[list[Sample] | None] = [None] * len(ids)
        tok = self.tokenizer
        eos = tok.eos_token_id
        was_training = self.model.training
        self.model.eval()
        bar = tqdm(total=len(ids) * n, desc=desc, unit="sample", disable=not self.show_progress, leave=False)
        try:
            for batch in self.batches([len(x) for x in ids], n, max_new_tokens):
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
                    attention[row, width - len(ids[i]) :] = 1
                gen_kwargs: dict[str, Any] = dict(
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=n,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=eos,
                    use_cache=True,
                )
                if temperature > 0:
                    gen_kwargs.update(do_sample=True, temperature=float(temperature), top_p=1.0, top_k=0)
                else:
                    gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                with torch.inference_mode():
                    out = self.model.generate(
                        input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **gen_kwargs
                    )
                new = out[:, width:].tolist()
                for row, i in enumerate(batch):
                    samples = []
                    for seq in new[row * n : (row + 1) * n]:
                        finished = eos in seq
                        seq = seq[: seq.index(eos) + 1] if finished else seq
                        text = tok.decode(seq, skip_special_tokens=True).strip()
                        samples.append(Sample(text, len(seq), finished))
                    results[i] = samples
                bar.update(len(batch) * n)
        finally:
            bar.close()
            self.model.train(was_training)
        return results  # type: ignore[return-value]


def make_hf_sampler(model, tokenizer, cfg: Any = None) -> HFSampler:
    batch_tokens = getattr(getattr(cfg, "sampler", None), "batch_tokens", 65536) if cfg is not None else 65536
    return HFSampler(model, tokenizer, batch_tokens=batch_tokens)


@hookimpl(trylast=True)
def register_samplers(register):
    register("hf", make_hf_sampler)
