"""The ``wandb`` logger (``logger=wandb``, the default): W&B runs of a pipeline run.

Each stage of a pipeline run (``sft``, ``round_2/rejection_sampling`` ...) becomes a W&B
run with the stage as its ``job_type``, all in one group (the run directory), with the
resolved Hydra config. While the stage runs, TRL's trainers report through transformers'
own W&B integration into that run (this plugin's ``trainer_report_to`` names ``wandb``;
its ``trainer_callbacks`` add the pipeline-wide run's curves); when it ends, the stage's
numbers are logged under its key and set as the run's summary, rejection sampling and
evaluation add sample tables, and with ``logger.log_models`` (on for the toy model) the checkpoints the
stage produced are logged as model artifacts. At the end a run of job type ``final`` holds
the end-of-run numbers as ``final/*`` (``llama2rlhf.evaluation.final``).

Under a W&B sweep agent (``WANDB_SWEEP_ID`` set) or inside a caller's run (``wandb.run``
exists), a sweep needs one run per process whose summary holds its metric: the pipeline
then logs into that one run, each stage's numbers and trainer curves under the stage's
key, and ``final/*`` at the end.

No account is needed: ``logger.mode=auto`` logs online only when the machine is logged in
(``WANDB_API_KEY`` or ``wandb login``) and offline otherwise, under the run directory's
``wandb/``, for ``wandb sync`` later.
"""

from __future__ import annotations

import logging
import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llama2rlhf import hookimpl
from llama2rlhf.config import LoggerConfig

log = logging.getLogger(__name__)


@dataclass
class _Session:
    """The logger's state during one pipeline run."""

    run: Any = None  # the open W&B run: the stage's, or the pipeline's when single
    single: bool = False  # one run for the whole pipeline (sweep agent, caller's run)
    owned: bool = True  # this logger started ``run`` and finishes it
    key: str = ""  # the running stage's key, for its trainers' curves
    stage_dir: Optional[Path] = None


_session = _Session()


@dataclass
class WandbLoggerConfig(LoggerConfig):
    name: str = "wandb"
    project: str = "llama2rlhf"  # the W&B project the runs go to
    entity: Optional[str] = None  # the W&B user or team; null: the logged-in default
    # one group per pipeline run; by default named after the run directory
    group: Optional[str] = None
    # auto: online when logged in, else offline; or online / offline / disabled
    mode: str = "auto"
    # the checkpoints each stage produced as model artifacts; null (auto): the toy model's
    # (a few MB each), not a real model's (gigabytes per stage: set true to upload them)
    log_models: Optional[bool] = None
    table_rows: int = 64  # most rows of each sample table (rejection sampling, evaluation)


def active(cfg: Any) -> bool:
    return cfg.logger.name == "wandb"


def logs_models(cfg: Any) -> bool:
    wanted = cfg.logger.log_models
    return cfg.model.kind == "toy" if wanted is None else bool(wanted)


def resolved_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        logged_in = False
    return "online" if logged_in else "offline"


def flatten(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """Numbers of a (nested) metrics dict as ``prefix/key/subkey``; lists and text are left out."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}/{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            out[key] = v
    return out


def _tables(ctx, stage: str, rows: int) -> dict[str, Any]:
    import wandb

    from llama2rlhf.data.jsonl import read_jsonl

    d = ctx.stage_dir()
    tables: dict[str, Any] = {}
    if stage == "rejection_sampling" and (d / "candidates.jsonl").exists():
        kept = {(r["prompt_id"], r["completion"]) for _, r in read_jsonl(d / "kept.jsonl")}
        by_prompt: dict[str, list[dict]] = {}
        for _, r in read_jsonl(d / "candidates.jsonl"):
            by_prompt.setdefault(r["prompt_id"], []).append(r)
        table = wandb.Table(columns=["prompt", "candidates", "scores", "chosen"])
        for pid, cands in list(by_prompt.items())[:rows]:
            chosen = next((c["completion"] for c in cands if (pid, c["completion"]) in kept), None)
            table.add_data(cands[0]["prompt"][-1]["content"], "\n---\n".join(c["completion"] for c in cands),
                           ", ".join(f"{c['score']:.3f}" for c in cands), chosen)
        tables["samples"] = table
    if stage == "evaluate" and (d / "heldout_replies.jsonl").exists():
        table = wandb.Table(columns=["prompt", "reply"])
        for _, r in list(read_jsonl(d / "heldout_replies.jsonl"))[:rows]:
            table.add_data(r["prompt"], r["reply"])
        tables["heldout_replies"] = table
    return tables


def _group(ctx) -> str:
    return ctx.cfg.logger.group or f"{ctx.run_dir.parent.name}-{ctx.run_dir.name}"


def _config(ctx, **extra: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return {**OmegaConf.to_container(ctx.cfg, resolve=True), "run_dir": str(ctx.run_dir), **extra}


def _init(ctx, **kwargs: Any):
    import wandb

    mode = resolved_mode(ctx.cfg.logger.mode)
    if mode == "offline":
        # the global settings too: with them online, wandb's telemetry thread still probes
        # the W&B server (a DNS lookup and an HTTPS post) during an offline run
        wandb.setup(wandb.Settings(mode="offline"))
    return wandb.init(dir=str(ctx.run_dir), mode=mode, settings=wandb.Settings(silent=True, console="off"), **kwargs)


def _under_agent() -> bool:
    """True when a W&B sweep agent started this process or the caller already has a run."""
    import wandb

    return bool(os.environ.get("WANDB_SWEEP_ID")) or wandb.run is not None


def _open_single_run(ctx) -> None:
    """One run for the whole pipeline: the caller's, or a new one that attaches to the sweep
    agent's run (``WANDB_RUN_ID``, ``WANDB_SWEEP_ID`` and the sweep's parameters come from
    the environment). No project, entity, group or name: under a sweep wandb ignores
    project and entity (with a warning) and the sweep names and groups its runs."""
    import wandb

    config = _config(ctx)
    _session.single = True
    if wandb.run is not None:
        _session.run, _session.owned = wandb.run, False
        # the caller's own config (a sweep's parameters) stays as it is
        _session.run.config.update({k: v for k, v in config.items() if k not in _session.run.config})
    else:
        # the sweep's parameters are locked in the run's config and win over ours
        _session.run, _session.owned = _init(ctx, config=config, job_type="pipeline"), True


def report_to(cfg: Any) -> list[str]:
    """``report_to`` of a stage's trainer: transformers' W&B integration reports into the
    stage's run, except when one run spans the pipeline (:func:`trainer_callbacks` then)."""
    return ["wandb"] if active(cfg) and not _session.single else []


def trainer_callbacks(cfg: Any) -> list[Any]:
    """Callbacks for a stage's trainer: in a pipeline-wide run (a sweep), its curves under
    the stage's key.

    transformers' ``WandbCallback`` logs every trainer as ``train/*`` against
    ``train/global_step`` and points every key of the run (``define_metric("*")``) at that
    step, which restarts with each trainer: in one run across stages the SFT, reward and
    rejection-sampling curves would share keys and an x-axis that goes back and forth.
    """
    if not (active(cfg) and _session.single and _session.run is not None):
        return []
    from transformers import TrainerCallback
    from transformers.integrations.integration_utils import rewrite_logs

    run, key, stage_dir = _session.run, _session.key, _session.stage_dir

    class StageCurves(TrainerCallback):
        prefix = key

        def on_train_begin(self, args, state, control, **kwargs):
            # a stage that trains twice (the reward stage's safety model) keys the second
            # trainer by its folder: reward/safety/train/loss
            sub = Path(args.output_dir).parent
            if stage_dir is not None and sub.is_relative_to(stage_dir) and sub != stage_dir:
                self.prefix = f"{key}/{sub.relative_to(stage_dir).as_posix()}"
            if state.is_world_process_zero:
                run.define_metric(f"{self.prefix}/train/global_step")
                for kind in ("train", "eval"):
                    run.define_metric(f"{self.prefix}/{kind}/*", step_metric=f"{self.prefix}/train/global_step")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                run.log({**{f"{self.prefix}/{k}": v for k, v in rewrite_logs(logs).items()},
                         f"{self.prefix}/train/global_step": state.global_step})

    return [StageCurves()]


@hookimpl(specname="trainer_report_to")
def _trainer_report_to(cfg: Any, stage: str) -> list[str]:
    return report_to(cfg)


@hookimpl(specname="trainer_callbacks")
def _trainer_callbacks(cfg: Any, stage: str) -> list[Any]:
    return trainer_callbacks(cfg)


@hookimpl
def on_stage_start(ctx, stage: str, round: int) -> None:
    if not active(ctx.cfg):
        return
    key = ctx.stage_key(ctx.current_stage or stage)
    _session.key, _session.stage_dir = key, ctx.stage_dir()
    if _session.run is None and (_session.single or _under_agent()):
        _open_single_run(ctx)
    if _session.single:
        return
    lc = ctx.cfg.logger
    _session.run = _init(ctx, project=lc.project, entity=lc.entity, group=_group(ctx), job_type=stage, name=key,
                         config=_config(ctx, stage=key, round=round), reinit="finish_previous")


@hookimpl
def on_stage_end(ctx, stage: str, round: int, metrics: dict[str, Any]) -> None:
    run = _session.run
    if not active(ctx.cfg) or run is None:
        return
    import wandb

    key = ctx.stage_key(ctx.current_stage or stage)
    flat = flatten(metrics, key)
    tables = {f"{key}/{name}": t for name, t in _tables(ctx, stage, ctx.cfg.logger.table_rows).items()}
    run.log({**flat, **tables})
    run.summary.update(flat)
    if logs_models(ctx.cfg):
        stage_dir = str(ctx.stage_dir())
        for name, path in ctx.state.artifacts.items():
            if path.startswith(stage_dir) and os.path.isdir(path):
                art = wandb.Artifact(f"{_group(ctx)}-{key}-{name}".replace("/", "-"), type="model",
                                     metadata={"stage": key, "artifact": name})
                art.add_dir(path)
                run.log_artifact(art)
    if not _session.single:
        run.finish()
        _session.run = None


@hookimpl
def on_run_end(ctx, summary: dict[str, Any]) -> None:
    """``final/*`` into the pipeline's run (a sweep's metric), or a run of its own in the
    pipeline's group, job type ``final``."""
    global _session
    if not active(ctx.cfg):
        return
    if _session.run is None:  # a resumed run with nothing left to do, or per-stage runs
        if _session.single or _under_agent():
            _open_single_run(ctx)
        else:
            lc = ctx.cfg.logger
            _session.run = _init(ctx, project=lc.project, entity=lc.entity, group=_group(ctx), job_type="final",
                                 name="final", config=_config(ctx, stage="final", round=ctx.round),
                                 reinit="finish_previous")
    run = _session.run
    final = flatten(summary.get("final", {}), "final")
    run.log(final)
    run.summary.update(final)
    if _session.owned:
        run.finish()
    if resolved_mode(ctx.cfg.logger.mode) == "offline":
        log.info("W&B runs saved offline; upload them with: wandb sync %s", ctx.run_dir / "wandb" / "offline-run-*")
    _session = _Session()


@hookimpl(trylast=True)
def register_configs(config_store):
    config_store.store(group="logger", name="wandb", node=WandbLoggerConfig)
