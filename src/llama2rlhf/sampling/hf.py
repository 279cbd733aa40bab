"""The ``hf`` sampler: transformers' ``generate`` with batching that keeps the CPU/GPU busy.

Prompts are rendered with the tokenizer's chat template, sorted by length so a batch
carries little padding, left-padded (decoder-only models continue from the right edge),
and grouped under a token budget. The ``n`` samples of a prompt are drawn in one
``generate`` call with the KV cache on, and generation stops at EOS.

One prefill per prompt (``share_prefill``, on by default). Rejection sampling draws K
samples per prompt (Llama 2 paper, section 3.2.3; K=8 by default here) and
``generate(num_return_sequences=K)`` repeats every prompt K times *before* its prefill,
so the prompt is run through the model K times for the same keys and values. Instead,
the prompt minus its last token goes through the model once per prompt (the whole
left-padded batch at once), its cache rows are repeated K times, and ``generate``
continues from that cache on the K-times repeated prompts, so it only runs the last
prompt token and the new ones. Models the trick does not fit (no ``Cache`` with
``batch_repeat_interleave``, sliding-window or non-full attention layers,
encoder-decoders) and batches with a one-token prompt take the plain path.

Draws from a seed per prompt. At a temperature above 0, every row draws its tokens with its
own counter-based uniforms (:func:`seeded_sampling`), keyed by its prompt's seed and its
sample index, so a prompt's samples are the same alone, in any batch, and on any process.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

from llama2rlhf import hookimpl
from llama2rlhf.config import SamplerConfig
from llama2rlhf.runtime.speedups.kv_cache import cache_kwarg, forward_params, reserved_cache
from llama2rlhf.sampling import Messages, Sample, default_seeds, load_policy


class HFSampler:
    def __init__(
        self,
        model,
        tokenizer,
        batch_tokens: int = 65536,
        device=None,
        show_progress: bool = True,
        share_prefill: bool = True,
        reserve_cache: bool = True,
        dialogue_cache_mb: float = 2048,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_tokens = batch_tokens
        self.device = device or next(model.parameters()).device
        self.show_progress = show_progress
        self.share_prefill = share_prefill
        # decode into preallocated key/value slots rather than a cache that grows by copying
        # (llama2rlhf.runtime.speedups.kv_cache.reserved_cache); False: transformers' DynamicCache
        self.reserve_cache = reserve_cache
        self._cache_kwarg = cache_kwarg(model)
        self.dialogue_cache_mb = dialogue_cache_mb
        self._store = None  # a PrefixStore inside keep_prefixes()
        self._logits_to_keep = "logits_to_keep" in forward_params(model)

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

    @contextlib.contextmanager
    def keep_prefixes(self):
        """Within it, each prompt's prefilled keys and values are kept (up to
        ``dialogue_cache_mb``), and a later prompt that begins with the same tokens prefills
        only the rest (``llama2rlhf.runtime.speedups.dialogue_cache``): for dialogues sampled turn by turn
        (GAtt, paper 3.3). Yields the store (its ``hits``, ``hit_tokens`` and ``misses`` say
        what it saved), or None where the model cannot take a cache or the budget is 0."""
        from llama2rlhf.runtime.speedups.dialogue_cache import PrefixStore

        if not self.cache_kwarg() or self.dialogue_cache_mb <= 0:
            yield None
            return
        self._store = PrefixStore(int(self.dialogue_cache_mb * 2**20))
        try:
            yield self._store
        finally:
            self._store = None

    def cache_kwarg(self) -> str | None:
        """The name the model takes its KV cache under, or None when the prefill cannot be shared."""
        return self._cache_kwarg

    def _new_cache(self, max_new_tokens: int | None) -> dict[str, Any]:
        """``generate``'s cache argument: one with room for the prompt's last token and the new
        ones (``reserved_cache``), where the model takes a ``Cache`` by a known name; else
        nothing (``generate``'s own default)."""
        name = self._cache_kwarg
        return {name: reserved_cache((max_new_tokens or 0) + 1)} if name and self.reserve_cache else {}

    def _plain_generate(self, input_ids, attention, n: int, **gen_kwargs):
        # the rows repeated here rather than by num_return_sequences, which greedy decoding
        # refuses and seeded_sampling's draws go through
        return self.model.generate(input_ids=input_ids.repeat_interleave(n, dim=0),
                                   attention_mask=attention.repeat_interleave(n, dim=0),
                                   **self._new_cache(gen_kwargs.get("max_new_tokens")), **gen_kwargs)

    def generate(self, input_ids, attention, n: int, **gen_kwargs):
        """``generate`` for one left-padded batch of prompts, ``n`` rows per prompt, grouped by prompt.

        ``input_ids``/``attention`` are ``(prompts, width)`` on any device; the result is what
        ``model.generate(..., num_return_sequences=n)`` returns: ``prompts * n`` rows, the ``n``
        of prompt 0 first, each the full prompt followed by the new tokens.
        """
        input_ids = input_ids.to(self.device)
        attention = attention.to(self.device)
        name = self.cache_kwarg() if self.share_prefill else None
        # A prompt of one token leaves nothing to prefill before the last token (an all-padding row).
        if name is None or input_ids.shape[1] < 2 or int(attention.sum(-1).min()) < 2:
            return self._plain_generate(input_ids, attention, n, **gen_kwargs)
        # Prefill all but the last prompt token once per prompt (Llama 2 paper 3.2.3: K samples share a
        # prompt, so its keys and values are the same for all K). Position ids are the ones generate
        # derives for left padding: attention.cumsum - 1, 0 on the padding.
        prefix_mask = attention[:, :-1]
        position_ids = (prefix_mask.long().cumsum(-1) - 1).masked_fill(prefix_mask == 0, 0)
        forward_kwargs: dict[str, Any] = dict(
            input_ids=input_ids[:, :-1], attention_mask=prefix_mask, position_ids=position_ids, use_cache=True
        )
        if self._logits_to_keep:
            forward_kwargs["logits_to_keep"] = 1  # the logits are not used; skip the full-vocabulary head
        forward_kwargs.update(self._new_cache(gen_kwargs.get("max_new_tokens")))
        out = self.model(**forward_kwargs)
        cache = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        if not hasattr(cache, "batch_repeat_interleave"):  # not a Cache object after all: plain path from now on
            self._cache_kwarg = None
            return self._plain_generate(input_ids, attention, n, **gen_kwargs)
        if n > 1:
            cache.batch_repeat_interleave(n)  # row r*n + j is sample j of prompt r, as num_return_sequences lays out
        # generate sees a cache shorter than the prompts by one token and only runs the last one; the
        # mask is the full one, so its position ids continue the prefix's.
        return self.model.generate(
            input_ids=input_ids.repeat_interleave(n, dim=0),
            attention_mask=attention.repeat_interleave(n, dim=0),
            num_return_sequences=1,
            **{name: cache},
            **gen_kwargs,
        )

    def _generate_from_store(self, seqs: list[list[int]], n: int, **gen_kwargs):
        """``generate`` for one batch of prompts given as token ids, each continuing from the
        longest stored prefix of its tokens but the last; stores what it prefilled. Returns
        (``generate``'s output, the width its new tokens start at).

        A row is laid out as [padding][the stored prefix][padding][the tokens after it][the
        last token]: the stored keys and values go into the cache right-aligned before the
        middle padding, one forward runs the tokens after them, and ``generate`` runs the
        last token, as in :meth:`generate`. The attention mask covers both paddings and the
        position ids count only real tokens, so every row sees what an unpadded prefill of
        its whole prompt would.
        """
        import torch

        from llama2rlhf.runtime.speedups.dialogue_cache import Batch, gather

        store, name, pad = self._store, self._cache_kwarg, self.tokenizer.pad_token_id
        found = [store.longest(s[:-1]) for s in seqs]
        have = [p for p, _ in found]
        rest = [s[p:-1] for s, p in zip(seqs, have, strict=True)]
        width_p, width_n = max(have), max(len(r) for r in rest)
        width = width_p + width_n + 1
        b = len(seqs)
        input_ids = torch.full((b, width), pad, dtype=torch.long)
        attention = torch.zeros((b, width), dtype=torch.long)
        for row, (s, p, r) in enumerate(zip(seqs, have, rest, strict=True)):
            input_ids[row, width_p - p:width_p] = torch.tensor(s[:p], dtype=torch.long)
            input_ids[row, width - 1 - len(r):] = torch.tensor(r + s[-1:], dtype=torch.long)
            attention[row, width_p - p:width_p] = 1
            attention[row, width - 1 - len(r):] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        cache = reserved_cache(width_n + (gen_kwargs.get("max_new_tokens") or 0) + 1) if self.reserve_cache else None
        if cache is None:
            from transformers.cache_utils import DynamicCache

            cache = DynamicCache()
        stored = gather(found, width_p)
        if stored is not None:
            for layer, (k, v) in enumerate(zip(*stored, strict=True)):
                cache.update(k, v, layer)
        prefix_mask = attention[:, :-1]
        if width_n:
            positions = (prefix_mask.cumsum(-1) - 1).masked_fill(prefix_mask == 0, 0)[:, width_p:]
            forward_kwargs: dict[str, Any] = dict(input_ids=input_ids[:, width_p:-1], attention_mask=prefix_mask,
                                                  position_ids=positions, use_cache=True, **{name: cache})
            if self._logits_to_keep:
                forward_kwargs["logits_to_keep"] = 1
            out = self.model(**forward_kwargs)
            cache = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        layers = getattr(cache, "layers", None)
        if layers is not None and any(s[:-1] not in store for s in seqs):
            # the prompts' part of the cache, copied out of the slots decoding is about to fill
            kept = Batch([layer.keys[:, :, :width - 1].clone() for layer in layers],
                         [layer.values[:, :, :width - 1].clone() for layer in layers])
            rows = []
            for row, (s, p, r) in enumerate(zip(seqs, have, rest, strict=True)):
                spans = ((width_p - p, width_p), (width - 1 - len(r), width - 1))  # the stored part, the new part
                rows.append((s[:-1], row, tuple((a, z) for a, z in spans if z > a)))
            store.put(kept, rows)
        if n > 1:
            cache.batch_repeat_interleave(n)
        out = self.model.generate(input_ids=input_ids.repeat_interleave(n, dim=0),
                                  attention_mask=attention.repeat_interleave(n, dim=0),
                                  num_return_sequences=1, **{name: cache}, **gen_kwargs)
        return out, width

    def sample(
        self, prompts: Sequence[Messages], n: int, temperature: float, max_new_tokens: int, desc: str | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Sample]]:
        import torch
        from tqdm.auto import tqdm

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if temperature == 0 and n > 1:
            raise ValueError("greedy decoding (temperature 0) gives n identical samples; use n=1")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if temperature > 0 and seeds is None:
            seeds = default_seeds(len(prompts))
        ids = self.encode(prompts)
        results: list[list[Sample] | None] = [None] * len(ids)
        tok = self.tokenizer
        eos = tok.eos_token_id
        was_training = self.model.training
        self.model.eval()
        bar = tqdm(total=len(ids) * n, desc=desc or "sampling", unit="sample", disable=not self.show_progress,
                   leave=False)
        try:
            for batch in self.batches([len(x) for x in ids], n, max_new_tokens):
                gen_kwargs: dict[str, Any] = dict(
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=eos,
                    use_cache=True,
                )
                gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                if temperature > 0:
                    keys = row_keys([seeds[i] for i in batch], n)
                    gen_kwargs["logits_processor"] = [seeded_sampling(float(temperature), keys, self.device)]
                with torch.inference_mode():
                    if self._store is not None and self.cache_kwarg() and min(len(ids[i]) for i in batch) > 1:
                        out, width = self._generate_from_store([ids[i] for i in batch], n, **gen_kwargs)
                    else:
                        width = max(len(ids[i]) for i in batch)
                        input_ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
                        attention = torch.zeros((len(batch), width), dtype=torch.long)
                        for row, i in enumerate(batch):
                            input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
                            attention[row, width - len(ids[i]) :] = 1
                        out = self.generate(input_ids, attention, n, **gen_kwargs)
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
            if self._store is not None:
                self._store.end_call()
        return results  # type: ignore[return-value]


def row_keys(seeds: Sequence[int], n: int) -> list[int]:
    """The key of each generated row, ``n`` rows per prompt as ``generate`` lays them out
    (row ``i * n + j`` is sample ``j`` of prompt ``i``): a 64-bit hash of the prompt's seed
    and the sample's index."""
    from llama2rlhf.runtime.seeding import item_seeds

    return [key for seed in seeds for key in item_seeds(seed, range(n))]


_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mix32(x):
    """A 32-bit integer hash (two multiply-xorshift rounds) on an int64 tensor of 32-bit
    values; every product stays below 2**59, so nothing overflows."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK
    return (x >> 16) ^ x


def uniforms(keys, step: int):
    """One number in (0, 1) per row for decoding step ``step``, a hash of the row's key and
    the step (a counter-based generator): the same on any device, in any batch."""
    import torch

    lo, hi = keys & _MASK, (keys >> 32) & _MASK
    h = _mix32(lo ^ _mix32(hi ^ _mix32(torch.full_like(keys, (step * _GOLDEN + 1) & _MASK))))
    return (h.double() + 0.5) / 2.0**32


def seeded_sampling(temperature: float, keys: Sequence[int], device: Any = None):
    """A logits processor that draws each row's next token from softmax(logits /
    temperature) itself, by inverse-CDF sampling with the row's own uniform
    (:func:`uniforms`), and marks it as the only finite logit, so greedy decoding takes it.

    A row's draws depend on its key and the decoding step alone, so a prompt's samples do
    not depend on the batch it is in, on padding, or on the process that samples it
    (``llama2rlhf.runtime.distributed.shard``). One uniform per row and step also replaces
    ``torch.multinomial``'s one exponential per vocabulary entry, which on a CPU takes a
    large share of the sampling time of a small model.
    """
    import torch
    from transformers import LogitsProcessor

    row_keys_t = torch.tensor(list(keys), dtype=torch.long, device=device)

    class SeededSampling(LogitsProcessor):
        def __init__(self):
            self.step = 0

        def __call__(self, input_ids, scores):
            if scores.shape[0] != row_keys_t.shape[0]:
                raise RuntimeError(f"{scores.shape[0]} rows to sample for {row_keys_t.shape[0]} keys")
            cdf = torch.softmax(scores.double() / temperature, dim=-1).cumsum_(-1)
            u = uniforms(row_keys_t.to(scores.device), self.step).unsqueeze(-1) * cdf[:, -1:]
            self.step += 1
            drawn = torch.searchsorted(cdf, u).clamp_(max=scores.shape[-1] - 1)
            return torch.full_like(scores, float("-inf")).scatter_(1, drawn, 0.0)

    return SeededSampling()


@dataclass
class HFSamplerConfig(SamplerConfig):
    """``sampler=hf``: transformers' ``generate``, batched by prompt length under a token
    budget, one prefill per prompt for its K samples."""

    name: str = "hf"
    # memory for the keys and values of dialogues sampled turn by turn (GAtt), so that each
    # turn prefills only its new tokens (HFSampler.keep_prefixes); 0 turns it off
    dialogue_cache_mb: float = 2048.0


def make_hf_sampler(model_path: str, cfg: Any, *, batch_tokens: int = 65536,
                    dialogue_cache_mb: float = 2048.0) -> HFSampler:
    """The ``register_samplers`` factory: the policy in ``model_path`` on the run's device,
    with the ``sampler`` node's ``batch_tokens`` and ``dialogue_cache_mb``."""
    model, tokenizer = load_policy(model_path, cfg)
    return HFSampler(model, tokenizer, batch_tokens=batch_tokens, dialogue_cache_mb=dialogue_cache_mb)


@hookimpl(trylast=True)
def register_samplers(register):
    register("hf", make_hf_sampler)


@hookimpl(trylast=True)
def register_configs(config_store):
    config_store.store(group="sampler", name="hf", node=HFSamplerConfig)
