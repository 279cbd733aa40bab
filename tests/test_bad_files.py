"""Bad input files and models as users give them: every data file a planned stage reads is
loaded row by row before anything trains, every model the run starts from is checked
without loading a weight. Each case exits with code 2 and one line naming the key, the path
or the ``file:line: field``, prints no traceback, and creates no run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import assert_bad

# real data through the stages that read it: SFT, comparisons collected and labelled by
# people, the reward model, one round; no Ghost Attention (its checker needs the toy world)
REAL = ["logger=none", "data=jsonl", "annotator=file", "augmenter=none", "pipeline.rounds=1"]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


SFT = [{"messages": [user(f"What is {i} plus one?"), bot(f"It is {i + 1}.")]} for i in range(12)]
PAIRS = [{"prompt": [user(f"Name a colour number {i}.")], "chosen": [bot("Blue.")], "rejected": [bot("No.")]}
         for i in range(12)]
PROMPTS = [{"prompt": f"Tell me about the number {i}."} for i in range(40)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # Hub ids are looked up in the local cache only: no test asks the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def files(tmp_path):
    """Valid real-data files, and the overrides that point the run at them."""
    folder = tmp_path / "data"
    folder.mkdir()
    paths = {"sft": write_jsonl(folder / "sft.jsonl", SFT), "prefs": write_jsonl(folder / "prefs.jsonl", PAIRS),
             "prompts": write_jsonl(folder / "prompts.jsonl", PROMPTS)}
    overrides = [*REAL, f"data.sft_path={paths['sft']}", f"data.preference_path={paths['prefs']}",
                 f"data.prompt_path={paths['prompts']}"]
    return paths, overrides


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer):
    """A tiny Llama with its tokenizer, as save_pretrained writes it (copied by the tests
    that break it)."""
    from llama2rlhf.toyworld.model import build_tiny_llama

    folder = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_llama(tokenizer, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def model_copy(saved_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    return folder


def validate(cli, tmp_path, *overrides):
    run = tmp_path / "run"
    result = cli("--validate", f"hydra.run.dir={run}", *overrides)
    assert not run.exists()
    return result


# --- valid input passes ---------------------------------------------------------------


def test_valid_files_and_a_valid_local_model_pass(cli, tmp_path, files, saved_model):
    _, overrides = files
    result = validate(cli, tmp_path, *overrides, "model=hf", f"model.name_or_path={saved_model}",
                      f"reward_model.name_or_path={saved_model}")
    assert result.code == 0, result.err
    assert "valid: 1 round(s)" in result.err


def test_a_pickle_only_checkpoint_passes_and_loads(cli, tmp_path, model_copy):
    """transformers 5 loads pytorch_model.bin (torch.load with weights_only) as it loads
    safetensors: such a folder is a model like any other."""
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from llama2rlhf.runtime.models import load_causal_lm

    weights = load_file(model_copy / "model.safetensors")
    (model_copy / "model.safetensors").unlink()
    torch.save(weights, model_copy / "pytorch_model.bin")
    result = validate(cli, tmp_path, "logger=none", "model=hf", f"model.name_or_path={model_copy}")
    assert result.code == 0, result.err
    cfg = OmegaConf.create({"model": {"name_or_path": str(model_copy), "dtype": "float32", "trust_remote_code": False}})
    model = load_causal_lm(str(model_copy), cfg)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in weights.items())


# --- data files -----------------------------------------------------------------------


def break_file(paths, name: str, text: str) -> Path:
    paths[name].write_text(text, encoding="utf-8")
    return paths[name]


def test_a_broken_json_line_is_named_with_its_line(cli, tmp_path, files):
    paths, overrides = files
    path = break_file(paths, "sft", json.dumps(SFT[0]) + "\n" + '{"messages": [\n')
    assert_bad(validate(cli, tmp_path, *overrides), f"{path}:2: invalid JSON")


def test_a_field_of_the_wrong_type_is_named(cli, tmp_path, files):
    paths, overrides = files
    write_jsonl(paths["prefs"], [*PAIRS[:3], {**PAIRS[3], "chosen": 5}])
    assert_bad(validate(cli, tmp_path, *overrides),
               f"{paths['prefs']}:4: field 'chosen': must be a string or a list of messages, got number")


def test_a_missing_field_is_named(cli, tmp_path, files):
    paths, overrides = files
    write_jsonl(paths["prompts"], [*PROMPTS[:2], {"question": "where is the prompt?"}])
    assert_bad(validate(cli, tmp_path, *overrides), f"{paths['prompts']}:3: field 'prompt': missing required field")


def test_a_bad_role_order_is_named(cli, tmp_path, files):
    paths, overrides = files
    write_jsonl(paths["sft"], [SFT[0], {"messages": [user("hi"), user("again"), bot("hello")]}])
    assert_bad(validate(cli, tmp_path, *overrides),
               f"{paths['sft']}:2: field 'messages[1].role': a second user message in a row")


def test_a_broken_hh_rlhf_transcript_is_named(cli, tmp_path, files):
    paths, overrides = files
    write_jsonl(paths["prefs"], [{"chosen": "\n\nHuman: hi\n\nAssistant: hello",
                                  "rejected": "\n\nAssistant: hi\n\nHuman: hello"}])
    assert_bad(validate(cli, tmp_path, *overrides),
               f"{paths['prefs']}:1: field 'rejected': bad hh-rlhf transcript")


def test_bytes_that_are_not_utf8_are_named(cli, tmp_path, files):
    paths, overrides = files
    paths["sft"].write_bytes(json.dumps(SFT[0]).encode() + b"\n" + b'{"messages": "caf\xe9"}\n')
    assert_bad(validate(cli, tmp_path, *overrides), f"{paths['sft']}:2: not valid UTF-8")


def test_a_bad_object_in_a_json_array_file_is_named_with_its_line(cli, tmp_path, files):
    paths, overrides = files
    array = tmp_path / "data" / "sft.json"
    array.write_text("[\n" + json.dumps(SFT[0]) + ",\n" + json.dumps({"messages": [bot("no question")]}) + "\n]\n")
    assert_bad(validate(cli, tmp_path, *overrides, f"data.sft_path={array}"),
               f"{array}:3: field 'messages[0].role': the conversation must start with a user message")


def test_an_empty_file_is_named_with_its_key(cli, tmp_path, files):
    paths, overrides = files
    path = break_file(paths, "prompts", "\n\n")
    assert_bad(validate(cli, tmp_path, *overrides), f"data.prompt_path={path}: no rows; the file is empty")


def test_a_file_every_row_of_which_is_skipped_says_why(cli, tmp_path, files):
    paths, overrides = files
    write_jsonl(paths["prefs"], [{"prompt": [user("a?")], "chosen": [bot("same")], "rejected": [bot("same")]}] * 3)
    assert_bad(validate(cli, tmp_path, *overrides), f"data.preference_path={paths['prefs']}: none of its 3 rows is "
                                                    "usable", "identical_replies 3")


@pytest.mark.parametrize("key", ["sft_path", "preference_path", "prompt_path", "preference_eval_path"])
def test_a_missing_file_names_its_key_and_path(cli, tmp_path, files, key):
    _, overrides = files
    missing = tmp_path / "nowhere" / f"{key}.jsonl"
    assert_bad(validate(cli, tmp_path, *overrides, f"data.{key}={missing}"),
               f"data.{key}={missing}: no such file or folder")


def test_a_data_file_left_unset_names_its_key(cli, tmp_path, files):
    paths, _ = files
    # data=jsonl leaves sft_path and preference_path to the user (???); the rounds read prompts
    result = validate(cli, tmp_path, *REAL, f"data.preference_path={paths['prefs']}",
                      f"data.prompt_path={paths['prompts']}")
    assert_bad(result, "data.sft_path: not set", "the sft stage reads demonstrations")
    result = validate(cli, tmp_path, *REAL, f"data.sft_path={paths['sft']}", f"data.preference_path={paths['prefs']}")
    assert_bad(result, "data.prompt_path: not set", "data.prompt_path=data/prompt.jsonl")


def test_identical_replies_are_an_error_with_on_bad_row_error(cli, tmp_path, files):
    paths, overrides = files
    write_jsonl(paths["prefs"], [*PAIRS[:4], {"prompt": [user("a?")], "chosen": [bot("same")],
                                              "rejected": [bot("same")]}])
    assert_bad(validate(cli, tmp_path, *overrides, "data.on_bad_row=error"),
               f"{paths['prefs']}:5: field 'rejected': 'chosen' and 'rejected' are the same reply",
               "data.on_bad_row=skip skips such rows")


def test_replies_that_differ_in_white_space_only_are_identical(cli, tmp_path, files):
    # chat templates strip the content: both replies would be the same tokens
    paths, overrides = files
    write_jsonl(paths["prefs"], [*PAIRS[:4], {"prompt": [user("a?")], "chosen": [bot("same")],
                                              "rejected": [bot(" same\n")]}])
    assert_bad(validate(cli, tmp_path, *overrides, "data.on_bad_row=error"),
               f"{paths['prefs']}:5: field 'rejected': 'chosen' and 'rejected' are the same reply")


def test_identical_replies_are_skipped_and_counted_with_on_bad_row_skip(cli, tmp_path, files):
    paths, overrides = files
    write_jsonl(paths["prefs"], [*PAIRS, {"prompt": [user("a?")], "chosen": [bot("same")], "rejected": [bot("same ")]}])
    result = validate(cli, tmp_path, *overrides)
    assert result.code == 0, result.err
    # logged as the reward stage logs it when it loads the file
    assert f"12 of 13 rows kept; skipped: identical_replies 1 (first {paths['prefs']}:13)" in result.out


def test_one_preference_pair_leaves_the_reward_model_nothing_to_train_on(cli, tmp_path, files):
    paths, overrides = files
    write_jsonl(paths["prefs"], PAIRS[:1])
    assert_bad(validate(cli, tmp_path, *overrides), f"data.preference_path={paths['prefs']}: 1 usable preference pair",
               "leaving none to train on", "data.preference_eval_path")


def test_prompts_with_none_held_out_for_evaluation(cli, tmp_path, files):
    from llama2rlhf.data.round_prompts import heldout_share

    paths, overrides = files
    rows = [r for r in PROMPTS if not heldout_share([user(r["prompt"])], 0.1)][:3]
    write_jsonl(paths["prompts"], rows)
    assert_bad(validate(cli, tmp_path, *overrides),
               f"data.prompt_path={paths['prompts']}: none of its 3 prompts is held out for evaluation")


def test_a_bad_label_of_annotator_file_is_named_before_the_run_continues(cli, tmp_path, files):
    paths, overrides = files
    collect = tmp_path / "run" / "collect"
    collect.mkdir(parents=True)
    write_jsonl(collect / "pairs.jsonl", [{"id": "r0-0", "prompt": [user("a?")], "a": "x", "b": "y", "meta": {}}])
    labelled = write_jsonl(collect / "labelled.jsonl", [{"id": "r0-0", "preferred": "c", "strength": "better"}])
    result = cli("--validate", f"hydra.run.dir={tmp_path / 'run'}", *overrides)
    assert_bad(result, f"{labelled}:1: field 'preferred': must be \"a\" or \"b\", got 'c'")


def test_a_real_run_stops_on_a_bad_row_before_sft_trains(cli, tmp_path, files):
    paths, overrides = files
    path = break_file(paths, "prompts", json.dumps(PROMPTS[0]) + "\n" + '{"prompt": 3}\n')
    run = tmp_path / "run"
    assert_bad(cli(f"hydra.run.dir={run}", *overrides), f"{path}:2: field 'prompt': must be a string")
    assert not (run / "sft").exists()


# --- lengths --------------------------------------------------------------------------


def test_sft_max_length_below_every_toy_example(cli, tmp_path):
    line = assert_bad(validate(cli, tmp_path, "logger=none", "sft.max_length=8"), "sft.max_length=8",
                      "shorter than every example of the toy world's demonstrations", "num_samples=0")
    shortest = int(line.split("the shortest needs ")[1].split()[0])
    assert shortest > 8
    # the length it names is enough
    assert validate(cli, tmp_path, "logger=none", f"sft.max_length={shortest}").code == 0


def test_sft_max_length_below_every_example_of_a_file(cli, tmp_path, files, saved_model):
    paths, overrides = files
    line = assert_bad(validate(cli, tmp_path, *overrides, "model=hf", f"model.name_or_path={saved_model}",
                               "sft.padding_free=false", "sft.max_length=4"),
                      "sft.max_length=4", f"data.sft_path={paths['sft']}", "prompt up to the first reply token")
    shortest = int(line.split("the shortest needs ")[1].split()[0])
    assert validate(cli, tmp_path, *overrides, "model=hf", f"model.name_or_path={saved_model}",
                    "sft.padding_free=false", f"sft.max_length={shortest}").code == 0


def test_reward_max_length_below_every_comparison(cli, tmp_path, files):
    paths, overrides = files
    assert_bad(validate(cli, tmp_path, *overrides, "reward_model.max_length=3"), "reward_model.max_length=3",
               f"data.preference_path={paths['prefs']}", "to keep its two replies whole")


# --- models ---------------------------------------------------------------------------


def hf(folder) -> list[str]:
    return ["logger=none", "model=hf", f"model.name_or_path={folder}"]


def test_a_missing_model_folder(cli, tmp_path):
    missing = tmp_path / "no" / "model"
    assert_bad(validate(cli, tmp_path, *hf(missing)), f"model.name_or_path={missing}: no such folder, and not a Hub id")


def test_a_model_path_that_is_not_a_hub_id_either(cli, tmp_path):
    # what from_pretrained says of it: "Repo id must be in the form 'repo_name' or 'namespace/repo_name'"
    assert_bad(validate(cli, tmp_path, *hf("models/llama/7b")),
               "model.name_or_path=models/llama/7b: no such folder, and not a Hub id")


def test_a_hub_id_not_in_the_cache_while_offline(cli, tmp_path):
    assert_bad(validate(cli, tmp_path, *hf("someone/no-such-model-here")),
               "model.name_or_path=someone/no-such-model-here: no such folder, and not in the local Hugging Face "
               "cache while offline", "hf download someone/no-such-model-here")


def test_a_folder_without_config_json(cli, tmp_path, model_copy):
    (model_copy / "config.json").unlink()
    assert_bad(validate(cli, tmp_path, *hf(model_copy)), f"model.name_or_path={model_copy}: no config.json")


def test_a_truncated_safetensors_file(cli, tmp_path, model_copy):
    weights = model_copy / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    assert_bad(validate(cli, tmp_path, *hf(model_copy)),
               f"model.name_or_path={model_copy}: cannot read model.safetensors", "cut short")


def test_a_truncated_pickle_checkpoint(cli, tmp_path, model_copy):
    import torch
    from safetensors.torch import load_file

    bin_file = model_copy / "pytorch_model.bin"
    torch.save(load_file(model_copy / "model.safetensors"), bin_file)
    (model_copy / "model.safetensors").unlink()
    with open(bin_file, "r+b") as handle:
        handle.truncate(bin_file.stat().st_size - 100)
    assert_bad(validate(cli, tmp_path, *hf(model_copy)),
               f"model.name_or_path={model_copy}: cannot read pytorch_model.bin")


def test_a_shard_missing_from_its_index(cli, tmp_path, model_copy):
    (model_copy / "model.safetensors").rename(model_copy / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                                            "model.norm.weight": "model-00002-of-00002.safetensors"}}
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_bad(validate(cli, tmp_path, *hf(model_copy)),
               "model.safetensors.index.json names the shard model-00002-of-00002.safetensors")


def test_a_folder_without_weights(cli, tmp_path, model_copy):
    (model_copy / "model.safetensors").unlink()
    assert_bad(validate(cli, tmp_path, *hf(model_copy)), f"model.name_or_path={model_copy}: no weights in the folder")


def test_a_folder_without_a_tokenizer(cli, tmp_path, model_copy):
    # what model.save_pretrained alone writes
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (model_copy / name).unlink()
    assert_bad(validate(cli, tmp_path, *hf(model_copy)), f"model.name_or_path={model_copy}: no tokenizer")


def test_a_missing_gguf_file(cli, tmp_path, model_copy):
    assert_bad(validate(cli, tmp_path, *hf(model_copy), "model.gguf_file=model.Q4_K_M.gguf"),
               f"model.gguf_file=model.Q4_K_M.gguf: no such file in model.name_or_path={model_copy}")


def test_a_gguf_file_given_as_the_folder(cli, tmp_path):
    gguf = tmp_path / "model.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    assert_bad(validate(cli, tmp_path, *hf(gguf)), f"model.name_or_path={gguf}: a GGUF file",
               f"model.gguf_file={gguf.name}")


def test_a_missing_reward_model_folder(cli, tmp_path):
    missing = tmp_path / "rm"
    assert_bad(validate(cli, tmp_path, "logger=none", f"reward_model.name_or_path={missing}"),
               f"reward_model.name_or_path={missing}: no such folder")


def test_a_missing_judge_of_annotator_reward_model(cli, tmp_path, files):
    _, overrides = files
    missing = tmp_path / "judge"
    assert_bad(validate(cli, tmp_path, *overrides, "annotator=reward_model", f"annotator.name_or_path={missing}"),
               f"annotator.name_or_path={missing}: no such folder")


def test_a_real_run_stops_on_a_broken_model_before_sft_trains(cli, tmp_path, model_copy):
    (model_copy / "config.json").unlink()
    run = tmp_path / "run"
    assert_bad(cli(f"hydra.run.dir={run}", *hf(model_copy)), f"model.name_or_path={model_copy}: no config.json")
    assert not (run / "sft").exists()


# --- the loaders say the same to API users ----------------------------------------------


def test_the_model_loaders_raise_the_same_line(model_copy):
    from omegaconf import OmegaConf

    from llama2rlhf.data.errors import InputError
    from llama2rlhf.runtime.models import load_causal_lm, load_reward_model, load_tokenizer

    weights = model_copy / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(100)
    cfg = OmegaConf.create({"model": {"name_or_path": "x", "dtype": "float32", "trust_remote_code": False},
                            "reward_model": {"name_or_path": str(model_copy)}})
    with pytest.raises(InputError, match=f"^reward_model.name_or_path={model_copy}: cannot read model.safetensors"):
        load_reward_model(str(model_copy), cfg)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_copy / name).unlink()
    with pytest.raises(InputError, match=f"^model.name_or_path={model_copy}: no tokenizer"):
        load_tokenizer(str(model_copy), key="model.name_or_path")
    with pytest.raises(InputError, match="^model.name_or_path=a/b/c: no such folder, and not a Hub id"):
        load_causal_lm("a/b/c", OmegaConf.merge(cfg, {"model": {"name_or_path": "a/b/c"}}))


def test_the_stages_load_data_with_the_same_line(tmp_path):
    from omegaconf import OmegaConf

    from llama2rlhf.data.errors import ConfigError, InputError
    from llama2rlhf.data.inputs import load_input

    data = {"source": "files", "sft_path": None, "prompt_path": str(tmp_path / "p.jsonl"), "on_bad_row": "skip",
            "split": "train", "eval_split": None, "subset": None, "data_dir": None}
    cfg = OmegaConf.create({"data": data})
    with pytest.raises(InputError, match=f"^data.prompt_path={tmp_path / 'p.jsonl'}: no such file or folder$"):
        load_input(cfg, "prompt_path")
    with pytest.raises(ConfigError, match="^data.sft_path: not set"):
        load_input(cfg, "sft_path")
