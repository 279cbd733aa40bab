"""The sampler interface every ``register_samplers`` plugin implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sample:
    text: str
    n_tokens: int  # generated tokens, the closing EOS included when there is one
    finished: bool  # stopped at EOS rather than at max_new_tokens


class Sampler(Protocol):
    def sample(
        self, prompts: Sequence[Messages], n: int, temperature: float, max_new_tokens: int
    ) -> list[list[Sample]]:
        """``n`` completions per prompt, in prompt order; temperature 0 is greedy."""
        ...


def load_sampler(cfg, model_path: str, device=None):
    """The configured sampler plugin (``sampler=<name>``) around a saved policy."""
    from llama2rlhf import plugins
    from llama2rlhf.runtime.distributed import device_for
    from llama2rlhf.runtime.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
    model = load_causal_lm(model_path, cfg).to(device or device_for(cfg))
    return plugins.get("samplers", cfg.sampler.name).obj(model, tokenizer, cfg)
