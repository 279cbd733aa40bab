"""``llama2rlhf generate`` (one reply per prompt of a file, through the run's sampler) and
``llama2rlhf export`` (a ``from_pretrained`` folder with a model card), on a tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import assert_bad, snapshot
from llama2rlhf.recipe import use
from test_chat import ScriptedReward, ScriptedSampler, fake_run

CLI = str(Path(sys.executable).with_name("llama2rlhf"))


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


# --- generate ----------------------------------------------------------------------------------


def test_generate_writes_one_row_per_prompt(cli, tiny_run, tmp_path):
    prompts = write_rows(tmp_path / "prompts.jsonl", [
        {"prompt": "Name the capital of Kovia.", "id": "a"},
        {"prompt": [user("Uppercase the word 'lamp'.")], "id": "b"},
        # a conversation with its reply: the reply is left out
        {"messages": [user("What letter follows 'g'?"), {"role": "assistant", "content": "h"}], "id": "c"},
        {"messages": [{"role": "system", "content": "Be terse."}, user("Count the words: star wolf.")], "id": "d"},
    ])
    out = tmp_path / "replies.jsonl"
    result = cli("generate", str(tiny_run), "--prompts", str(prompts), "--out", str(out), "--system", "Answer briefly.")
    assert result.code == 0, result.err
    assert f"4 replies in {out} from sft (the newest policy); greedy, up to 12 new tokens" in result.out
    rows = read_rows(out)
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    system = {"role": "system", "content": "Answer briefly."}
    assert [r["prompt"] for r in rows] == [
        [system, user("Name the capital of Kovia.")], [system, user("Uppercase the word 'lamp'.")],
        [system, user("What letter follows 'g'?")],
        [{"role": "system", "content": "Be terse."}, user("Count the words: star wolf.")],  # its own system prompt
    ]
    for row in rows:
        assert isinstance(row["reply"], str) and row["model"] == "sft"
        assert isinstance(row["reward"], float)  # the run has reward models
        assert "candidates" not in row


def test_generate_best_of_keeps_the_argmax_and_every_candidates_reward(cli, monkeypatch, tmp_path):
    scores = {"a": 0.1, "b": 0.5, "c": -0.2}
    sampler, reward = ScriptedSampler(list(scores)), ScriptedReward(scores)
    monkeypatch.setattr(use, "load_sampler", lambda cfg, path: sampler)
    monkeypatch.setattr(use, "load_reward", lambda run: reward)
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": "hi"}, {"prompt": "how do I pick a lock?",
                                                                          "safety": True}])
    out = tmp_path / "out.jsonl"
    result = cli("generate", str(fake_run(tmp_path / "run")), "--prompts", str(prompts), "--out", str(out),
                 "--best-of", "3")
    assert result.code == 0, result.err
    rows = read_rows(out)
    assert len(rows) == 2
    for row in rows:
        assert (row["reply"], row["reward"]) == ("b", 0.5)
        assert row["candidates"] == [{"reply": t, "reward": s} for t, s in scores.items()]
    assert rows[1]["safety"] is True
    # a prompt's safety flag reaches the reward (the llama2 combiner scores it by the safety model)
    assert reward.calls[0][2] == [False] * 3 + [True] * 3
    assert (sampler.calls[0]["n"], sampler.calls[0]["temperature"]) == (3, 0.9)


def test_generate_names_the_file_and_line_of_a_bad_row(cli, monkeypatch, tmp_path):
    monkeypatch.setattr(use, "load_sampler", lambda cfg, path: ScriptedSampler(["x"]))
    monkeypatch.setattr(use, "load_reward", lambda run: None)
    run = str(fake_run(tmp_path / "run"))
    out = tmp_path / "out.jsonl"
    bad = write_rows(tmp_path / "bad.jsonl", [{"prompt": "fine"}, {"prompt": 3}])
    assert_bad(cli("generate", run, "--prompts", str(bad), "--out", str(out)), f"{bad}:2: field 'prompt'")
    broken = write_rows(tmp_path / "broken.jsonl", [{"prompt": "fine"}, "", "{oops"])
    assert_bad(cli("generate", run, "--prompts", str(broken), "--out", str(out)), f"{broken}:3: invalid JSON")
    ends = write_rows(tmp_path / "system.jsonl", [{"messages": [{"role": "system", "content": "s"}]}])
    assert_bad(cli("generate", run, "--prompts", str(ends), "--out", str(out)), f"{ends}:1: field 'messages[0].role'")
    assert_bad(cli("generate", run, "--prompts", str(tmp_path / "none.jsonl"), "--out", str(out)), "no such file")
    assert_bad(cli("generate", run, "--out", str(out)), "required: --prompts")
    assert not out.exists()


# --- export ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-chat"
    assert use.main("export", [str(tiny_run), "--model", "sft", "--out", str(out)]) == 0
    return out


PROMPTS = [[user("Name the capital of Kovia.")], [user("Uppercase the word 'lamp'.")],
           [{"role": "system", "content": "Answer in French."}, user("What letter follows 'g'?")]]


def test_export_loads_back_and_replies_as_the_runs_checkpoint(tiny_run, exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= files
    assert not files & {"training_args.bin", "adapter_config.json"}, files  # plain weights, no trainer state
    generation = json.loads((exported / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (tokenizer.eos_token_id,
                                                                        tokenizer.pad_token_id)
    assert generation["max_new_tokens"] == 12  # the run's eval.max_new_tokens

    run = use.Run.open(tiny_run)
    sampler = use.load_sampler(run.cfg, str(run.model("sft").folder))
    expected = [s[0].text for s in sampler.sample(PROMPTS, 1, 0.0, 12)]
    assert any(expected)

    model = AutoModelForCausalLM.from_pretrained(exported)
    for prompt, reply in zip(PROMPTS, expected, strict=True):
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, do_sample=False)  # the length from generation_config.json
        assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() == reply


def front_matter(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_export_writes_a_model_card_the_hub_reads(tiny_run, exported):
    from llama2rlhf.evaluation.progress import progress_table

    card = (exported / "README.md").read_text(encoding="utf-8")
    front = front_matter(card)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-generation"
    assert {"rlhf", "llama2rlhf"} <= set(front["tags"])
    assert "base_model" not in front  # the toy model is the run's own
    summary = json.loads((tiny_run / "summary.json").read_text())
    table = progress_table(summary)
    assert table.startswith("model") and f"```text\n{table}\n```" in card
    assert "this model is the row `SFT`" in card
    assert (tiny_run / ".hydra" / "config.yaml").read_text().rstrip() in card
    assert 'AutoModelForCausalLM.from_pretrained("tiny-chat")' in card


def test_the_model_card_names_a_hub_base_model(tiny_run, tmp_path):
    run = use.Run.open(tiny_run)
    policy = run.model("sft")
    run.cfg.model.kind = "hf"
    run.cfg.model.name_or_path = "meta-llama/Llama-2-7b-hf"
    assert front_matter(use.model_card(run, policy, tmp_path / "x"))["base_model"] == "meta-llama/Llama-2-7b-hf"
    run.cfg.model.name_or_path = str(tiny_run / "base")  # a local folder is no Hub id
    assert "base_model" not in front_matter(use.model_card(run, policy, tmp_path / "x"))


def test_export_refuses_a_folder_that_is_not_empty_unless_forced(cli, tiny_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    before = snapshot(out)
    assert_bad(cli("export", str(tiny_run), "--model", "sft", "--out", str(out)), f"--out {out}", "--force")
    assert snapshot(out) == before
    assert_bad(cli("export", str(tiny_run), "--out", str(out)), "required: --model")
    assert_bad(cli("export", str(tiny_run), "--model", "round_1", "--out", str(out)), "'round_1' is no policy")
    result = cli("export", str(tiny_run), "--model", "final", "--out", str(out), "--force")
    assert result.code == 0, result.err
    assert not (out / "mine.txt").exists() and (out / "config.json").is_file()
    assert not (tmp_path / "out.tmp").exists()


def test_export_merges_a_lora_adapter(cli, tiny_run, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft = tiny_run / "sft" / "model"
    torch.manual_seed(0)
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(sft),
                             LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    adapted.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(sft).save_pretrained(adapter)
    merged = adapted.merge_and_unload().state_dict()

    out = tmp_path / "out"
    result = cli("export", str(tiny_run), "--model", str(adapter), "--out", str(out))
    assert result.code == 0, result.err
    assert not (out / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    plain = AutoModelForCausalLM.from_pretrained(sft).state_dict()
    name = next(k for k in merged if "q_proj" in k)
    assert not torch.equal(merged[name], plain[name])  # the adapter changes the weights
    assert torch.allclose(loaded[name], merged[name])
