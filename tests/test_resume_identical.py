"""A stage redone on resuming ends where the uninterrupted run did.

One tiny one-round run (SFT, comparisons, reward models, then a round of comparisons,
reward models, rejection sampling with Ghost Attention, PPO, rejection sampling again and
evaluation) in one process; then, for every stage, a copy of its run directory as a run
killed during that stage leaves it (the stage not done, the artifacts as they were before
it, its folder gone), resumed in a fresh process with another ``PYTHONHASHSEED``. The
stage's numbers in ``summary.json``, its weights and its samples must be the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_pipeline import CLI, DEFAULT_ONE_ROUND, TINY

# the console script, with an observer that notes the artifacts each stage starts from: the
# state a run killed during that stage leaves behind
RECORDING_CLI = """
import json, sys
from llama2rlhf import hookimpl, plugins
from llama2rlhf.__main__ import main

class ArtifactsBeforeEachStage:
    @hookimpl
    def on_stage_start(self, ctx, stage, round):
        folder = ctx.run_dir.parent / "artifacts_before"
        folder.mkdir(exist_ok=True)
        key = ctx.stage_key(ctx.current_stage)
        (folder / (key.replace("/", "__") + ".json")).write_text(json.dumps(ctx.state.artifacts))

plugins.get_plugin_manager().register(ArtifactsBeforeEachStage(), name="artifacts_before")
sys.argv[0] = "llama2rlhf"
main()
"""

ROUND = ["collect", "reward", "rejection_sampling", "ppo", "rejection_sampling_after_ppo", "evaluate"]
STAGES = ["sft", "collect", "reward", *(f"round_1/{s}" for s in ROUND)]
# where each stage's numbers are in summary.json (the evaluation's go into the round's own entry)
SUMMARY = {"sft": ["sft"], "collect": ["collect"], "reward": ["reward", "rm_accuracy"],
           "round_1/collect": ["rounds.0.collect"], "round_1/reward": ["rounds.0.reward", "rounds.0.rm_accuracy"],
           "round_1/rejection_sampling": ["rounds.0.rs"], "round_1/ppo": ["rounds.0.ppo"],
           "round_1/rejection_sampling_after_ppo": ["rounds.0.rs_after_ppo"], "round_1/evaluate": ["gatt"]}
# folders a stage writes besides its own: the evaluation's GAtt baseline
EXTRA_FOLDERS = {"round_1/evaluate": ["gatt"]}


def _command(run: Path) -> list[str]:
    return [f"hydra.run.dir={run}", *TINY, *DEFAULT_ONE_ROUND]


def _env(hash_seed: int) -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": str(hash_seed)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("resume")
    proc = subprocess.run([sys.executable, "-c", RECORDING_CLI, *_command(tmp / "run")], cwd=tmp,
                          capture_output=True, text=True, env=_env(0), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp / "run" / "state.json").read_text())["done"] == ["base", *STAGES, "round_1"]
    return tmp / "run"


def _pop(summary: dict, dotted: str) -> None:
    *path, last = dotted.split(".")
    node = summary
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node.pop(last)


def _without_stage(run: Path, stage: str, uninterrupted: Path) -> None:
    """``run`` as a run killed during ``stage`` leaves it, with the other stages done and the
    stage's numbers taken out of ``summary.json``."""
    def moved(text: str):  # the copy's paths in place of the uninterrupted run's
        return json.loads(text.replace(str(uninterrupted), str(run)))

    state = moved((run / "state.json").read_text())
    state["done"].remove(stage)
    state["artifacts"] = moved((uninterrupted.parent / "artifacts_before" / (stage.replace("/", "__") + ".json"))
                               .read_text())
    (run / "state.json").write_text(json.dumps(state))
    for folder in [stage, *EXTRA_FOLDERS.get(stage, [])]:
        shutil.rmtree(run / folder)
    summary = moved((run / "summary.json").read_text())
    for key in SUMMARY[stage]:
        _pop(summary, key)
    if stage == "round_1/evaluate":  # its numbers sit beside the other stages' in the round's entry
        summary["rounds"][0] = {k: v for k, v in summary["rounds"][0].items()
                                if k in ("round", "collect", "reward", "rm_accuracy", "rs", "ppo", "rs_after_ppo")}
    (run / "summary.json").write_text(json.dumps(summary))


def _summary(run: Path) -> dict:
    """``summary.json`` less the timings, with paths relative to the run directory."""
    summary = json.loads((run / "summary.json").read_text().replace(str(run), "RUN"))
    summary.pop("timings")
    return summary


def _differences(a: Path, b: Path, folder: str) -> list[str]:
    """What differs between ``a/folder`` and ``b/folder``: weights tensor by tensor, JSON
    and JSONL files (samples, comparisons, metrics) by their text with paths relative to
    the run directory, and which files there are."""
    from safetensors.torch import load_file

    files = {side: sorted(p.relative_to(side / folder) for p in (side / folder).rglob("*") if p.is_file())
             for side in (a, b)}
    if files[a] != files[b]:
        return [f"{folder}: files {sorted(set(map(str, files[a])) ^ set(map(str, files[b])))} in one run only"]
    out = []
    for name in files[a]:
        x, y = a / folder / name, b / folder / name
        if name.suffix == ".safetensors":
            tx, ty = load_file(x), load_file(y)
            out += [f"{folder}/{name}: tensor {k}" for k in tx if not tx[k].equal(ty[k])]
        elif name.suffix in (".json", ".jsonl"):
            if x.read_text().replace(str(a), "RUN") != y.read_text().replace(str(b), "RUN"):
                out.append(f"{folder}/{name}")
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_redone_stage_gives_what_the_uninterrupted_run_gave(uninterrupted, tmp_path, stage):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    _without_stage(run, stage, uninterrupted)
    logged = len((run / "llama2rlhf.log").read_text())
    # another process, another PYTHONHASHSEED: set and dict order, hash() and the like differ
    proc = subprocess.run([CLI, *_command(run)], cwd=tmp_path, capture_output=True, text=True,
                          env=_env(1 + STAGES.index(stage)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run / "llama2rlhf.log").read_text()[logged:]
    assert [line.split("stage ", 1)[1].split()[0] for line in log.splitlines() if " (plugin " in line] == [stage]
    # every number but the timings, the stage's own written back (_without_stage took them out)
    assert _summary(run) == _summary(uninterrupted)
    differences = [d for folder in [stage, *EXTRA_FOLDERS.get(stage, [])]
                   for d in _differences(uninterrupted, run, folder)]
    assert not differences, differences
