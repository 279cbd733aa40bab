"""W&B sweeps (``conf/sweeps/``) and Hydra's ``--multirun``.

A real sweep needs the W&B server: it validates the sweep file against its JSON schema
(``wandb sweep``) and hands each agent a parameter set. Offline we check what wandb 0.31
itself does on this machine: its loader (``load_sweep_config``), then W&B's own JSON-schema
validator, ``sweeps.schema_violations_from_proposed_config`` (the ``sweeps`` package of
``wandb[sweeps]``, which ``wandb sweep --controller`` runs; the Makefile installs it), and a
few checks of our own; every parameter value must compose with Hydra; the agent's macro expansion of
``command`` turns a parameter set into a command line, which runs the tiny pipeline and
must leave the sweep's metric in the offline run's summary. The agent's own run (one per
process, ``WANDB_SWEEP_ID`` set) is faked with the environment the agent gives its
command: a preset run id and the parameter file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from test_pipeline import CLI, OFFLINE, SFT_RM, TINY, TINY_WANDB
from test_wandb_logger import read_offline_run

SWEEPS = resources.files("llama2rlhf.config").joinpath("conf", "sweeps")
# one parameter set per sweep file, for the runs below; each value must be one the file
# allows (checked)
PARAMS = {
    "reward_model.yaml": {"reward_loss": "margin_large", "reward_loss.margin_scale": 0.5,
                          "reward_model.learning_rate": 0.002},
    "rejection_sampling.yaml": {"rs.k": 4, "rs.temperatures": "[0.2,0.35,0.5]", "selector": "best_of_k"},
}
METHODS = {"grid", "random", "bayes"}
DISTRIBUTIONS = {"log_uniform_values", "uniform", "int_uniform", "q_log_uniform_values", "normal"}


def load(name: str) -> dict:
    from wandb.sdk.launch.sweeps.utils import load_sweep_config

    config = load_sweep_config(str(SWEEPS / name))  # what `wandb sweep <file>` reads
    assert config, f"wandb could not load {name}"
    return config


def expand(config: dict, params: dict) -> list[str]:
    """The command line a W&B agent runs for ``params``.

    wandb's own code for the parts it exposes: ``create_sweep_command`` (``${envvar:...}``
    macros) and ``create_sweep_command_args`` (the ``args*`` renderings of the parameters).
    The last step, replacing each ``${name}`` element by its list, is inline in
    ``wandb.wandb_agent.Agent._command_run``; this loop mirrors it (an unknown macro
    expands to nothing there too)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars.update(interpreter=["python"], program=[config.get("program")], env=["/usr/bin/env"])
    out: list[str] = []
    for c in create_sweep_command(list(config["command"])):
        c = str(c)
        if c.startswith("${") and c.endswith("}"):
            out += sweep_vars.get(c[2:-1]) or []
        else:
            out.append(c)
    return out


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from llama2rlhf.config import store_configs

    store_configs()
    with initialize_config_module(config_module="llama2rlhf.config.conf", version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def fixed_overrides(config: dict) -> list[str]:
    """The command's own overrides: between the program and the parameters."""
    command = config["command"]
    return command[command.index("llama2rlhf") + 1:command.index("${args_no_hyphens}")]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_sweep_file_loads_with_wandb_and_is_well_formed(name):
    from sweeps import schema_violations_from_proposed_config

    config = load(name)
    assert schema_violations_from_proposed_config(config) == []
    assert config["method"] in METHODS
    assert config["metric"]["goal"] == "maximize"
    # a stable name, whatever the number of rounds
    assert config["metric"]["name"].startswith("final/")
    assert config["project"] == "llama2rlhf"
    command = config["command"]
    assert command[:2] == ["${env}", "llama2rlhf"] and command[-1] == "${args_no_hyphens}"
    for key, spec in config["parameters"].items():
        allowed = {"values", "value", "distribution", "min", "max", "q", "mu", "sigma", "probabilities"}
        assert set(spec) <= allowed, f"{name}: {key}: unknown fields {set(spec) - allowed}"
        if config["method"] == "grid":
            assert "values" in spec, f"{name}: {key}: a grid sweep needs values"
        if "distribution" in spec:
            assert spec["distribution"] in DISTRIBUTIONS and spec["min"] < spec["max"]
        else:
            assert spec["values"], f"{name}: {key}: no values"
    assert set(PARAMS[name]) == set(config["parameters"])


def test_the_schema_validator_catches_a_broken_sweep():
    from sweeps import schema_violations_from_proposed_config

    config = load("reward_model.yaml")
    config["parameters"]["reward_model.learning_rate"] = {"distribution": "log_uniform_values", "mni": 1e-4}
    config["method"] = "bayesian"
    violations = " ".join(schema_violations_from_proposed_config(config))
    assert "bayesian" in violations and "reward_model.learning_rate" in violations


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_every_sweep_value_is_a_valid_hydra_override(fresh, name):
    """Each value, as the agent renders it (``key=str(value)``), composes with the command's
    fixed overrides into the value the sweep means; a mistyped key or value fails here."""
    config = load(name)
    fixed = [o for o in fixed_overrides(config) if not o.startswith("hydra.")]
    for key, spec in config["parameters"].items():
        values = spec.get("values") or [spec["min"], spec["max"]]
        for value in values:
            [override] = expand(config, {key: value})[-1:]
            assert override == f"{key}={value}"
            cfg = compose([*fixed, override])
            got = cfg
            for part in key.split("."):
                got = got[part]
            if key in ("reward_loss", "selector"):
                assert got.name == value
            elif isinstance(value, str):  # a Hydra list written as a string
                assert list(got) == yaml.safe_load(value)
            else:
                assert got == value
    cfg = compose(fixed)
    if name == "reward_model.yaml":
        assert list(cfg.pipeline.stages) == ["sft", "collect", "reward"] and cfg.pipeline.rounds == 0
    else:
        assert cfg.pipeline.rounds == 2 and list(cfg.pipeline.ppo_rounds) == [] and cfg.augmenter.name == "none"


def test_list_values_render_as_hydra_lists():
    """How the agent writes a value is Python's str(): a YAML list would become
    ``[0.5, 0.7]`` (Hydra accepts the space), a string stays as written."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    args = create_sweep_command_args({"args": {"rs.temperatures": {"value": "[0.5,0.7]"},
                                               "rs.k": {"value": 8}}})["args_no_hyphens"]
    assert args == ["rs.temperatures=[0.5,0.7]", "rs.k=8"]
    listed = create_sweep_command_args({"args": {"rs.temperatures": {"value": [0.5, 0.7]}}})["args_no_hyphens"]
    assert listed == ["rs.temperatures=[0.5, 0.7]"]
    assert list(compose(listed).rs.temperatures) == [0.5, 0.7]


def sweep_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, **OFFLINE, "HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:{env['PATH']}",
            **extra}


def run_expanded(tmp_path: Path, name: str, env: dict) -> tuple[subprocess.CompletedProcess, Path]:
    """The agent's command line for PARAMS[name] with the tiny settings right after the
    program (the sweep's fixed overrides and parameters come later, so they win)."""
    command = expand(load(name), PARAMS[name])
    assert command[:2] == ["/usr/bin/env", "llama2rlhf"]
    proc = subprocess.run([*command[:2], *TINY_WANDB, *command[2:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_dir] = [p.parent for p in (tmp_path / "outputs" / "sweeps").glob("*/*/summary.json")]
    return proc, run_dir


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_expanded_command_runs_and_logs_the_sweep_metric(tmp_path, name):
    config = load(name)
    metric = config["metric"]["name"]
    proc, run_dir = run_expanded(tmp_path, name, sweep_env(tmp_path))
    # no agent: the run directory falls back to outputs/sweeps/local/<time>
    assert run_dir.parent == tmp_path / "outputs" / "sweeps" / "local"
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary["final"][metric.removeprefix("final/")]
    runs = {}
    for f in (run_dir / "wandb").glob("offline-run-*/run-*.wandb"):
        record = read_offline_run(f)
        runs[record["config"]["stage"]] = record
    assert runs["final"]["summary"][metric] == final
    # the parameters reached the pipeline
    cfg = runs["final"]["config"]
    if name == "reward_model.yaml":
        assert cfg["reward_loss"] == {"name": "margin_large", "margin_scale": 0.5}
        assert cfg["reward_model"]["learning_rate"] == 0.002
        assert final == summary["rm_accuracy"]["overall"] and "rounds" not in summary
        assert set(runs) == {"sft", "collect", "reward", "final"}
    else:
        assert cfg["rs"]["k"] == 4 and cfg["rs"]["temperatures"] == [0.2, 0.35, 0.5]
        assert cfg["selector"] == {"name": "best_of_k"} and cfg["augmenter"] == {"name": "none"}
        rounds = summary["rounds"]
        assert [r["round"] for r in rounds] == [1, 2] and final == rounds[1]["gold_reward"]
        assert all(r["rs"]["temperature"] in (0.2, 0.35, 0.5) and r["rs"]["k"] == 4 for r in rounds)
        assert "ppo" not in rounds[1] and rounds[1]["rs"]["n_augmented"] == 0


def test_under_a_sweep_agent_the_pipeline_is_one_run_with_every_stage_and_final(tmp_path):
    """What a W&B agent gives its command: WANDB_SWEEP_ID, the run id it was handed, and
    the parameter file (written here with wandb's own writer, as the agent does)."""
    from wandb.sdk.lib import config_util

    params = PARAMS["reward_model.yaml"]
    param_path = tmp_path / "sweep-params.yaml"
    config_util.save_config_file_from_dict(str(param_path), {k: {"value": v} for k, v in params.items()})
    env = sweep_env(tmp_path, WANDB_SWEEP_ID="fakesweep", WANDB_RUN_ID="agentrun1",
                    WANDB_SWEEP_PARAM_PATH=str(param_path))
    proc, run_dir = run_expanded(tmp_path, "reward_model.yaml", env)
    assert run_dir == tmp_path / "outputs" / "sweeps" / "fakesweep" / "agentrun1"
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [f.parent.name.rsplit("-", 1)[1] for f in files] == ["agentrun1"]  # exactly one run, the agent's
    run = read_offline_run(files[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    # the sweep's parameters, as the agent set them, next to the resolved Hydra config
    assert run["config"]["reward_loss.margin_scale"] == 0.5 and run["config"]["reward_loss"] == "margin_large"
    assert run["config"]["reward_model"]["learning_rate"] == 0.002
    assert run["config"]["pipeline"]["stages"] == ["sft", "collect", "reward"]
    # every stage's numbers under its key, and the sweep's metric
    s = run["summary"]
    assert s["sft/train_loss"] == summary["sft"]["train_loss"]
    assert s["collect/n_pairs"] == summary["collect"]["n_pairs"]
    assert s["reward/rm_accuracy/overall"] == summary["rm_accuracy"]["overall"]
    assert s["final/rm_accuracy"] == summary["final"]["rm_accuracy"]
    assert s["final/task_accuracy"] == summary["sft"]["task_accuracy"] and s["final/round"] == 0
    # the trainers' curves under their stage, each against its own step
    keys = {k for h in run["history"] for k in h}
    assert {"sft/train/loss", "sft/train/global_step", "reward/train/accuracy", "reward/safety/train/accuracy"} <= keys
    assert not any(k.startswith(("train/", "eval/")) for k in keys)
    steps = [h["sft/train/global_step"] for h in run["history"] if "sft/train/loss" in h]
    assert steps == sorted(steps) and steps[0] > 0


def test_a_callers_run_gets_the_pipeline_and_stays_open(tmp_path, monkeypatch):
    """Inside a caller's run (``wandb.agent(function=...)``, a notebook), the logger logs
    into it and leaves finishing it to the caller."""
    import wandb
    from omegaconf import OmegaConf

    from llama2rlhf.runtime import loggers
    from llama2rlhf.runtime.run import RunContext

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    cfg = compose(["logger.mode=offline"])
    ctx = RunContext.open(cfg, tmp_path / "run")
    mine = wandb.init(dir=str(tmp_path), mode="offline", config={"seed": 7, "mine": 1},
                      settings=wandb.Settings(silent=True, console="off"))
    try:
        for stage, metrics in (("sft", {"train_loss": 1.5}), ("reward", {"rm_accuracy": {"overall": 0.75}})):
            ctx.current_stage = stage
            loggers.on_stage_start(ctx=ctx, stage=stage, round=0)
            assert loggers.report_to(cfg) == [] and len(loggers.trainer_callbacks(cfg)) == 1
            loggers.on_stage_end(ctx=ctx, stage=stage, round=0, metrics=metrics)
        loggers.on_run_end(ctx=ctx, summary={"final": {"rm_accuracy": 0.75}})
        assert wandb.run is mine  # not finished
        assert dict(mine.summary)["sft/train_loss"] == 1.5 and dict(mine.summary)["final/rm_accuracy"] == 0.75
        # the caller's config stays; the pipeline's is added
        assert mine.config["seed"] == 7 and mine.config["pipeline"] == OmegaConf.to_container(cfg.pipeline)
        # the next pipeline, with no caller's run, is back to a run per stage
        assert loggers._session == loggers._Session()
    finally:
        mine.finish()


def test_hydra_multirun_writes_one_run_per_choice(tmp_path):
    proc = subprocess.run([CLI, "--multirun", f"hydra.sweep.dir={tmp_path / 'multi'}", *TINY, *SFT_RM,
                           "reward_loss=bradley_terry,margin_small"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = {}
    for job in ("0", "1"):
        summary = json.loads((tmp_path / "multi" / job / "summary.json").read_text())
        losses[job] = summary["reward"]["reward_loss"]
        assert 0.0 <= summary["final"]["rm_accuracy"] <= 1.0
    assert losses == {"0": "bradley_terry", "1": "margin_small"}
    assert not (tmp_path / "multi" / "0" / "wandb").exists()  # logger=none
