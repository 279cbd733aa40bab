"""logger=wandb: one offline W&B run per stage, with the config, the stage's numbers, sample
tables and model artifacts, read back from the run files."""

from __future__ import annotations

import json
import os

import yaml

from llama2rlhf.builtins.loggers import flatten, resolved_mode
from test_pipeline import run_cli


def test_flatten_keeps_numbers_under_the_stage_key():
    metrics = {"train_loss": 0.5, "rs": {"temperature": 0.7, "best_of_n": {"0.7": [1.0, 2.0]}}, "note": "x",
               "ok": True, "nan": float("nan")}
    assert flatten(metrics, "round_1/rejection_sampling") == {
        "round_1/rejection_sampling/train_loss": 0.5, "round_1/rejection_sampling/rs/temperature": 0.7}


def test_auto_mode_is_online_only_when_logged_in(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolved_mode("auto") == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    os.chmod(tmp_path / ".netrc", 0o600)
    assert resolved_mode("auto") == "online"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolved_mode("offline") == "offline" and resolved_mode("auto") == "online"


def test_pipeline_logs_each_stage_offline_with_config_metrics_tables_and_models(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_API_KEY": "", "WANDB_DIR": ""}
    proc = run_cli(tmp_path, "logger=wandb", "logger.log_models=true", "pipeline.rounds=1",
                   "pipeline.stages=[sft,reward]", "pipeline.ppo_rounds=[]", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {}
    for d in sorted((tmp_path / "run" / "wandb").glob("offline-run-*")):
        files = d / "files"
        config = yaml.safe_load((files / "config.yaml").read_text())
        runs[config["stage"]["value"]] = (files, config)
    assert set(runs) == {"sft", "reward", "round_1/collect", "round_1/reward", "round_1/rejection_sampling",
                         "round_1/evaluate"}
    files, config = runs["sft"]
    assert config["pipeline"]["value"]["rounds"] == 1 and config["logger"]["value"]["name"] == "wandb"
    summary = json.loads((files / "wandb-summary.json").read_text())
    assert summary["sft/train_loss"] > 0 and 0 <= summary["sft/task_accuracy"] <= 1
    # TRL's trainer reported into the same run through transformers' W&B integration
    assert "train/loss" in summary or "train/train_loss" in summary
    files, _ = runs["round_1/rejection_sampling"]
    summary = json.loads((files / "wandb-summary.json").read_text())
    assert summary["round_1/rejection_sampling/k"] == 3
    table = summary["round_1/rejection_sampling/samples"]
    assert table["_type"] == "table-file" and table["ncols"] == 4
    saved = json.loads((files / table["path"]).read_text())
    assert saved["columns"] == ["prompt", "candidates", "scores", "chosen"] and len(saved["data"]) == 16
    files, _ = runs["round_1/evaluate"]
    assert "round_1/evaluate/heldout_replies" in json.loads((files / "wandb-summary.json").read_text())
