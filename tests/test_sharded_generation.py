"""Sampling, scoring and evaluation shared out among processes give what one process gives.

One round of the toy pipeline (collect, reward, rejection sampling with Ghost Attention
dialogues, PPO, rejection sampling again, evaluate) under ``accelerate launch`` with two CPU
processes, against the same run in one process. ``shard_size=4`` cuts the tiny prompt sets
into several chunks, so both processes sample, score and evaluate.

The trainers are set up so that two processes train what one does: each process's batch is
half of the one process's, which accumulates two (``gradient_accumulation_steps=2``). SFT and
the first reward model then come out bit for bit the same, and everything sampled from them
(comparisons, rejection-sampling candidates and the kept ones, Ghost Attention dialogues,
held-out replies) is the same text for text. Later trainers are not bit-exact across process
counts (TRL's PPO whitens advantages and shuffles rollouts per process; the round's reward
model and the rejection-sampling fine-tune differ in the last bits), so what follows them is
compared given the same models: one process redoes the two-process run's evaluation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_accelerate import launch
from test_pipeline import CLI

ROUND = [
    "data.n_sft=160", "data.n_pairs=160", "data.n_eval_pairs=40", "data.n_eval_prompts=16",
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2",
    "model.vocab_size=400", "toyworld.unsafe_fraction=0",
    "sft.num_train_epochs=1", "sft.per_device_train_batch_size=8",
    "reward_model.num_train_epochs=1", "reward_model.per_device_train_batch_size=4",
    "eval.max_new_tokens=12", "collect.n_prompts=24", "collect.max_new_tokens=10",
    "rs.n_prompts=16", "rs.k=3", "rs.search_prompts=6", "rs.temperatures=[0.8,1.3]", "rs.max_new_tokens=10",
    "rs.train.num_train_epochs=1", "rs.train.per_device_train_batch_size=2",
    "ppo.n_prompts=16", "ppo.gradient_accumulation_steps=1", "ppo.num_mini_batches=1", "ppo.max_new_tokens=10",
    "ppo.checkpoint_steps=1", "ppo.learning_rate=1e-30",
    "gatt.start_round=1", "gatt.n_dialogues=4", "gatt.max_turns=3", "gatt.max_new_tokens=10", "gatt.filter=false",
    "gatt.eval_dialogues=4", "gatt.eval_turns=3",
    "pipeline.stages=[sft,reward]", "pipeline.rounds=1", "shard_size=4", "logger=none", "device=cpu",
]
# one process accumulates what two processes' batches hold
ONE = ["sft.gradient_accumulation_steps=2", "reward_model.gradient_accumulation_steps=2",
       "rs.train.gradient_accumulation_steps=2", "ppo.per_device_train_batch_size=16"]
TWO = ["ppo.per_device_train_batch_size=8"]
# what the trainers log about their own steps, which two processes count per process
TRAINING = {"timings", "num_processes", "train_loss", "history", "train_kl_last"}
SAMPLED = ["round_1/collect/pairs.jsonl", "round_1/collect/comparisons.jsonl",
           "round_1/rejection_sampling/gatt/examples.jsonl",
           "sft/heldout_replies.jsonl", "round_1/evaluate/heldout_replies.jsonl", "round_1/evaluate/gatt_adherence.json"]


def one_process(run: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([CLI, *ROUND, f"hydra.run.dir={run}", *overrides], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    one = one_process(tmp / "one", *ONE)
    assert one.returncode == 0, one.stderr[-4000:]
    two = launch(tmp, "-m", "llama2rlhf", *ROUND, *TWO, f"hydra.run.dir={tmp / 'two'}", timeout=600)
    assert two.returncode == 0, two.stderr[-4000:]
    return tmp / "one", tmp / "two"


def numbers(tree, path=""):
    """(path, value) of every number and string in a summary, but the trainers' own logs."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k not in TRAINING:
                yield from numbers(v, f"{path}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from numbers(v, f"{path}[{i}]")
    else:
        yield path, tree


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text().replace(str(run), "RUN"))


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_two_processes_train_sft_and_the_first_reward_model_bit_for_bit(runs):
    import torch

    one, two = runs
    assert summary(two)["num_processes"] == 2 and summary(one)["num_processes"] == 1
    for folder in ("sft/model", "reward/model"):
        a, b = weights(one / folder), weights(two / folder)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder


def test_two_processes_sample_every_text_one_samples(runs):
    one, two = runs
    for rel in SAMPLED:
        assert (one / rel).read_text() == (two / rel).read_text(), rel
    for stage in ("rejection_sampling", "rejection_sampling_after_ppo"):
        for name in ("candidates.jsonl", "kept.jsonl"):
            rows = [[json.loads(line) for line in (run / "round_1" / stage / name).read_text().splitlines()]
                    for run in runs]
            assert len(rows[0]) > 0
            assert [(r["prompt_id"], r["completion"], r["round"]) for r in rows[0]] == \
                [(r["prompt_id"], r["completion"], r["round"]) for r in rows[1]], f"{stage}/{name}"
            assert [r["score"] for r in rows[0]] == pytest.approx([r["score"] for r in rows[1]], abs=1e-6)


def test_the_numbers_up_to_the_first_fine_tune_are_one_processs(runs):
    one, two = (summary(run) for run in runs)
    entries = [("sft",), ("reward",), ("rounds", 0, "collect"), ("rounds", 0, "reward"), ("rounds", 0, "rs")]
    for entry in entries:
        a, b = one, two
        for key in entry:
            a, b = a[key], b[key]
        a, b = dict(numbers(a)), dict(numbers(b))
        assert a.keys() == b.keys() and a, entry
        exact = sorted(k for k, v in a.items() if not isinstance(v, float))
        assert [a[k] for k in exact] == [b[k] for k in exact], entry  # counts, the temperature found
        floats = sorted(k for k, v in a.items() if isinstance(v, float))
        # the round's reward model differs in the last bits: its scores within float rounding
        assert [a[k] for k in floats] == pytest.approx([b[k] for k in floats], rel=1e-6, abs=1e-6), entry
        if entry[0] in ("sft", "reward"):
            assert all(a[k] == b[k] for k in floats), entry  # from bit-identical models


def test_one_process_redoing_the_evaluation_of_the_two_process_run_gets_its_numbers(runs, tmp_path):
    _, two = runs
    run = tmp_path / "redo"
    shutil.copytree(two, run)
    text = (run / "state.json").read_text().replace(str(two), str(run))
    state = json.loads(text)
    state["done"] = [k for k in state["done"] if k not in ("round_1/evaluate", "round_1")]
    (run / "state.json").write_text(json.dumps(state))
    (run / "summary.json").write_text((run / "summary.json").read_text().replace(str(two), str(run)))
    for cached in ("heldout_replies.jsonl", "gatt_adherence.json"):
        (run / "round_1" / "evaluate" / cached).unlink()
    proc = one_process(run, *TWO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    redone, shared = summary(run)["rounds"][0], summary(two)["rounds"][0]
    evaluated = ("gold_reward", "task_accuracy", "win_rate_vs_sft", "win_rate_vs_sft_rm", "vs_sft", "examples",
                 "accuracy_by_family", "gatt_adherence_by_turn", "win_rate_by_axis", "win_rate_by_category")
    assert {k: redone[k] for k in evaluated} == {k: shared[k] for k in evaluated}
    for rel in ("round_1/evaluate/heldout_replies.jsonl", "round_1/evaluate/gatt_adherence.json"):
        assert (run / rel).read_text() == (two / rel).read_text()
