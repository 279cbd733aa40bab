"""Continuing a run directory: what cannot be continued is refused before anything runs, in
one line naming the file, stage or path and what to do, and the run directory is left as it
was; what the run writes is replaced whole, so a kill never leaves half a file or folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_bad, snapshot

# the toy pipeline in one round (the PPO round): base, sft, collect, reward, then round 1's
# collect, reward, rejection_sampling, ppo, rejection_sampling_after_ppo, evaluate
TINY = ["logger=none", "pipeline.rounds=1"]


def weights_file(path: Path) -> None:
    """A safetensors file whose header reads (what the run-directory check opens)."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, dtype=np.float32)}, str(path))


def model_folder(folder: Path, weights: bool = True) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "tokenizer.json").write_text("{}")
    if weights:
        weights_file(folder / "model.safetensors")
    return str(folder)


def finished_sft(run: Path) -> dict:
    """A run directory as the run leaves it after SFT: its state as a dict, to change."""
    base = model_folder(run / "base")
    sft = model_folder(run / "sft" / "model")
    state = {"version": 1, "done": ["base", "sft"],
             "artifacts": {"base": base, "tokenizer": base, "sft": sft, "policy": sft}, "events": []}
    write_state(run, state)
    (run / "summary.json").write_text(json.dumps({"sft": {"task_accuracy": 0.5}, "timings": {"sft": 1.0}}))
    return state


def write_state(run: Path, state: dict) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "state.json").write_text(json.dumps(state, indent=2))


def refused(cli, run: Path, *named: str) -> str:
    """A real run in ``run`` is refused in one line naming each of ``named``, before
    anything is written (no ``.hydra``, nothing trained), the run directory unchanged."""
    before = snapshot(run)
    line = assert_bad(cli(f"hydra.run.dir={run}", *TINY), *named)
    assert snapshot(run) == before
    return line


def test_a_finished_stage_with_its_artifacts_continues(cli, tmp_path):
    run = tmp_path / "run"
    finished_sft(run)
    before = snapshot(run)
    result = cli("--validate", f"hydra.run.dir={run}", *TINY)
    assert result.code == 0, result.err
    assert snapshot(run) == before


# --- state.json and summary.json that cannot be read ------------------------------------


def test_state_json_with_broken_json_is_named_with_line_and_column(cli, tmp_path):
    run = tmp_path / "run"
    finished_sft(run)
    text = (run / "state.json").read_text()
    (run / "state.json").write_text(text.replace('"done"', '"done":', 1))  # line 3
    line = refused(cli, run, f"{run / 'state.json'}:3: invalid JSON", "(column", "new run directory",
                   "left as it is")
    assert "finished stages" in line


def test_state_json_cut_short_by_a_kill(cli, tmp_path):
    run = tmp_path / "run"
    finished_sft(run)
    text = (run / "state.json").read_text()
    (run / "state.json").write_text(text[: len(text) // 2])
    refused(cli, run, f"{run / 'state.json'}:", "invalid JSON", "restore the file from a copy")


def test_empty_state_json(cli, tmp_path):
    run = tmp_path / "run"
    finished_sft(run)
    (run / "state.json").write_text("")
    refused(cli, run, f"{run / 'state.json'}: the file is empty")


def test_state_json_that_is_not_utf8(cli, tmp_path):
    run = tmp_path / "run"
    finished_sft(run)
    (run / "state.json").write_bytes(b'{"version": 1,\n "done": ["\xff"]}')
    refused(cli, run, f"{run / 'state.json'}:2: not UTF-8", "0xff")


def test_summary_json_cut_short_by_a_kill(cli, tmp_path):
    run = tmp_path / "run"
    finished_sft(run)
    (run / "summary.json").write_text('{"sft": {"task_accuracy": 0.5}, "timi')
    line = refused(cli, run, f"{run / 'summary.json'}:1: invalid JSON", "column", "left as it is")
    assert "numbers" in line


def test_state_json_of_another_version(cli, tmp_path):
    run = tmp_path / "run"
    state = finished_sft(run)
    write_state(run, {**state, "version": 2})
    refused(cli, run, f"{run / 'state.json'}: field 'version': is 2", "reads version 1", "new run directory")


@pytest.mark.parametrize("change,named", [
    ({"done": "sft"}, ["field 'done'", "must be a list of stage keys, got a string"]),
    ({"artifacts": ["sft"]}, ["field 'artifacts'", "must be an object", "got an array"]),
    ({"done": None}, ["field 'done'", "got null"]),
], ids=["done-a-string", "artifacts-a-list", "done-null"])
def test_state_json_of_the_wrong_structure(cli, tmp_path, change, named):
    run = tmp_path / "run"
    state = finished_sft(run)
    write_state(run, {**state, **change})
    refused(cli, run, f"{run / 'state.json'}: ", *named)


def test_state_json_without_its_done_list(cli, tmp_path):
    run = tmp_path / "run"
    state = finished_sft(run)
    del state["done"]
    write_state(run, state)
    refused(cli, run, f"{run / 'state.json'}: field 'done': missing")


def test_state_json_that_is_not_an_object(cli, tmp_path):
    run = tmp_path / "run"
    finished_sft(run)
    (run / "state.json").write_text('["base", "sft"]\n')
    refused(cli, run, f"{run / 'state.json'}: expected a JSON object, got an array")


def test_summary_json_of_the_wrong_structure(cli, tmp_path):
    run = tmp_path / "run"
    finished_sft(run)
    (run / "summary.json").write_text('{"rounds": {"round": 1}}')
    refused(cli, run, f"{run / 'summary.json'}: field 'rounds': must be a list of objects")


# --- done stages the config does not plan -----------------------------------------------


def test_a_done_stage_no_plugin_registers(cli, tmp_path):
    run = tmp_path / "run"
    state = finished_sft(run)
    write_state(run, {**state, "done": [*state["done"], "distill"]})
    refused(cli, run, str(run / "state.json"), "done stage 'distill'", "no installed plugin registers a stage "
            "'distill'", "install the plugin")


def test_a_done_round_beyond_the_configured_rounds(cli, tmp_path):
    run = tmp_path / "run"
    state = finished_sft(run)
    write_state(run, {**state, "done": [*state["done"], "round_3/collect"]})
    refused(cli, run, "done stage 'round_3/collect'", "pipeline.rounds=1", "another config",
            f'remove it from "done" in {run / "state.json"}')


def test_a_done_stage_this_config_does_not_run(cli, tmp_path):
    # grpo is registered, but this config's round 1 runs PPO
    run = tmp_path / "run"
    state = finished_sft(run)
    write_state(run, {**state, "done": [*state["done"], "round_1/grpo"]})
    refused(cli, run, "done stage 'round_1/grpo'", "round 1 runs collect, reward, rejection_sampling, ppo")


def test_a_done_stage_before_the_rounds_that_pipeline_stages_leaves_out(cli, tmp_path):
    run = tmp_path / "run"
    finished_sft(run)
    before = snapshot(run)
    # a config that is sound on its own: a reward model from the base checkpoint, no rounds
    assert_bad(cli(f"hydra.run.dir={run}", *TINY, "pipeline.stages=[reward]", "pipeline.rounds=0",
                   "reward_model.init_from=base"), "done stage 'sft'", "pipeline.stages=[reward]")
    assert snapshot(run) == before


# --- artifacts gone from disk -----------------------------------------------------------


def test_an_artifact_folder_that_was_deleted(cli, tmp_path):
    import shutil

    run = tmp_path / "run"
    finished_sft(run)
    shutil.rmtree(run / "sft")
    refused(cli, run, f"artifacts 'sft', 'policy' are {run / 'sft' / 'model'}, which does not exist",
            f"remove 'sft' from \"done\" in {run / 'state.json'} to redo that stage")


def test_a_model_folder_without_its_weights(cli, tmp_path):
    run = tmp_path / "run"
    finished_sft(run)
    (run / "sft" / "model" / "model.safetensors").unlink()
    refused(cli, run, "artifacts 'sft', 'policy'", f"model folder {run / 'sft' / 'model'}", "no weights",
            "redo that stage")


def test_a_sharded_model_folder_missing_a_shard(cli, tmp_path):
    run = tmp_path / "run"
    finished_sft(run)
    model = run / "sft" / "model"
    (model / "model.safetensors").unlink()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    weights_file(model / "model-00001-of-00002.safetensors")
    refused(cli, run, "artifacts 'sft', 'policy'", "names the shard model-00002-of-00002.safetensors")


def test_a_model_folder_whose_weights_were_cut_short(cli, tmp_path):
    run = tmp_path / "run"
    finished_sft(run)
    weights = run / "sft" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    refused(cli, run, "artifacts 'sft', 'policy'", "cannot read model.safetensors", "redo that stage")


def test_a_comparisons_file_that_was_deleted(cli, tmp_path):
    run = tmp_path / "run"
    state = finished_sft(run)
    comparisons = run / "collect" / "comparisons.jsonl"
    write_state(run, {**state, "done": [*state["done"], "collect"],
                      "artifacts": {**state["artifacts"], "round_0/comparisons": str(comparisons)}})
    refused(cli, run, "artifact 'round_0/comparisons'", f"{comparisons}, which does not exist",
            "remove 'collect' from")


def test_a_run_directory_that_was_moved(cli, tmp_path):
    old = tmp_path / "old"
    finished_sft(old)
    run = tmp_path / "run"
    old.rename(run)
    refused(cli, run, f"artifact 'base' is {old / 'base'}, which does not exist (and 1 more), outside this run "
            "directory", "moved, move it back")


def test_every_problem_is_listed(cli, tmp_path):
    run = tmp_path / "run"
    state = finished_sft(run)
    (run / "sft" / "model" / "model.safetensors").unlink()
    write_state(run, {**state, "done": [*state["done"], "round_3/collect"]})
    (run / "summary.json").write_text("{")
    result = cli("--validate", f"hydra.run.dir={run}", *TINY)
    assert result.code == 2 and "Traceback" not in result.err
    assert [line.split(": ", 2)[1] for line in result.lines] == [
        f"{run / 'summary.json'}:1", f"{run / 'state.json'}", f"{run / 'state.json'}"]
    assert "'round_3/collect'" in result.lines[1] and "artifacts 'sft', 'policy'" in result.lines[2]


def test_a_hub_id_artifact_is_not_a_path_to_check(cli, tmp_path):
    run = tmp_path / "run"
    state = finished_sft(run)
    write_state(run, {**state, "artifacts": {**state["artifacts"], "reward": "someone/a-reward-model"}})
    result = cli("--validate", f"hydra.run.dir={run}", *TINY)
    assert result.code == 0, result.err


# --- the same for API users -------------------------------------------------------------


def test_run_context_open_raises_the_same_and_writes_nothing(tmp_path):
    from omegaconf import OmegaConf

    from llama2rlhf.data.errors import DataError, InputError
    from llama2rlhf.recipe.pipeline import planned_keys
    from llama2rlhf.runtime.run import RunContext

    run = tmp_path / "run"
    state = finished_sft(run)
    cfg = OmegaConf.create({"pipeline": {"stages": ["sft", "collect", "reward"], "rounds": 1, "ppo_rounds": [],
                                         "round_stages": ["collect", "reward", "rejection_sampling", "evaluate"],
                                         "ppo_stages": ["ppo"]}})
    assert planned_keys(cfg) == ["base", "sft", "collect", "reward", "round_1/collect", "round_1/reward",
                                 "round_1/rejection_sampling", "round_1/evaluate", "round_1"]
    (run / "state.json").write_text('{"version": 1, "done": [')
    before = snapshot(run)
    with pytest.raises(DataError, match=r"state.json:1: invalid JSON: Expecting value \(column 25\)"):
        RunContext.open(cfg, run, plan=planned_keys(cfg))
    write_state(run, {**state, "done": [*state["done"], "round_2/collect"]})
    before = snapshot(run)
    with pytest.raises(InputError, match="done stage 'round_2/collect'.*pipeline.rounds=1"):
        RunContext.open(cfg, run, plan=planned_keys(cfg))
    assert snapshot(run) == before
    ctx = RunContext.open(cfg, run)  # no plan: the stage keys are not checked
    assert ctx.state.done[-1] == "round_2/collect" and ctx.summary["sft"] == {"task_accuracy": 0.5}


# --- the writer: whole files and folders, and the metrics log ---------------------------


def test_metrics_log_drops_a_line_cut_by_a_kill(tmp_path):
    from llama2rlhf.data.jsonl import append_log
    from llama2rlhf.runtime.run import read_metrics

    log = tmp_path / "metrics.jsonl"
    append_log(log, {"prefix": "sft", "loss": 1.5})
    append_log(log, {"prefix": "reward", "loss": float("nan")})  # a diverged metric is a result
    whole = log.read_bytes()
    log.write_bytes(whole + b'{"prefix": "collect", "n_pa')  # killed mid-append
    assert [r["prefix"] for r in read_metrics(tmp_path)] == ["sft", "reward"]
    append_log(log, {"prefix": "collect", "n_pairs": 3})  # the resumed run appends after it
    assert log.read_bytes().startswith(whole)
    assert [r["prefix"] for r in read_metrics(tmp_path)] == ["sft", "reward", "collect"]
    assert read_metrics(tmp_path / "nowhere") == []


def test_metrics_log_with_a_broken_line_inside_is_an_error(tmp_path):
    from llama2rlhf.data.errors import DataError
    from llama2rlhf.runtime.run import read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"a": 1}\n{"a": \n{"a": 2}\n')
    with pytest.raises(DataError, match="metrics.jsonl:2: not a JSON record"):
        read_metrics(tmp_path)


def test_a_model_folder_is_replaced_whole(tmp_path):
    """What a killed save left (a staging folder, or a partial folder the stage was redone
    over) does not survive the next save."""
    from llama2rlhf.data.jsonl import replace_folder, staging_folder

    target = tmp_path / "sft" / "model"
    model_folder(target, weights=False)  # an earlier attempt's partial save
    (target / "stale.bin").write_bytes(b"old")
    leftover = tmp_path / "sft" / "model.tmp"
    leftover.mkdir()
    (leftover / "half.safetensors").write_bytes(b"half")
    staging = Path(staging_folder(target))
    assert staging == leftover and not staging.exists()
    model_folder(staging)
    replace_folder(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]


def test_report_and_plots_go_through_the_atomic_writer(tmp_path, monkeypatch):
    from llama2rlhf.data import jsonl

    written = []
    real = jsonl._replace_atomically
    monkeypatch.setattr(jsonl, "_replace_atomically", lambda path, chunks: (written.append(Path(path).name),
                                                                            real(path, chunks)))
    from llama2rlhf.evaluation import plots
    from llama2rlhf.evaluation.report import write_report

    plots.plot_adherence(tmp_path / "plots" / "a.png", {"SFT": {"1": 0.5, "2": 0.25}})
    write_report(tmp_path, {"rounds": []}, None)
    assert written[0] == "a.png" and written[-1] == "report.md"
    assert (tmp_path / "plots" / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob("*.tmp"))
