"""llama2rlhf: the Llama 2 chat RLHF recipe as a plugin framework on Hugging Face TRL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("llama2rlhf")


@dataclass(frozen=True)
class RewardLoss:
    """A pairwise reward loss plus the strength -> margin table it reads (paper Table 27).

    ``fn(r_chosen, r_rejected, margin, **options)`` returns a scalar loss; ``margin`` is
    ``None`` when neither the data nor ``margins`` give one.
    """

    fn: Callable[..., Any]
    margins: Mapping[str, float] | None = field(default=None)

    def __call__(self, r_chosen, r_rejected, margin=None, **options):
        return self.fn(r_chosen, r_rejected, margin, **options)


@dataclass(frozen=True)
class RewardCombiner:
    """Several reward models' scores -> the one reward of the pipeline (paper 3.2.3, "PPO").

    ``fn(scores, is_safety, **options)`` gets ``scores``, a dict from reward-model name
    (``"helpfulness"``, ``"safety"``) to float tensors of one shape, and ``is_safety``, a
    bool tensor that broadcasts against them (True where the prompt is a safety prompt);
    it returns a float tensor of the scores' shape. ``needs`` names the reward models it
    reads: the pipeline only selects a combiner whose models it has.
    """

    fn: Callable[..., Any]
    needs: tuple[str, ...] = ("helpfulness",)

    def __call__(self, scores, is_safety, **options):
        missing = [name for name in self.needs if name not in scores]
        if missing:
            raise ValueError(f"this reward combiner needs the {', '.join(missing)} reward model(s); "
                             f"got scores of: {', '.join(scores) or '(none)'}")
        return self.fn(scores, is_safety, **options)


class _RegisteredName:
    def __repr__(self) -> str:
        return "Stage.NAME"


@dataclass(frozen=True)
class Stage:
    """A pipeline stage, registered with ``register_stages`` and listed by name in
    ``pipeline.stages``, ``pipeline.round_stages`` or ``pipeline.ppo_stages``.

    ``run(ctx) -> dict`` runs it (see ``llama2rlhf.plugins.hookspecs.register_stages``) and
    returns its metrics. ``summary_key`` is where ``summary.json`` keeps them: by default
    (``Stage.NAME``) under the name the stage is registered as, under another key when
    given (several stages may share one, as ``ppo``, ``rloo`` and ``grpo`` do), or merged
    into the round's entry with ``None``.

    ``uses`` names the plugin kinds it calls (``"samplers"``, ``"selectors"``... as in
    ``llama2rlhf.plugins.KINDS``): a run that plans the stage has the options of what the
    config selects of those kinds checked before it starts; ``None`` (the default) checks
    every kind.

    ``needs`` names the artifacts (``ctx.state.artifacts``) it reads, which a stage planned
    before it must make, and ``makes`` those it writes or may write; with both declared,
    ``llama2rlhf --validate`` finds a stage listed before the one that makes what it reads.
    The run's start makes ``base`` and ``tokenizer``.
    """

    NAME: ClassVar[Any] = _RegisteredName()

    run: Callable[[Any], Mapping[str, Any] | None]
    summary_key: str | None = NAME
    uses: tuple[str, ...] | None = None
    needs: tuple[str, ...] = ()
    makes: tuple[str, ...] = ()

    def __call__(self, ctx):
        return self.run(ctx)


__all__ = ["RewardCombiner", "RewardLoss", "Stage", "hookimpl", "__version__"]
