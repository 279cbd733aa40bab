"""The sampler contract every ``register_samplers`` plugin implements, and how the stages
get the selected sampler (:func:`load_sampler`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ContextManager, Protocol, Sequence, runtime_checkable

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sample:
    text: str
    n_tokens: int  # generated tokens, the closing EOS included when there is one
    finished: bool  # stopped at EOS rather than at max_new_tokens


@runtime_checkable
class Sampler(Protocol):
    """What a sampler factory returns (``factory(model_path, cfg, **options)``).

    A sampler may also have ``keep_prefixes()``, a context manager within which it keeps
    what it computed for each prompt, so that a prompt that begins with an earlier one
    (Ghost Attention's dialogues, sampled turn by turn) runs only its new tokens; it
    yields an object with ``hits`` and ``hit_tokens`` counts, or None (:class:`KeepsPrefixes`).
    """

    def sample(self, prompts: Sequence[Messages], n: int, temperature: float, max_new_tokens: int,
               desc: str | None = None) -> list[list[Sample]]:
        """``n`` completions per prompt (a message list), in prompt order; temperature 0 is
        greedy (then ``n`` is 1). ``desc`` is a label for progress output (a bar, a log
        line), such as ``"rejection sampling (K=8, T=0.8)"``."""
        ...


@runtime_checkable
class KeepsPrefixes(Sampler, Protocol):
    """A :class:`Sampler` with the optional ``keep_prefixes()``."""

    def keep_prefixes(self) -> ContextManager[Any]:
        ...


def load_policy(model_path: str, cfg: Any, device: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a saved policy for an HF-based sampler: the causal LM loaded as
    the run loads models (``model.dtype``, ``model.trust_remote_code``), on ``device`` (by
    default the run's: ``device``, or the accelerator of this process)."""
    from llama2rlhf.runtime.distributed import device_for
    from llama2rlhf.runtime.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
    model = load_causal_lm(model_path, cfg).to(device or device_for(cfg))
    return model, tokenizer


def load_sampler(cfg: Any, model_path: str) -> Sampler:
    """The configured sampler (``sampler=<name>``) for the policy saved in ``model_path``;
    a factory that returns something that is not a :class:`Sampler` is refused, naming its
    plugin."""
    from llama2rlhf import plugins

    item = plugins.selected("samplers", cfg)
    sampler = item.call(model_path, cfg)
    if not isinstance(sampler, Sampler):
        raise plugins.PluginError(
            f"sampler {item.name!r} of plugin {item.plugin!r} (distribution {item.distribution or 'unknown'}) "
            f"returned a {type(sampler).__name__}, not a llama2rlhf.sampling.Sampler: it has no "
            "sample(prompts, n, temperature, max_new_tokens, desc=None) method")
    return item.wrap(sampler, "sample", "keep_prefixes")
