"""logger=wandb: one offline W&B run per stage, with the config, the stage's numbers, sample
tables and model artifacts, and one with the end-of-run numbers, read back from the run files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from llama2rlhf.runtime.loggers import flatten, resolved_mode
from test_pipeline import run_cli


def read_offline_run(path: Path) -> dict:
    """Config, summary, history and artifact names of an offline run, from its .wandb file.

    W&B 0.31 keeps an offline run in one record log (LevelDB's log format: 32 KiB blocks of
    records with a 7-byte header, checksum, length and type FULL/FIRST/MIDDLE/LAST, after a
    7-byte file header), each record a ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, buf, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            records.append(buf)
    out = {"config": {}, "summary": {}, "history": [], "artifacts": []}
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        which = rec.WhichOneof("record_type")
        if which in ("run", "config"):
            for item in (rec.run.config if which == "run" else rec.config).update:
                out["config"][item.key] = json.loads(item.value_json)
        elif which == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif which == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif which == "artifact":
            out["artifacts"].append((rec.artifact.name, rec.artifact.type))
    return out



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
    proc = run_cli(tmp_path, "logger=wandb", "pipeline.rounds=1",
                   "pipeline.stages=[sft,reward]", "pipeline.ppo_rounds=[]", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {}
    for f in sorted((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")):
        run = read_offline_run(f)
        runs[run["config"]["stage"]] = run
    assert set(runs) == {"sft", "reward", "round_1/collect", "round_1/reward", "round_1/rejection_sampling",
                         "round_1/evaluate", "final"}
    sft = runs["sft"]
    # the resolved Hydra config, one W&B group for the pipeline run, the stage as job type
    assert sft["config"]["pipeline"]["rounds"] == 1 and sft["config"]["logger"]["name"] == "wandb"
    assert sft["config"]["round"] == 0 and runs["round_1/evaluate"]["config"]["round"] == 1
    assert sft["summary"]["sft/train_loss"] > 0 and 0 <= sft["summary"]["sft/task_accuracy"] <= 1
    # TRL's trainer reported into the same run through transformers' W&B integration
    assert any("train/loss" in h for h in sft["history"])
    # logger.log_models (on by default for the toy model): the checkpoints the stage produced, as model artifacts
    assert sorted(sft["artifacts"]) == [(f"{tmp_path.name}-run-sft-policy", "model"),
                                        (f"{tmp_path.name}-run-sft-sft", "model")]
    rs = runs["round_1/rejection_sampling"]
    assert rs["summary"]["round_1/rejection_sampling/k"] == 3
    key = "round_1/rejection_sampling/samples"
    table = next(h for h in rs["history"] if f"{key}/_type" in h)
    assert table[f"{key}/_type"] == "table-file" and table[f"{key}/ncols"] == 4 and table[f"{key}/nrows"] == 16
    saved = json.loads(next((tmp_path / "run" / "wandb").glob(f"offline-run-*/files/{table[key + '/path']}"))
                       .read_text())
    assert saved["columns"] == ["prompt", "candidates", "scores", "chosen"] and len(saved["data"]) == 16
    assert any(h.get("round_1/evaluate/heldout_replies/_type") == "table-file" for h in runs["round_1/evaluate"]["history"])
    # the end-of-run numbers in a run of their own in the group, job type "final"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    final = runs["final"]["summary"]
    assert final["final/gold_reward"] == summary["rounds"][0]["gold_reward"] == summary["final"]["gold_reward"]
    assert final["final/rm_accuracy"] == summary["rounds"][0]["rm_accuracy"]["overall"] and final["final/round"] == 1


# the logger's hooks for one stage and the run's end, in a process that records every host
# name it looks up (the last atexit function to run is the first registered)
NO_ACCOUNT_RUN = """
import atexit, socket, sys
from pathlib import Path
looked_up = []
real = socket.getaddrinfo
def spy(host, *args, **kwargs):
    looked_up.append(host)
    return real(host, *args, **kwargs)
socket.getaddrinfo = spy
atexit.register(lambda: print("looked up:", sorted(set(looked_up))))
from hydra import compose, initialize_config_module
from llama2rlhf.runtime import loggers
from llama2rlhf.config import store_configs
from llama2rlhf.runtime.run import RunContext
store_configs()
with initialize_config_module(config_module="llama2rlhf.config.conf", version_base="1.3"):
    cfg = compose("config")
ctx = RunContext.open(cfg, Path(sys.argv[1]))
ctx.current_stage = "sft"
loggers.on_stage_start(ctx=ctx, stage="sft", round=0)
loggers.on_stage_end(ctx=ctx, stage="sft", round=0, metrics={"train_loss": 1.5})
loggers.on_run_end(ctx=ctx, summary={"final": {"rm_accuracy": 0.5}})
"""


def test_default_logger_without_an_account_looks_up_no_host(tmp_path):
    """The default config logs offline when not logged in, and W&B makes no network call:
    with only the run offline, its telemetry thread would still probe the W&B server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_API_KEY="")
    proc = subprocess.run([sys.executable, "-c", NO_ACCOUNT_RUN, str(tmp_path / "run")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "looked up: []"
    runs = {read_offline_run(f)["config"]["stage"]: read_offline_run(f)
            for f in (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")}
    assert runs["sft"]["summary"]["sft/train_loss"] == 1.5 and runs["final"]["summary"]["final/rm_accuracy"] == 0.5


def test_model_artifacts_default_on_for_the_toy_model_only():
    from omegaconf import OmegaConf

    from llama2rlhf.runtime.loggers import logs_models

    def cfg(kind, log_models):
        return OmegaConf.create({"model": {"kind": kind}, "logger": {"name": "wandb", "log_models": log_models}})

    assert logs_models(cfg("toy", None)) and not logs_models(cfg("hf", None))
    assert logs_models(cfg("hf", True)) and not logs_models(cfg("toy", False))
