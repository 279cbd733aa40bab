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
               desc: str | None = None, seeds: Sequence[int] | None = None) -> list[list[Sample]]:
        """``n`` completions per prompt (a message list), in prompt order; temperature 0 is
        greedy (then ``n`` is 1). ``desc`` is a label for progress output (a bar, a log
        line), such as ``"rejection sampling (K=8, T=0.8)"``.

        ``seeds``: one seed per prompt. The samples of prompt ``i`` then depend on the
        prompt, ``seeds[i]`` and the other arguments alone, not on which other prompts share
        the call: this is what lets several processes sample their own shares and get what
        one process sampling everything gets. None: draw from torch's generator
        (:func:`default_seeds`)."""
        ...


@runtime_checkable
class KeepsPrefixes(Sampler, Protocol):
    """A :class:`Sampler` with the optional ``keep_prefixes()``."""

    def keep_prefixes(self) -> ContextManager[Any]:
        ...


def default_seeds(count: int) -> list[int]:
    """Seeds for a call that got none: from torch's generator, which the pipeline seeds
    before every stage, so a redone stage draws the same samples."""
    import torch

    from llama2rlhf.runtime.seeding import item_seeds

    return item_seeds(int(torch.randint(0, 2**62, (1,)).item()), range(count))


def takes_seeds(sample: Any) -> bool:
    """Whether a ``sample`` method has the ``seeds`` parameter (or takes any keyword)."""
    import inspect

    try:
        params = inspect.signature(sample).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "seeds" or p.kind is p.VAR_KEYWORD for p in params)


class SeedsThroughGenerator:
    """A sampler whose ``sample`` takes no ``seeds``, behind the full contract: torch's
    generator is seeded from a call's first seed, so each call is reproducible, though a
    prompt's samples depend on the others in its call (and so on the number of processes)."""

    def __init__(self, sampler: Any):
        object.__setattr__(self, "__wrapped__", sampler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__wrapped__, name, value)

    def sample(self, prompts: Sequence[Messages], n: int, temperature: float, max_new_tokens: int,
               desc: str | None = None, seeds: Sequence[int] | None = None) -> list[list[Sample]]:
        if seeds:
            import torch

            torch.manual_seed(seeds[0])
        return self.__wrapped__.sample(prompts, n, temperature, max_new_tokens, desc=desc)


def load_policy(model_path: str, cfg: Any, device: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a saved policy for an HF-based sampler: the causal LM loaded as
    the run loads models (``model.dtype``, ``model.trust_remote_code``), on ``device`` (by
    default the run's: ``device``, or the accelerator of this process). A policy this process
    has just trained and saved there comes from memory, not from the folder
    (``llama2rlhf.runtime.models.take_handoff``): the same weights, without reading them back."""
    from llama2rlhf.runtime.distributed import device_for
    from llama2rlhf.runtime.models import load_causal_lm, load_tokenizer, take_handoff, torch_dtype

    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
    model = take_handoff(model_path)
    if model is None:
        model = load_causal_lm(model_path, cfg)
    else:
        dtype = torch_dtype(cfg.model.dtype)
        model = model.to(dtype=dtype) if dtype is not None and dtype != "auto" else model
    return model.to(device or device_for(cfg)).eval(), tokenizer


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
            "sample(prompts, n, temperature, max_new_tokens, desc=None, seeds=None) method (see register_samplers)")
    if not takes_seeds(sampler.sample):
        sampler = SeedsThroughGenerator(sampler)
    return item.wrap(sampler, "sample", "keep_prefixes", returns={"sample": SAMPLES})

