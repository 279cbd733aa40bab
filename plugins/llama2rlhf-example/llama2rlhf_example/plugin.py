"""The example plugin: a reward loss with its own typed config, and a reward combiner.

This module is what the ``llama2rlhf`` entry point of this package names, so the core
imports it (once, when it builds the plugin manager) and calls the functions marked with
:data:`llama2rlhf.hookimpl`. It shows the two hooks a plugin with an option needs:

* :func:`register_reward_losses` makes the loss selectable as ``reward_loss=example_hinge``;
* :func:`register_configs` gives it a structured config node, so that
  ``reward_loss.width=0.5`` is type-checked by Hydra before any work starts, and the
  reward stage passes ``width`` to the loss as a keyword argument;
* :func:`register_reward_combiners` adds ``reward=example_cautious``, a different rule for
  turning the helpfulness and safety reward models into one reward.

Rules worth copying:

* Keep module-level imports light (no torch, transformers, trl): the CLI imports every
  plugin to build its config groups. Import heavy libraries inside your functions.
* Every hook function name must match a hook in :mod:`llama2rlhf.hookspecs`; pluggy
  rejects unknown ones when the plugin is registered.
* A name you register must be unique within its kind across all installed plugins; a
  clash is an error that names both plugins.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama2rlhf import RewardCombiner, RewardLoss, hookimpl
from llama2rlhf.config import RewardLossConfig
from llama2rlhf.data.strength import MARGINS_SMALL

NAME = "example_hinge"
COMBINER = "example_cautious"


def hinge_loss(r_chosen, r_rejected, margin=None, *, width: float = 1.0):
    """Hinge pairwise loss: ``mean(relu(width + margin - (r_chosen - r_rejected)))``.

    The reward model pays nothing once the chosen reply out-scores the rejected one by at
    least ``width + margin``, and a linear penalty below that. ``margin`` is the per-pair
    margin from the strength label (``None``, read as 0, when the data has no strength).

    The signature is the reward-loss contract (see
    :func:`llama2rlhf.hookspecs.register_reward_losses`): ``r_chosen`` and ``r_rejected``
    are float tensors of shape ``(batch,)``, ``margin`` a tensor of that shape or ``None``,
    and every extra field of the selected ``reward_loss`` config node (here ``width``)
    arrives as a keyword argument. Return a scalar tensor.
    """
    import torch  # lazily: importing the plugin must stay cheap

    gap = width - (r_chosen - r_rejected)
    if margin is not None:
        gap = gap + margin
    return torch.relu(gap).mean()


@dataclass
class ExampleHingeConfig(RewardLossConfig):
    """The ``reward_loss`` node for ``example_hinge``.

    Subclass :class:`llama2rlhf.config.RewardLossConfig` and set ``name`` to the registered
    name; every other field is an option of your loss, typed by its annotation
    (``reward_loss.width=abc`` is rejected because ``width`` is a float).
    """

    name: str = NAME
    width: float = 1.0


@hookimpl
def register_reward_losses(register):
    """Register the hinge loss under ``example_hinge``.

    Wrapping it in :class:`llama2rlhf.RewardLoss` with a ``margins`` table tells the reward
    stage to turn each pair's annotated strength into its ``margin``; here the paper's
    small margins (Table 27: 1, 2/3, 1/3, 0). Register a bare callable instead to get
    ``margin=None`` unless the data carries a ``margin`` column itself.
    """
    register(NAME, RewardLoss(hinge_loss, margins=MARGINS_SMALL))


@hookimpl
def register_configs(config_store):
    """Store the typed config node as option ``example_hinge`` of the ``reward_loss`` group.

    Without this hook the name would still be selectable (the core stores a plain node with
    just ``name``), but ``reward_loss.width=...`` would be an unknown key.
    """
    config_store.store(group="reward_loss", name=NAME, node=ExampleHingeConfig)


def cautious_combine(scores, is_safety):
    """A reply is worth its worse score: ``min(helpfulness, safety)``, on every prompt.

    The reward-combiner contract (see :func:`llama2rlhf.hookspecs.register_reward_combiners`):
    ``scores`` maps reward-model names to raw score tensors of one shape (``(batch,)`` when
    replies are scored, ``(batch, tokens)`` inside PPO), ``is_safety`` is a bool tensor that
    broadcasts against them. Stay elementwise; the pipeline whitens what you return.
    Llama 2's own rule (``reward=llama2``) trusts helpfulness unless the prompt is a safety
    prompt or the safety score is low; this one never lets helpfulness outvote safety.
    """
    import torch

    return torch.minimum(scores["helpfulness"], scores["safety"])


@hookimpl
def register_reward_combiners(register):
    """Register ``example_cautious``; ``needs`` lists the reward models it reads, so a run
    without a safety reward model falls back to ``single`` instead of failing."""
    register(COMBINER, RewardCombiner(cautious_combine, needs=("helpfulness", "safety")))
