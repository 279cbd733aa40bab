"""The sampler contract every ``register_samplers`` plugin implements, and how the stages
get the selected sampler (:func:`load_sampler`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ContextManager, Protocol, Sequence, runtime_checkable

from llama2rlhf.plugins import Returns, describe_value

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


def _samples_problem(result: Any, prompts: Sequence[Messages], n: int, *args: Any, **kwargs: Any) -> str | None:
    """What is wrong with what ``sample(prompts, n, ...)`` returned, or None."""
    if not isinstance(result, (list, tuple)):
        return describe_value(result)
    if len(result) != len(prompts):
        return f"{len(result)} lists of samples for {len(prompts)} prompts"
    for i, samples in enumerate(result):
        if not isinstance(samples, (list, tuple)):
            return f"{describe_value(samples)} for prompt {i}"
        if len(samples) != n:
            return f"{len(samples)} samples for prompt {i} (n={n})"
        bad = [s for s in samples if not isinstance(s, Sample)]
        if bad:
            return f"{describe_value(bad[0])} among the samples of prompt {i}"
    return None


SAMPLES = Returns("for each prompt, in order, a list of n llama2rlhf.sampling.Sample", _samples_problem)


def load_sampler(cfg: Any, model_path: str) -> Sampler:
    """The configured sampler (``sampler=<name>``) for the policy saved in ``model_path``;
    a factory that returns something that is not a :class:`Sampler`, or a third-party
    sampler whose ``sample`` returns something else than ``n`` :class:`Sample` objects per
    prompt, is refused with an error that names its plugin."""
    from llama2rlhf import plugins

    item = plugins.selected("samplers", cfg)
    sampler = item.call(model_path, cfg)
    if not isinstance(sampler, Sampler):
        raise plugins.PluginError(
            f"{item.who} returned {describe_value(sampler)}; expected a llama2rlhf.sampling.Sampler, with a "
            "sample(prompts, n, temperature, max_new_tokens, desc=None) method (see register_samplers)")
    return item.wrap(sampler, "sample", "keep_prefixes", returns={"sample": SAMPLES})

