"""The example plugin's hooks: one thing of every kind the core has a hook for.

This module is what the ``llama2rlhf`` entry point of this package names, so the core
imports it (once, when it builds the plugin manager) and calls the functions marked with
:data:`llama2rlhf.hookimpl`. Each hook here is a few lines that register or call the
things kept in the modules named after their kind:

* ``register_reward_losses``: ``example_hinge`` (:mod:`.reward_losses`)
* ``register_reward_combiners``: ``example_cautious`` (:mod:`.reward_combiners`)
* ``register_samplers``: ``example_distinct`` (:mod:`.samplers`)
* ``register_selectors``: ``example_threshold`` (:mod:`.selectors`)
* ``register_augmenters``: ``example_system_prompt`` (:mod:`.augmenters`)
* ``register_checkers``: ``example_mentions`` (:mod:`.checkers`)
* ``register_stages``: ``example_length_report`` (:mod:`.stages`)
* ``register_annotators``: ``example_shorter`` (:mod:`.annotators`)
* ``register_configs``: a typed node for each of them, and ``logger=example_events``
* ``on_stage_start``, ``on_stage_end``, ``on_round_end``, ``on_run_end``: the ``example_events`` observer
  (:mod:`.loggers`)

Rules worth copying:

* Keep module-level imports light (no torch, transformers, trl): the CLI imports every
  plugin to build its config groups. Import heavy libraries inside your functions.
* Every hook function name must match a hook in :mod:`llama2rlhf.plugins.hookspecs`; pluggy
  rejects unknown ones when the plugin is registered.
* A name you register must be unique within its kind across all installed plugins; a
  clash is an error that names both plugins. Prefixing names with your package's name, as
  ``example_`` here, avoids clashes.
"""

from __future__ import annotations

from llama2rlhf import RewardCombiner, RewardLoss, Stage, hookimpl
from llama2rlhf.data.strength import MARGINS_SMALL

from . import annotators, augmenters, checkers, loggers, reward_combiners, reward_losses, samplers, selectors, stages

# the names earlier versions of this module defined, for code that imports them from here
from .reward_combiners import cautious_combine
from .reward_losses import ExampleHingeConfig, hinge_loss

NAME = reward_losses.NAME
COMBINER = reward_combiners.NAME

__all__ = ["COMBINER", "NAME", "ExampleHingeConfig", "cautious_combine", "hinge_loss"]


@hookimpl
def register_reward_losses(register):
    """``reward_loss=example_hinge``. Wrapping the loss in :class:`llama2rlhf.RewardLoss` with
    a ``margins`` table tells the reward stage to turn each pair's annotated strength into
    its ``margin``; here the paper's small margins (Table 27: 1, 2/3, 1/3, 0). Register a
    bare callable instead to get ``margin=None`` unless the data carries a ``margin`` column."""
    register(reward_losses.NAME, RewardLoss(hinge_loss, margins=MARGINS_SMALL))


@hookimpl
def register_reward_combiners(register):
    """``reward=example_cautious``; ``needs`` lists the reward models it reads, so a run
    without a safety reward model falls back to ``single`` instead of failing."""
    register(reward_combiners.NAME, RewardCombiner(cautious_combine, needs=("helpfulness", "safety")))


@hookimpl
def register_samplers(register):
    """``sampler=example_distinct``: a factory ``(model_path, cfg, **options) -> sampler``."""
    register(samplers.NAME, samplers.make_distinct_sampler)


@hookimpl
def register_selectors(register):
    """``selector=example_threshold``: ``select(candidates, history, **options)``."""
    register(selectors.NAME, selectors.threshold_select)


@hookimpl
def register_augmenters(register):
    """``augmenter=example_system_prompt``: ``augment(rows, ctx, **options) -> rows``."""
    register(augmenters.NAME, augmenters.system_prompt_augment)


@hookimpl
def register_checkers(register):
    """``checker=example_mentions``: a factory ``(cfg, **options) -> check(instruction, reply)``."""
    register(checkers.NAME, checkers.make_mentions_checker)


@hookimpl
def register_stages(register):
    """``example_length_report``, run where a pipeline list names it (``pipeline.round_stages``).
    A stage is registered as a :class:`llama2rlhf.Stage`; its metrics go into ``summary.json``
    under its name (``Stage(run, summary_key=...)`` for another key, ``None`` for the round's
    entry itself)."""
    register(stages.NAME, Stage(stages.length_report_stage))


@hookimpl
def register_annotators(register):
    """``annotator=example_shorter``: a factory ``(cfg, world, **options) -> annotator``."""
    register(annotators.NAME, annotators.make_shorter_annotator)


@hookimpl
def register_configs(config_store):
    """A typed node per option, each in the config group that selects it.

    Without a node the name would still be selectable (the core stores a plain node with
    just ``name``), but ``reward_loss.width=...`` would be an unknown key. Each node
    subclasses the group's schema from :mod:`llama2rlhf.config` and sets ``name``; its
    other fields reach the registered thing as keyword arguments, typed as declared.
    ``logger`` is not a registry kind: a node there is all a logger needs to be selectable
    (``summary.json`` names this plugin as the logger's, from the node).
    """
    config_store.store(group="reward_loss", name=reward_losses.NAME, node=ExampleHingeConfig)
    config_store.store(group="sampler", name=samplers.NAME, node=samplers.ExampleDistinctConfig)
    config_store.store(group="selector", name=selectors.NAME, node=selectors.ExampleThresholdConfig)
    config_store.store(group="augmenter", name=augmenters.NAME, node=augmenters.ExampleSystemPromptConfig)
    config_store.store(group="annotator", name=annotators.NAME, node=annotators.ExampleShorterConfig)
    config_store.store(group="logger", name=loggers.NAME, node=loggers.ExampleEventsConfig)


@hookimpl
def on_stage_start(ctx, stage, round):
    loggers.on_stage_start(ctx, stage, round)


@hookimpl
def on_stage_end(ctx, stage, round, metrics):
    loggers.on_stage_end(ctx, stage, round, metrics)


@hookimpl
def on_round_end(ctx, round, summary):
    loggers.on_round_end(ctx, round, summary)


@hookimpl
def on_run_end(ctx, summary):
    loggers.on_run_end(ctx, summary)
