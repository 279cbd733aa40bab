"""The pipeline: base model, the configured stages, then the RLHF rounds.

Each stage runs once per run directory: a finished stage is recorded in ``state.json``
with the artifacts it produced, and skipped when the same run directory is used again; a
stage that did not finish (the run was killed in it) runs again from its start, and
rewrites whatever its earlier attempt left in its folder. A run directory that holds done
stages the config does not plan, or artifacts gone from disk, is refused before anything
runs (:func:`check_run_directory`).
``summary.json``'s ``plugins`` says which plugin provided what the run selected of every
kind, with its options (:func:`selected_plugins`).

Under ``accelerate launch`` every process runs this same loop: stages train on every
process, the observer hooks run on the main process only, and after each stage every
process takes the main process's metrics and state (``llama2rlhf.runtime.distributed``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

from llama2rlhf import plugins
from llama2rlhf.config import node_plugin, round_stage_keys
from llama2rlhf.evaluation.final import final_metrics
from llama2rlhf.runtime import artifacts, distributed
from llama2rlhf.runtime.run import RunContext, run_dir_problems
from llama2rlhf.runtime.seeding import seed_everything

log = logging.getLogger(__name__)

# what a stage's run(ctx) returns (hookspecs.register_stages)
METRICS = plugins.Returns("a mapping of metric names to values, or None",
                          lambda metrics, ctx: None if metrics is None or isinstance(metrics, Mapping)
                          else plugins.describe_value(metrics))


def make_world(cfg: Any):
    if cfg.data.source != "toy":
        return None
    from llama2rlhf.toyworld import ToyWorld, WorldSpec

    return ToyWorld(WorldSpec(**dict(cfg.toyworld)))


def run_stage(ctx: RunContext, name: str, as_name: str | None = None) -> None:
    """Run stage ``name`` unless done; ``as_name`` runs it a second time in a round under
    another key, folder and summary entry (rejection sampling after PPO)."""
    as_name = as_name or name
    key = ctx.stage_key(as_name)
    if ctx.state.is_done(key):
        log.info("stage %s already done in %s; skipping", key, ctx.run_dir)
        return
    stage = plugins.named("stages", name)
    ctx.current_stage = as_name
    distributed.main_process_only(plugins.call_hook, "on_stage_start", ctx=ctx, stage=name, round=ctx.round)
    log.info("stage %s (plugin %s)", key, stage.plugin)
    # from the stage's own seed, so that its result does not depend on what ran before it
    # in this process: a stage redone on resuming gives what the uninterrupted run gave
    seed_everything(ctx.seed())
    started = time.perf_counter()
    metrics = stage.check(METRICS, stage.call(ctx), ctx) or {}
    seconds = time.perf_counter() - started
    # what the main process did alone (sampling, scoring, evaluation) is in its metrics and
    # state only: every process carries on from those
    metrics = distributed.from_main(metrics)
    ctx.sync_from_main()
    target = ctx.summary if ctx.round == 0 else ctx.round_summary()
    summary_key = stage.obj.summary_key  # None: merged into the round's entry
    if as_name != name:  # rs -> rs_after_ppo
        summary_key = (summary_key or name) + as_name[len(name):]
    if summary_key is None:
        target.update(metrics)
    else:
        target[summary_key] = metrics
    ctx.summary.setdefault("timings", {})[key] = round(seconds, 2)
    ctx.log_metrics(key, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    ctx.save_summary()
    ctx.state.mark_done(key)
    distributed.main_process_only(plugins.call_hook, "on_stage_end", ctx=ctx, stage=name, round=ctx.round,
                                  metrics=metrics)


def round_plan(cfg: Any, k: int) -> list[tuple[str, str]]:
    """(stage, name it runs as) for round ``k``: ``pipeline.round_stages``, with
    ``pipeline.ppo_stages`` after rejection sampling in a PPO round (paper 3.2.3: RLHF-V5 is
    rejection sampling on top of V4's PPO model). A stage that already ran in the round runs
    again as ``<stage>_after_<the stage before it>``."""
    stages = [name for name, _ in round_stage_keys(cfg, k)]
    plan: list[tuple[str, str]] = []
    for i, name in enumerate(stages):
        seen = any(n == name for n, _ in plan)
        plan.append((name, f"{name}_after_{stages[i - 1]}" if seen else name))
    return plan


def stages_used(cfg: Any) -> list[str]:
    """The stages a run of ``cfg`` runs, each once, in the order they first run."""
    names = list(cfg.pipeline.stages)
    for k in range(1, cfg.pipeline.rounds + 1):
        names += [name for name, _ in round_plan(cfg, k)]
    return list(dict.fromkeys(names))


def planned_keys(cfg: Any) -> list[str]:
    """Every key a run of ``cfg`` records as done in ``state.json``, in order: ``base``, the
    stages of ``pipeline.stages``, then each round's stages (``round_<k>/<name it runs
    as>``) and the round itself (``round_<k>``)."""
    keys = ["base", *cfg.pipeline.stages]
    for k in range(1, cfg.pipeline.rounds + 1):
        keys += [f"round_{k}/{as_name}" for _, as_name in round_plan(cfg, k)] + [f"round_{k}"]
    return keys


def check_run_directory(cfg: Any, run_dir: Path, stages: list[str]) -> list:
    """The check (``llama2rlhf.recipe.validate``) of the run directory a resumed run
    continues: ``state.json`` and ``summary.json`` readable, every done stage one this
    config plans and a plugin registers, every artifact still on disk
    (``llama2rlhf.runtime.run.run_dir_problems``)."""
    return run_dir_problems(Path(run_dir), planned_keys(cfg))


def selected_plugins(cfg: Any) -> dict[str, Any]:
    """What the run selected of every kind, by config group (``reward_loss``, ``reward``,
    ``sampler`` ...), then ``logger`` and the ``stages`` it runs: each with its name, the
    plugin that provides it, that plugin's distribution and version, and its options."""
    out: dict[str, Any] = {}
    for kind, spec in plugins.KINDS.items():
        if spec.group is not None:
            out[spec.group] = plugins.selected(kind, cfg).record()
    out["logger"] = logger_record(cfg)
    out["stages"] = {}
    for name in stages_used(cfg):
        stage = plugins.named("stages", name)
        out["stages"][name] = {**stage.record(), "summary_key": stage.obj.summary_key}
    return out


def logger_record(cfg: Any) -> dict[str, Any]:
    """``logger=<name>`` as :func:`selected_plugins` records it: the plugin is the one whose
    ``register_configs`` stored the ``logger`` node of that name (none: the core's own
    ``conf/logger/<name>.yaml``), its options the node's other keys."""
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(cfg.logger, resolve=True, enum_to_str=True) if OmegaConf.is_config(
        cfg.logger) else dict(cfg.logger)
    name = options.pop("name")
    plugin = node_plugin("logger", name)
    distribution = plugins.distribution_of(plugin) if plugin else plugins.BUILTIN_DISTRIBUTION
    return {"name": name, "plugin": plugin, "distribution": distribution,
            "version": plugins.version_of(distribution), "options": options}


def run(cfg: Any, run_dir: Path) -> RunContext:
    from llama2rlhf.reward.combined import own_reward_models
    from llama2rlhf.runtime.models import build_base

    distributed.setup(cfg)
    # one run directory, the main process's: Hydra's ${now:...} can differ between processes
    run_dir = Path(distributed.from_main(str(run_dir)))
    # a run directory that cannot be continued stops the run here, before anything is written
    ctx = RunContext.open(cfg, run_dir, make_world(cfg), plan=planned_keys(cfg))
    distributed.wait_for_everyone()  # all have read state.json before the main process rewrites it
    ctx.summary["num_processes"] = distributed.num_processes()
    ctx.summary["plugins"] = selected_plugins(cfg)
    ctx.save_summary()
    if not ctx.state.is_done("base"):
        # the starting checkpoints: the policy's, and reward models the config names itself
        own = {artifacts.REWARD_MODELS[name]: path for name, path in own_reward_models(cfg).items()}
        ctx.state.mark_done("base", {**distributed.main_process_only(build_base, cfg, ctx.world, run_dir / "base"),
                                     **own})
    for name in cfg.pipeline.stages:
        run_stage(ctx, name)
    # RLHF-V1 .. V<rounds> (paper 3.2.3): fresh comparisons from the newest policy, a new
    # reward model, rejection sampling, evaluation
    for k in range(1, cfg.pipeline.rounds + 1):
        ctx.round = k
        for name, as_name in round_plan(cfg, k):
            run_stage(ctx, name, as_name)
        if not ctx.state.is_done(f"round_{k}"):
            distributed.main_process_only(plugins.call_hook, "on_round_end", ctx=ctx, round=k,
                                          summary=ctx.round_summary())
            ctx.state.mark_done(f"round_{k}")
    ctx.round = 0
    ctx.summary["final"] = final_metrics(ctx.summary)
    ctx.save_summary()
    # rewritten on every run, a resumed one too, so it always matches summary.json
    from llama2rlhf.evaluation.report import write_report

    distributed.main_process_only(write_report, run_dir, ctx.summary, cfg)
    distributed.main_process_only(plugins.call_hook, "on_run_end", ctx=ctx, summary=ctx.summary)
    return ctx
