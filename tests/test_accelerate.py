"""Scale-out: the shipped accelerate configs, and the pipeline under ``accelerate launch``.

The launched runs use two CPU processes (gloo) through ``conf/accelerate/cpu_2proc.yaml``:
the same code paths as several GPUs (DDP training, one writer, broadcasts), at toy size.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llama2rlhf
from llama2rlhf.__main__ import accelerate_configs
from llama2rlhf.recipe.annotation import AwaitingLabels
from llama2rlhf.runtime import distributed
from test_pipeline import CLI, TINY

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
CONFIGS = Path(llama2rlhf.__file__).resolve().parent / "config" / "conf" / "accelerate"
SRC = str(Path(llama2rlhf.__file__).resolve().parents[1])
GPU_CONFIGS = ["multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp"]


def launch_options() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return {a.dest for a in launch_command_parser()._actions}


def unknown_nested_keys(config) -> list[str]:
    """Keys of the config's sections that are no ``accelerate launch`` option: accelerate's
    loader checks the top-level keys only, and its launcher copies a section's keys onto its
    options (``fsdp_config.x`` onto ``fsdp_x``) without complaint, so a typo there would be
    silently ignored."""
    options = launch_options()
    unknown = []
    for section in ("deepspeed_config", "fsdp_config"):
        for key in getattr(config, section):
            option = key if section != "fsdp_config" or key.startswith("fsdp") else "fsdp_" + key
            if option not in options:
                unknown.append(f"{section}.{key}")
    return unknown


def launcher_env(name: str, path: Path | None = None) -> dict[str, str]:
    """The environment ``accelerate launch --config_file`` gives the processes it starts,
    through the launcher's own functions."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(path or CONFIGS / f"{name}.yaml"), "-m", "x"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def test_the_shipped_configs_are_the_five_documented():
    assert set(accelerate_configs()) == {"cpu_2proc", *GPU_CONFIGS}


@pytest.mark.parametrize("name", ["cpu_2proc", *GPU_CONFIGS])
def test_each_config_loads_with_accelerates_own_loader(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert isinstance(config, ClusterConfig)
    assert unknown_nested_keys(config) == []
    expected = {"cpu_2proc": "MULTI_GPU", "multi_gpu": "MULTI_GPU", "fsdp": "FSDP",
                "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}[name]
    assert config.distributed_type.value == expected
    assert config.mixed_precision == ("no" if name == "cpu_2proc" else "bf16")
    assert config.num_processes == (2 if name == "cpu_2proc" else 8)


def test_a_typo_in_a_config_fails(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    text = (CONFIGS / "fsdp.yaml").read_text()
    top = tmp_path / "top.yaml"
    top.write_text(text.replace("mixed_precision:", "mixed_precison:"))
    with pytest.raises(ValueError, match=r"unknown keys \(\['mixed_precison'\]\)"):
        load_config_from_file(str(top))
    nested = tmp_path / "nested.yaml"
    nested.write_text(text.replace("fsdp_state_dict_type:", "fsdp_state_dict_typ:"))
    assert unknown_nested_keys(load_config_from_file(str(nested))) == ["fsdp_config.fsdp_state_dict_typ"]


def test_fsdp_config_becomes_the_plugin_that_saves_full_checkpoints(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType

    env = launcher_env("fsdp")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    # Trainer.save_model gathers a from_pretrained folder only from a full state dict
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.cpu_ram_efficient_loading is False
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


@pytest.mark.parametrize("name,stage", [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_deepspeed_configs_leave_batching_to_each_stage(monkeypatch, name, stage):
    from accelerate.utils import DeepSpeedPlugin

    for key, value in launcher_env(name).items():
        monkeypatch.setenv(key, value)
    ds = DeepSpeedPlugin().deepspeed_config
    assert ds["zero_optimization"]["stage"] == stage
    # "auto": filled from each stage's TrainingArguments, which differ between stages
    assert ds["gradient_accumulation_steps"] == "auto" and ds["gradient_clipping"] == "auto"
    if stage == 3:
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_accelerate_config_command_prints_the_path(tmp_path):
    proc = subprocess.run([CLI, "accelerate-config", "deepspeed_zero3"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == CONFIGS / "deepspeed_zero3.yaml"
    bad = subprocess.run([CLI, "accelerate-config", "zero4"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2
    assert "no accelerate config 'zero4'; choose one of cpu_2proc, deepspeed_zero2" in bad.stderr


def test_selecting_an_accelerate_config_as_a_hydra_group_is_refused_with_the_launch_command(tmp_path):
    proc = subprocess.run([CLI, "+accelerate=fsdp"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "+accelerate=fsdp: conf/accelerate holds configs for `accelerate launch --config_file`" in proc.stderr
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run directory


def test_one_process_needs_no_process_group(monkeypatch):
    import torch.distributed as dist

    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    distributed.setup(None)  # reads no config: it returns before
    assert not dist.is_initialized()
    assert distributed.is_main_process() and distributed.num_processes() == 1
    assert distributed.main_process_only(lambda a, b: a + b, 2, b=3) == 5
    with pytest.raises(KeyError, match="boom"):
        distributed.main_process_only(lambda: {}["boom"])


def test_awaiting_labels_survives_pickling(tmp_path):
    import pickle

    waiting = AwaitingLabels(tmp_path / "to_label.jsonl", tmp_path / "labelled.jsonl", 7)
    again = pickle.loads(pickle.dumps(waiting))
    assert isinstance(again, AwaitingLabels) and again.n_pairs == 7 and str(again) == str(waiting)


def test_whole_models_lift_transformers_zero3_config_and_put_it_back():
    from transformers.integrations import deepspeed as hf_deepspeed

    class Zero3:
        def is_zero3(self):
            return True

    config = Zero3()
    hf_deepspeed.set_hf_deepspeed_config(config)
    try:
        assert hf_deepspeed.is_deepspeed_zero3_enabled()
        with distributed._whole_models():
            assert not hf_deepspeed.is_deepspeed_zero3_enabled()
        assert hf_deepspeed.is_deepspeed_zero3_enabled()
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()


def launch(tmp_path: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([ACCELERATE, "launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"), *args],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=timeout)


MAIN_ONLY_SCRIPT = """
import sys
from types import SimpleNamespace
from pathlib import Path
from llama2rlhf.runtime import distributed
from llama2rlhf.recipe.annotation import AwaitingLabels

distributed.setup(SimpleNamespace(device="cpu", distributed_timeout_s=120))
rank = distributed.process_index()
ran = distributed.main_process_only(lambda: [rank])
print(f"rank {rank}: result {ran}", flush=True)

def ask_for_labels():
    raise AwaitingLabels(Path("to_label.jsonl"), Path("labelled.jsonl"), 3)

try:
    distributed.main_process_only(ask_for_labels)
except AwaitingLabels as exc:
    print(f"rank {rank}: AwaitingLabels {exc.n_pairs}", flush=True)
    sys.exit(3)
"""


def test_main_process_only_runs_once_and_raises_everywhere(tmp_path):
    script = tmp_path / "main_only.py"
    script.write_text(MAIN_ONLY_SCRIPT)
    proc = launch(tmp_path, str(script), timeout=120)
    # the function ran on process 0 only, and both got its result; its error stopped both
    assert "rank 0: result [0]" in proc.stdout and "rank 1: result [0]" in proc.stdout, proc.stderr[-3000:]
    assert "rank 0: AwaitingLabels 3" in proc.stdout and "rank 1: AwaitingLabels 3" in proc.stdout
    assert proc.returncode != 0  # the launcher reports the processes' exit status 3 as a failure


SHARD_SCRIPT = """
import sys
from types import SimpleNamespace
from llama2rlhf.runtime import distributed

distributed.setup(SimpleNamespace(device="cpu", distributed_timeout_s=120))
rank = distributed.process_index()
ran = []

def square(chunk):
    ran.append(list(chunk))
    return [x * x for x in chunk]

out = distributed.shard(square, range(10), 3)
print(f"rank {rank}: {out} ran {ran}", flush=True)
# inside main_process_only the main process runs every chunk alone
alone = distributed.main_process_only(lambda: distributed.shard(lambda c: [rank] * len(c), range(5), 2))
print(f"rank {rank}: alone {alone}", flush=True)

def fails_on_seven(chunk):
    if 7 in chunk:
        raise ValueError(f"seven in {chunk}")
    return chunk

try:
    distributed.shard(fails_on_seven, range(10), 3)
except ValueError as exc:
    print(f"rank {rank}: raised {exc}", flush=True)
    sys.exit(3)
"""


def test_shard_shares_the_chunks_out_and_gathers_them_in_order(tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)
    proc = launch(tmp_path, str(script), timeout=120)
    squares = [x * x for x in range(10)]
    # chunks of 3 whatever the processes: the first two on process 0, the last two on process 1
    assert f"rank 0: {squares} ran [[0, 1, 2], [3, 4, 5]]" in proc.stdout, proc.stderr[-3000:]
    assert f"rank 1: {squares} ran [[6, 7, 8], [9]]" in proc.stdout
    assert "rank 0: alone [0, 0, 0, 0, 0]" in proc.stdout and "rank 1: alone [0, 0, 0, 0, 0]" in proc.stdout
    # the chunk that failed on process 1 stops both, with its error
    assert "rank 0: raised seven in [6, 7, 8]" in proc.stdout and "rank 1: raised seven in [6, 7, 8]" in proc.stdout
    assert proc.returncode != 0


def test_shard_in_one_process_runs_every_chunk_in_order():
    calls = []

    def double(chunk):
        calls.append(chunk)
        return [2 * x for x in chunk]

    assert distributed.shard(double, range(7), 3) == [0, 2, 4, 6, 8, 10, 12]
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(RuntimeError, match="returned 1 results for 3 items"):
        distributed.shard(lambda chunk: chunk[:1], range(3), 3)
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        distributed.shard(double, range(3), 0)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("accelerate")
    proc = launch(tmp, "-m", "llama2rlhf", f"hydra.run.dir={tmp / 'run'}", *TINY, "logger=none", "device=cpu",
                  "pipeline.stages=[sft,reward]", "pipeline.rounds=0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp / "run", proc


def test_both_processes_train_each_stage_together(two_process_run):
    run, proc = two_process_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_processes"] == 2
    # the trainers saw two processes, and each step took a batch per process: half the steps
    # of one process (tiny SFT: 160 examples, 16 per device and step; RM: 160 pairs, 32)
    assert summary["sft"]["num_processes"] == summary["reward"]["num_processes"] == 2
    assert summary["sft"]["train_steps"] == math.ceil(160 / (16 * 2)) == 5
    assert summary["reward"]["train_steps"] == math.ceil(160 / (32 * 2)) == 3
    assert summary["sft"]["n_prompts"] == 16 and 0.0 <= summary["sft"]["gold_reward"] <= 1.0
    assert summary["rm_accuracy"]["counts"]["overall"] == 40
    assert set(summary["timings"]) == {"sft", "reward"}
    # only the main process reported
    assert proc.stdout.count("summary: ") == 1


def test_the_main_process_alone_writes_the_run_directory(two_process_run):
    run, _ = two_process_run
    state = json.loads((run / "state.json").read_text())
    assert state["done"] == ["base", "sft", "reward"]
    assert [e["stage"] for e in state["events"] if e["event"] == "done"] == ["base", "sft", "reward"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["prefix"] for r in records] == ["sft", "reward"]
    assert len((run / "sft" / "heldout_replies.jsonl").read_text().splitlines()) == 16
    whitening = json.loads((run / "reward" / "whitening.json").read_text())
    assert whitening["n"] == 80 and whitening["std"] > 0


def test_the_saved_models_load(two_process_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    run, _ = two_process_run
    state = json.loads((run / "state.json").read_text())
    policy = AutoModelForCausalLM.from_pretrained(state["artifacts"]["sft"])
    base = AutoModelForCausalLM.from_pretrained(state["artifacts"]["base"])
    moved = [n for n, p in policy.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert moved, "the SFT checkpoint holds the base weights: training was not saved"
    reward = AutoModelForSequenceClassification.from_pretrained(state["artifacts"]["reward"])
    tok = AutoTokenizer.from_pretrained(state["artifacts"]["reward"])
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                  tokenize=True, return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        assert reward(**ids).logits.shape == (1, 1)


def test_lora_over_two_processes_saves_the_adapter_merged_into_the_base(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    proc = launch(tmp_path, "-m", "llama2rlhf", f"hydra.run.dir={tmp_path / 'run'}", *TINY, "logger=none",
                  "device=cpu", "pipeline.stages=[sft]", "pipeline.rounds=0", "model.peft=lora")
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "run"
    merged = AutoModelForCausalLM.from_pretrained(run / "sft" / "model")
    assert not any("lora" in n for n, _ in merged.named_parameters())  # a plain checkpoint
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run / "base"),
                                         run / "sft" / "model-adapter").merge_and_unload()
    base = AutoModelForCausalLM.from_pretrained(run / "base")
    got, want, start = merged.state_dict(), expected.state_dict(), base.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert any(not torch.equal(got[k], start[k]) for k in got), "the adapter changed nothing"
