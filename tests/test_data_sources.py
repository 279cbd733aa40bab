"""Data sets as data sources: saved on disk, a folder of data files (the Hub's code path),
Anthropic hh-rlhf rows for SFT, preferences and prompts, and errors that say where."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from llama2rlhf.data.errors import DataError
from llama2rlhf.data.formats import load_preferences, load_prompts, load_sft
from test_pipeline import CLI, SFT_RM, run_cli


def hh(i: int, reply: str) -> str:
    return f"\n\nHuman: What is {i} + 1?\n\nAssistant: Let me see.\n\nHuman: Well?\n\nAssistant: {reply}"


def hh_rows(n: int, start: int = 0) -> list[dict]:
    return [{"chosen": hh(i, f"It is {i + 1}."), "rejected": hh(i, "No idea.")} for i in range(start, start + n)]


@pytest.fixture
def saved_hh(tmp_path: Path) -> Path:
    """An hh-rlhf-shaped DatasetDict saved with ``save_to_disk``: 12 train rows, 4 test rows."""
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "hh-saved"
    DatasetDict({"train": Dataset.from_list(hh_rows(12)),
                 "test": Dataset.from_list(hh_rows(4, start=100))}).save_to_disk(str(folder))
    return folder


def test_saved_data_set_feeds_sft_preferences_and_prompts_by_split(saved_hh: Path) -> None:
    sft = load_sft(saved_hh)
    assert len(sft) == 12
    assert sft[3]["messages"] == [
        {"role": "user", "content": "What is 3 + 1?"}, {"role": "assistant", "content": "Let me see."},
        {"role": "user", "content": "Well?"}, {"role": "assistant", "content": "It is 4."}]
    test = load_preferences(saved_hh, split="test")
    assert len(test) == 4
    assert test[0]["prompt"][0]["content"] == "What is 100 + 1?"
    assert test[0]["chosen"] == [{"role": "assistant", "content": "It is 101."}]
    assert test[0]["rejected"] == [{"role": "assistant", "content": "No idea."}]
    prompts = load_prompts(saved_hh)
    assert prompts.column_names == ["prompt"]  # chosen/rejected are not kept as metadata
    assert prompts[5]["prompt"][-1] == {"role": "user", "content": "Well?"} and len(prompts[5]["prompt"]) == 3


def test_folder_of_data_files_goes_through_load_dataset(tmp_path: Path) -> None:
    # the code path of a Hub name: datasets.load_dataset, with the split picked by name
    folder = tmp_path / "hh-files"
    folder.mkdir()
    for split, rows in (("train", hh_rows(6)), ("test", hh_rows(2, start=50))):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_preferences(str(folder), split="train")) == 6
    assert load_preferences(str(folder), split="test")[1]["prompt"][0]["content"] == "What is 51 + 1?"


def test_bad_row_of_a_data_set_names_source_split_row_and_field(tmp_path: Path) -> None:
    from datasets import Dataset

    rows = hh_rows(3)
    rows[1]["chosen"] = "\n\nHuman: What?\n\nAssistant: x\n\nHuman: and?"
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError) as err:
        load_sft(tmp_path / "bad")
    assert str(err.value).startswith(f"{tmp_path / 'bad'}[train]:2: field 'chosen': bad hh-rlhf transcript")


def test_missing_split_and_missing_path_say_so(saved_hh: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"has no split 'validation'; it has test, train \(set data.split\)"):
        load_preferences(saved_hh, split="validation")
    with pytest.raises(DataError, match="no such file or folder"):
        load_sft(tmp_path / "nowhere.jsonl")


def test_data_hh_rlhf_config_runs_sft_and_reward_on_a_local_copy(saved_hh: Path, tmp_path: Path) -> None:
    paths = [f"data.{key}={saved_hh}" for key in ("sft_path", "preference_path", "preference_eval_path", "prompt_path")]
    proc = run_cli(tmp_path, "data=hh_rlhf", *paths, "reward_loss=bradley_terry", *SFT_RM)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sft"]["n_examples"] == 12
    assert summary["reward"]["n_pairs"] == 12  # the train split; the test split is held out
    assert summary["rm_accuracy"]["counts"]["overall"] == 4


def test_data_hh_rlhf_defaults_to_the_hub_name() -> None:
    proc = subprocess.run([CLI, "data=hh_rlhf", "--cfg", "job", "--package", "data"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "preference_path: Anthropic/hh-rlhf" in proc.stdout and "eval_split: test" in proc.stdout
