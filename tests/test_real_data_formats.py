"""Real data as it is published: hh-rlhf's quirks, ShareGPT rows, JSON arrays, role order,
and the rows each loader skips or repairs by rule (llama2rlhf.data.formats)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama2rlhf.data.errors import DataError
from llama2rlhf.data.formats import LoadReport, load_preferences, load_prompts, load_sft


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
# hh-rlhf harmless-base's quirks, shaped like its rows: an Assistant reply cut in two by a
# stray tag in chosen only (the prompts agree once it is joined), the same in the middle of
# both transcripts, an empty final reply, and a second Human turn in a row
CUT_REPLY = {
    "chosen": "\n\nHuman: rob a house?\n\nAssistant: Human: I can help.  Human: Great!\n\nAssistant: Try smaller crimes.",
    "rejected": "\n\nHuman: rob a house?\n\nAssistant: Between 3 and 7 AM.",
}
MIDDLE = {
    "chosen": "\n\nHuman: a\n\nAssistant: b\n\nAssistant: c\n\nHuman: d\n\nAssistant: yes",
    "rejected": "\n\nHuman: a\n\nAssistant: b\n\nAssistant: c\n\nHuman: d\n\nAssistant: no",
}
EMPTY = {"chosen": "\n\nHuman: steal a puppy?\n\nAssistant: ", "rejected": "\n\nHuman: steal a puppy?\n\nAssistant: Sure."}
TWO_HUMANS = {"chosen": "\n\nHuman: hi\n\nHuman: there\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nHuman: there\n\nAssistant: no"}


@pytest.fixture
def hh_file(tmp_path: Path) -> Path:
    return jsonl(tmp_path / "hh.jsonl", [GOOD, CUT_REPLY, MIDDLE, EMPTY, TWO_HUMANS, GOOD])


def test_hh_preferences_join_repeated_turns_and_skip_empty_replies(hh_file: Path) -> None:
    report = LoadReport()
    rows = load_preferences(hh_file, report=report).to_list()
    assert len(rows) == 5  # line 4 (empty chosen reply) is left out
    # line 2: chosen's two Assistant turns are one reply; the prompt is the shared Human turn
    assert rows[1] == {"prompt": [user("rob a house?")],
                       "chosen": [bot("Human: I can help.  Human: Great!\n\nTry smaller crimes.")],
                       "rejected": [bot("Between 3 and 7 AM.")]}
    assert rows[2]["prompt"] == [user("a"), bot("b\n\nc"), user("d")]
    assert rows[3]["prompt"] == [user("hi\n\nthere")]
    assert report.as_dict() == {
        "file": str(hh_file), "rows": 6, "kept": 5,
        "skipped_rows": {"empty_reply": {"count": 1, "first": [f"{hh_file}:4"]}},
        # a row counts once, though both of its transcripts were repaired
        "repaired_rows": {"repeated_turns": {"count": 3, "first": [f"{hh_file}:2", f"{hh_file}:3", f"{hh_file}:5"]}},
    }


def test_hh_sft_and_prompts_follow_the_same_rules(hh_file: Path) -> None:
    report = LoadReport()
    sft = load_sft(hh_file, report=report).to_list()
    assert [len(r["messages"]) for r in sft] == [2, 2, 4, 2, 2]
    assert report.skipped == {"empty_reply": {"count": 1, "first": [f"{hh_file}:4"]}}
    report = LoadReport()
    prompts = load_prompts(hh_file, report=report)["prompt"]
    # a prompt does not need the reply: the empty-reply row gives its prompt too
    assert len(prompts) == 6 and prompts[3] == [user("steal a puppy?")]
    assert report.skipped == {} and report.repaired["repeated_turns"]["count"] == 3


def test_on_bad_row_error_stops_at_the_first_quirk_with_its_line(hh_file: Path) -> None:
    with pytest.raises(DataError) as err:
        load_preferences(hh_file, on_bad_row="error")
    assert str(err.value) == (f"{hh_file}:2: field 'chosen': turn 3 is a second Assistant turn in a row "
                              "(data.on_bad_row=skip repairs such rows)")
    path = jsonl(hh_file.with_name("empty.jsonl"), [GOOD, EMPTY])
    with pytest.raises(DataError, match=r"empty.jsonl:2: field 'chosen': the final Assistant reply \(turn 2\) is "
                                        r"empty \(data.on_bad_row=skip skips such rows\)"):
        load_sft(path, on_bad_row="error")
    with pytest.raises(ValueError, match="^data.on_bad_row='drop': must be one of skip, error$"):
        load_sft(path, on_bad_row="drop")


def test_a_file_with_no_usable_row_says_why(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "p.jsonl", [EMPTY, EMPTY])
    with pytest.raises(DataError, match=r"p.jsonl: none of its 2 rows is usable: .*empty_reply 2"):
        load_preferences(path)


def test_identical_replies_are_skipped(tmp_path: Path) -> None:
    same = {"prompt": [user("q")], "chosen": [bot("a")], "rejected": [bot("a")]}
    report = LoadReport()
    rows = load_preferences(jsonl(tmp_path / "p.jsonl", [same, dict(same, rejected=[bot("b")])]), report=report)
    assert len(rows) == 1 and rows[0]["rejected"] == [bot("b")]
    assert report.skipped == {"identical_replies": {"count": 1, "first": [f"{tmp_path / 'p.jsonl'}:1"]}}


# --- ShareGPT and JSON arrays ------------------------------------------------------------

SHAREGPT_SFT = {"system": "Be brief.", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                                         {"from": "human", "value": "bye"}, {"from": "gpt", "value": "bye!"}]}
SHAREGPT_PAIR = {"conversations": [{"from": "human", "value": "2+2?"}],
                 "chosen": {"from": "gpt", "value": "4"}, "rejected": {"from": "gpt", "value": "5"}}


def test_sharegpt_sft_preferences_and_prompts(tmp_path: Path) -> None:
    sft = load_sft(jsonl(tmp_path / "sft.jsonl", [SHAREGPT_SFT])).to_list()
    assert sft == [{"messages": [{"role": "system", "content": "Be brief."}, user("hi"), bot("hello"), user("bye"),
                                 bot("bye!")]}]
    pairs = load_preferences(jsonl(tmp_path / "pairs.jsonl", [SHAREGPT_PAIR])).to_list()
    assert pairs == [{"prompt": [user("2+2?")], "chosen": [bot("4")], "rejected": [bot("5")]}]
    prompts = load_prompts(jsonl(tmp_path / "prompts.jsonl", [SHAREGPT_SFT, SHAREGPT_PAIR]))["prompt"]
    # the conversation before its last reply; one that ends with the human, all of it
    assert prompts == [[{"role": "system", "content": "Be brief."}, user("hi"), bot("hello"), user("bye")],
                       [user("2+2?")]]


def test_json_array_files_load_and_name_the_line_of_a_bad_object(tmp_path: Path) -> None:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([SHAREGPT_PAIR, SHAREGPT_PAIR], indent=2), encoding="utf-8")
    assert len(load_preferences(path)) == 2
    bad = dict(SHAREGPT_PAIR, chosen={"from": "observation", "value": "x"})
    path.write_text(json.dumps([SHAREGPT_PAIR, bad], indent=2), encoding="utf-8")
    second = json.dumps([SHAREGPT_PAIR, bad], indent=2).splitlines().index("  {", 2) + 1
    with pytest.raises(DataError) as err:
        load_preferences(path)
    assert (err.value.line, err.value.field) == (second, "chosen.from")
    assert "unsupported speaker 'observation'" in err.value.reason
    path.write_text('[{"prompt": "q", "chosen": "a", "rejected": "b"},\n 3]', encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.json:2: expected a JSON object in the array, got a number"):
        load_preferences(path)
    path.write_text('[{"chosen": "a"\n "rejected": "b"}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.json:2: invalid JSON"):
        load_preferences(path)


# --- role order, every format ------------------------------------------------------------

SYSTEM = {"role": "system", "content": "s"}


@pytest.mark.parametrize(
    ("loader", "row", "field", "reason"),
    [
        (load_sft, {"messages": [user("a"), SYSTEM, bot("b")]}, "messages[1].role", "a system message can only open"),
        (load_sft, {"messages": [SYSTEM, bot("a")]}, "messages[1].role",
         "must start with a user message after the system message, got 'assistant'"),
        (load_sft, {"messages": [user("a"), user("b"), bot("c")]}, "messages[1].role", "a second user message in a row"),
        (load_sft, {"prompt": [user("a"), user("b")], "completion": [bot("c")]}, "prompt[1].role",
         "a second user message in a row"),
        (load_sft, {"prompt": [user("a")], "completion": [bot("b"), bot("c")]}, "completion[1].role",
         "a second assistant message in a row"),
        (load_sft, {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"},
                                      {"from": "gpt", "value": "c"}]}, "conversations[0].from",
         "must start with a user message"),
        (load_sft, {"system": "s", "conversations": [{"from": "human", "value": "a"}, {"from": "system", "value": "b"},
                                                     {"from": "gpt", "value": "c"}]}, "conversations[1].from",
         "a system message can only open the conversation, not follow its message 2"),
        (load_preferences, {"prompt": [user("a"), SYSTEM, user("b")], "chosen": [bot("c")], "rejected": [bot("d")]},
         "prompt[1].role", "a system message can only open"),
        (load_preferences, {"prompt": [user("a")], "chosen": [user("c"), bot("x")], "rejected": [bot("d")]},
         "chosen[0].role", "a second user message in a row"),
        (load_preferences, {"chosen": [user("a"), bot("b")], "rejected": [bot("a"), bot("b")]}, "rejected[0].role",
         "must start with a user message"),
        (load_preferences, {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
                            "chosen": {"from": "gpt", "value": "c"}, "rejected": {"from": "gpt", "value": "d"}},
         "conversations[1].from", "a second user message in a row"),
        (load_preferences, {"conversations": [{"from": "human", "value": "a"}],
                            "chosen": {"from": "human", "value": "c"}, "rejected": {"from": "gpt", "value": "d"}},
         "chosen.from", "a second user message in a row"),
        (load_prompts, {"prompt": [SYSTEM, SYSTEM, user("a")]}, "prompt[1].role", "a system message can only open"),
        (load_prompts, {"prompt": [user("a"), user("b")]}, "prompt[1].role", "a second user message in a row"),
    ],
)
def test_role_order_errors_name_file_line_and_field(tmp_path: Path, loader, row: dict, field: str, reason: str) -> None:
    path = jsonl(tmp_path / "rows.jsonl", [row])
    with pytest.raises(DataError) as err:
        loader(path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 1, field)
    assert reason in err.value.reason


def test_round_prompts_on_real_data_hold_out_a_share_and_draw_one_per_purpose(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from llama2rlhf.data.round_prompts import round_prompts

    path = jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"question {i}?"} for i in range(200)])
    cfg = OmegaConf.create({"seed": 0, "data": {"prompt_path": str(path), "on_bad_row": "skip", "eval_fraction": 0.25,
                                                "safety": None,
                                                "split": "train", "subset": None, "data_dir": None,
                                                "eval_split": None}})
    recorded = {}
    ctx = SimpleNamespace(world=None, cfg=cfg, record_data=lambda use, report: recorded.update({use: report.kept}))

    def texts(purpose, n, heldout=False):
        return [p.messages[-1]["content"] for p in round_prompts(ctx, purpose, n, heldout=heldout)]

    held_out = texts("eval", 1000, heldout=True)
    training = texts("rs", 1000)
    assert 30 < len(held_out) < 70 and len(held_out) + len(training) == 200 and not set(held_out) & set(training)
    assert texts("rs", 20) == texts("rs", 20) and texts("rs", 20) != texts("collect:1", 20)
    assert set(texts("collect:1", 20)) <= set(training) and recorded == {"prompts": 200}
