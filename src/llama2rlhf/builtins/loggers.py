"""The ``wandb`` logger (``logger=wandb``): one W&B run per stage, grouped per pipeline run.

Each stage of a pipeline run (``sft``, ``round_2/rejection_sampling`` ...) becomes a W&B
run with the stage as its ``job_type``, all in one group (the run directory), with the
resolved Hydra config. While the stage runs, TRL's trainers report through transformers'
own W&B integration (``report_to=["wandb"]``) into that run; when it ends, the stage's
numbers are logged under its key and set as the run's summary, rejection sampling and
evaluation add sample tables, and with ``logger.log_models=true`` the checkpoints the
stage produced are logged as model artifacts.

No account is needed: ``logger.mode=auto`` logs online only when the machine is logged in
(``WANDB_API_KEY`` or ``wandb login``) and offline otherwise, under the run directory's
``wandb/``, for ``wandb sync`` later.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass
from typing import Any, Optional

from .. import hookimpl
from ..config import LoggerConfig

_run: Any = None  # the W&B run of the stage that is running


@dataclass
class WandbLoggerConfig(LoggerConfig):
    name: str = "wandb"
    project: str = "llama2rlhf"
    entity: Optional[str] = None
    # one group per pipeline run; by default named after the run directory
    group: Optional[str] = None
    # auto: online when logged in, else offline; or online / offline / disabled
    mode: str = "auto"
    log_models: bool = False
    table_rows: int = 64


def active(cfg: Any) -> bool:
    return cfg.logger.name == "wandb"


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

    from ..data.jsonl import read_jsonl

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


@hookimpl
def on_stage_start(ctx, stage: str, round: int) -> None:
    global _run
    if not active(ctx.cfg):
        return
    import wandb
    from omegaconf import OmegaConf

    lc = ctx.cfg.logger
    key = ctx.stage_key(ctx.current_stage or stage)
    _run = wandb.init(
        project=lc.project, entity=lc.entity, group=lc.group or f"{ctx.run_dir.parent.name}-{ctx.run_dir.name}",
        job_type=stage, name=key, config=OmegaConf.to_container(ctx.cfg, resolve=True),
        dir=str(ctx.run_dir), mode=resolved_mode(lc.mode), reinit="finish_previous",
        settings=wandb.Settings(silent=True, console="off"),
    )
    _run.config.update({"stage": key, "round": round}, allow_val_change=True)


@hookimpl
def on_stage_end(ctx, stage: str, round: int, metrics: dict[str, Any]) -> None:
    global _run
    if not active(ctx.cfg) or _run is None:
        return
    import wandb

    key = ctx.stage_key(ctx.current_stage or stage)
    flat = flatten(metrics, key)
    tables = {f"{key}/{name}": t for name, t in _tables(ctx, stage, ctx.cfg.logger.table_rows).items()}
    _run.log({**flat, **tables})
    _run.summary.update(flat)
    if ctx.cfg.logger.log_models:
        stage_dir = str(ctx.stage_dir())
        for name, path in ctx.state.artifacts.items():
            if path.startswith(stage_dir) and os.path.isdir(path):
                art = wandb.Artifact(f"{_run.group}-{key}-{name}".replace("/", "-"), type="model",
                                     metadata={"stage": key, "artifact": name})
                art.add_dir(path)
                _run.log_artifact(art)
    _run.finish()
    _run = None


@hookimpl(trylast=True)
def register_configs(config_store):
    config_store.store(group="logger", name="wandb", node=WandbLoggerConfig)
