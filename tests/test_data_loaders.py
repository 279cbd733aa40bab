"""JSON Lines I/O and the TRL-format loaders (llama2rlhf.data.{errors,jsonl,formats})."""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from llama2rlhf.data.errors import DataError
from llama2rlhf.data.formats import load_preferences, load_prompts, load_sft
from llama2rlhf.data.jsonl import append_jsonl, read_jsonl, write_json, write_jsonl
from llama2rlhf.data.strength import STRENGTHS


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Write one line per item: dicts as JSON, str as-is, bytes raw."""
    with open(path, "wb") as handle:
        for line in lines:
            if isinstance(line, bytes):
                handle.write(line + b"\n")
            elif isinstance(line, str):
                handle.write(line.encode("utf-8") + b"\n")
            else:
                handle.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
    return path


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def expect_error(loader, path: Path, line: int | None, field: str | None, *reason: str) -> DataError:
    """Run ``loader`` and check the DataError's location, message, and that the file is untouched."""
    before = path.read_bytes()
    siblings = sorted(os.listdir(path.parent))
    with pytest.raises(DataError) as info:
        loader(path)
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), line, field)
    text = str(err)
    assert text.startswith(f"{path}:{line}: " if line is not None else f"{path}: ")
    if field is not None:
        assert f"field '{field}'" in text
    for part in reason:
        assert part in err.reason and part in text
    # A failed load writes nothing: the input is unchanged and no stray files appear.
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == siblings
    return err


# Like a row of Anthropic's hh-rlhf helpful-base: multi-turn, newlines inside turns.
HH_CHOSEN = (
    "\n\nHuman: Can you help me write a haiku about autumn?"
    "\n\nAssistant: Sure! Do you want it to rhyme?"
    "\n\nHuman: No, just 5-7-5.\nKeep it calm."
    "\n\nAssistant: Leaves drift to the ground\nquiet air and amber light\nthe year exhales slow"
)
HH_REJECTED = (
    "\n\nHuman: Can you help me write a haiku about autumn?"
    "\n\nAssistant: Sure! Do you want it to rhyme?"
    "\n\nHuman: No, just 5-7-5.\nKeep it calm."
    "\n\nAssistant: Autumn is a season."
)
HH_PROMPT = [
    user("Can you help me write a haiku about autumn?"),
    bot("Sure! Do you want it to rhyme?"),
    user("No, just 5-7-5.\nKeep it calm."),
]


# --- DataError --------------------------------------------------------------------------


def test_data_error_renders_location_and_pickles() -> None:
    err = DataError("data/p.jsonl", 7, "chosen", "must be a string, got number")
    assert isinstance(err, ValueError)
    assert str(err) == "data/p.jsonl:7: field 'chosen': must be a string, got number"
    assert str(DataError("f.jsonl", 2, None, "invalid JSON")) == "f.jsonl:2: invalid JSON"
    assert str(DataError("f.jsonl", None, None, "no rows")) == "f.jsonl: no rows"
    assert str(DataError("f.jsonl", None, "id", "bad")) == "f.jsonl: field 'id': bad"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.file, copy.line, copy.field, copy.reason) == ("data/p.jsonl", 7, "chosen", "must be a string, got number")


# --- read_jsonl / write_jsonl / append_jsonl -------------------------------------------


def test_read_jsonl_skips_blank_lines_but_counts_them(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "r.jsonl", [{"a": 1}, "", "   \t", {"b": "é"}, "\r", {"c": None}])
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, {"b": "é"}), (6, {"c": None})]


def test_read_jsonl_accepts_utf8_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"b": 2}\r\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (2, {"b": 2})]


def test_read_jsonl_reports_undecodable_bytes_with_offset(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bytes.jsonl", [{"a": 1}, b'{"a": "\xff\xfe"}'])
    with pytest.raises(DataError) as info:
        list(read_jsonl(path))
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), 2, None)
    # Line 1 is 9 bytes ('{"a": 1}' + newline); 0xff is byte 7 of line 2.
    assert "UTF-8" in err.reason and "0xff" in err.reason
    assert "byte offset 7 of the line" in err.reason and "byte offset 16 of the file" in err.reason


def test_read_jsonl_reports_broken_json_and_non_objects(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "j.jsonl", [{"a": 1}, {"a": 2}, '{"a": 3,'])
    with pytest.raises(DataError) as info:
        list(read_jsonl(path))
    assert (info.value.line, info.value.field) == (3, None)
    assert "invalid JSON" in info.value.reason and "Expecting property name" in info.value.reason

    path = write_lines(tmp_path / "arr.jsonl", ["[1, 2]"])
    with pytest.raises(DataError) as info:
        list(read_jsonl(path))
    assert info.value.line == 1 and "expected a JSON object, got an array" in info.value.reason


def test_write_jsonl_round_trips_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"old": true}\n')
    rows = [{"prompt": "héllo", "n": 1}, {"prompt": [user("x")], "n": 2.5}]
    assert write_jsonl(path, rows) == 2
    assert path.read_text(encoding="utf-8") == '{"prompt": "héllo", "n": 1}\n{"prompt": [{"role": "user", "content": "x"}], "n": 2.5}\n'
    assert [row for _, row in read_jsonl(path)] == rows
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_write_jsonl_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"old": true}\n')
    with pytest.raises(TypeError):
        write_jsonl(path, [{"ok": 1}, {"bad": object()}])
    with pytest.raises(ValueError):
        write_jsonl(path, [{"nan": float("nan")}])
    with pytest.raises(TypeError):
        write_jsonl(path, [["not", "a", "mapping"]])
    assert path.read_text() == '{"old": true}\n'
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_write_json_round_trips_replaces_and_creates_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "run" / "summary.json"
    write_json(path, {"old": True})
    data = {"prompt": "héllo", "scores": [1, 2.5], "nested": {"diverged": float("nan")}}
    write_json(path, data)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "h\\u00e9llo" in text
    back = json.loads(text)
    assert back["prompt"] == "héllo" and back["scores"] == [1, 2.5] and math.isnan(back["nested"]["diverged"])
    write_json(path, {"path": tmp_path}, default=str)  # what JSON has no type for, as the caller says
    assert json.loads(path.read_text()) == {"path": str(tmp_path)}
    assert os.listdir(path.parent) == ["summary.json"]


def test_write_json_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "stats.json"
    write_json(path, {"old": True})
    before = path.read_text()
    with pytest.raises(TypeError):
        write_json(path, {"ok": 1, "bad": object()})
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        write_json(path, {"loop": loop})
    # a failure after the bytes are written (the rename) removes the temporary file too
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"new": True})
    with pytest.raises(OSError, match="disk full"):
        write_jsonl(tmp_path / "stats.json", [{"new": True}])
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["stats.json"]


def test_append_jsonl_appends_and_repairs_missing_newline(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    assert append_jsonl(path, [{"step": 1}]) == 1
    assert append_jsonl(path, [{"step": 2}, {"step": 3}]) == 2
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 3}\n'
    path.write_text('{"step": 1}')  # a writer died before its newline
    append_jsonl(path, [{"step": 2}])
    assert [row for _, row in read_jsonl(path)] == [{"step": 1}, {"step": 2}]
    with pytest.raises(TypeError):
        append_jsonl(path, [{"step": 3}, {"bad": object()}])
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


# --- load_sft ---------------------------------------------------------------------------


def test_load_sft_conversational(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, user("Hi"), bot("Hello.")], "id": "x"},
        {"messages": [user("2+2?"), bot("4"), user("and 3+3?"), bot("6")]},
    ]
    ds = load_sft(write_lines(tmp_path / "sft.jsonl", rows))
    assert ds.column_names == ["messages"]
    assert ds["messages"] == [rows[0]["messages"], rows[1]["messages"]]


def test_load_sft_prompt_completion_standard_and_conversational(tmp_path: Path) -> None:
    ds = load_sft(write_lines(tmp_path / "a.jsonl", [{"prompt": "The sky is", "completion": " blue."}, {"prompt": "1+1=", "completion": "2"}]))
    assert ds.column_names == ["prompt", "completion"]
    assert ds.to_list() == [{"prompt": "The sky is", "completion": " blue."}, {"prompt": "1+1=", "completion": "2"}]

    rows = [{"prompt": [user("What color is the sky?")], "completion": [bot("It is blue.")]}]
    ds = load_sft(write_lines(tmp_path / "b.json", rows))
    assert ds.to_list() == rows


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"text": "hello"}, "messages", "missing required field"),
        ({"prompt": "p"}, "completion", "missing required field"),
        ({"messages": "Hi"}, "messages", "must be a list of messages, got string"),
        ({"messages": []}, "messages", "empty list"),
        ({"messages": [user("Hi"), "Hello"]}, "messages[1]", "got string"),
        ({"messages": [user("Hi"), {"role": "assistant"}]}, "messages[1].content", "missing required field"),
        ({"messages": [user("Hi"), {"content": "x"}]}, "messages[1].role", "missing required field"),
        ({"messages": [user("Hi"), {"role": "bot", "content": "x"}]}, "messages[1].role", "unknown role 'bot'"),
        ({"messages": [user("Hi"), {"role": "assistant", "content": 5}]}, "messages[1].content", "must be a string, got number"),
        ({"messages": [user("Hi"), bot(" \n\t")]}, "messages[1].content", "is empty"),
        ({"messages": [user("Hi"), dict(bot("x"), name="n")]}, "messages[1].name", "unexpected key"),
        ({"messages": [user("Hi")]}, "messages[0].role", "must have role 'assistant', got 'user'"),
        ({"messages": [user("Hi"), bot("a"), bot("b")]}, "messages[2].role", "a second assistant message in a row"),
        ({"messages": [bot("a")]}, "messages[0].role", "must start with a user message, got 'assistant'"),
        ({"messages": [user("Hi"), {"role": "system", "content": "s"}, bot("b")]}, "messages[1].role",
         "a system message can only open the conversation"),
        ({"messages": [user("Hi"), bot("Hello"), user("Bye")]}, "messages[2].role", "must have role 'assistant', got 'user'"),
        ({"messages": [user("Hi"), bot("x")], "prompt": "p"}, "prompt", "both 'messages' and prompt-completion"),
        ({"prompt": "p", "completion": ""}, "completion", "is empty"),
        ({"prompt": 3, "completion": "c"}, "prompt", "must be a string or a list of messages, got number"),
        ({"prompt": "p", "completion": [bot("c")]}, "completion", "must be a string like 'prompt'"),
        ({"prompt": [user("p")], "completion": [user("c")]}, "completion[0].role", "must have role 'assistant', got 'user'"),
        ({"prompt": [bot("p")], "completion": [bot("c")]}, "prompt[0].role", "must have role 'user', got 'assistant'"),
    ],
)
def test_load_sft_rejects_bad_rows(tmp_path: Path, row: dict, field: str, reason: str) -> None:
    # on_bad_row=error: the rows the default skips by rule (empty replies) are errors too
    if "messages" in row or "text" in row:
        good: dict = {"messages": [user("Hi"), bot("Hello")]}
    elif isinstance(row.get("prompt"), list):
        good = {"prompt": [user("a")], "completion": [bot("b")]}
    else:
        good = {"prompt": "a", "completion": "b"}
    path = write_lines(tmp_path / "sft.jsonl", [good, "", row])
    expect_error(functools.partial(load_sft, on_bad_row="error"), path, 3, field, reason)


def test_load_sft_rejects_mixed_formats(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [{"messages": [user("Hi"), bot("Hello")]}, {"messages": [user("a"), bot("b")]}, {"prompt": "p", "completion": "c"}],
    )
    expect_error(load_sft, path, 3, "prompt", "standard prompt-completion", "line 1 is conversational language modeling")

    path = write_lines(
        tmp_path / "mixed2.jsonl",
        [{"prompt": "p", "completion": "c"}, {"prompt": [user("p")], "completion": [bot("c")]}],
    )
    expect_error(load_sft, path, 2, "prompt", "conversational prompt-completion", "line 1 is standard")

    path = write_lines(tmp_path / "mixed3.jsonl", [{"prompt": "p", "completion": "c"}, {"messages": [user("a"), bot("b")]}])
    expect_error(load_sft, path, 2, "messages", "same format")


def test_load_sft_reports_broken_json_undecodable_bytes_and_empty_file(tmp_path: Path) -> None:
    good = {"messages": [user("Hi"), bot("Hello")]}
    expect_error(load_sft, write_lines(tmp_path / "j.jsonl", [good, good, '{"messages": [']), 3, None, "invalid JSON")
    expect_error(load_sft, write_lines(tmp_path / "b.jsonl", [good, b"\xff\xfe"]), 2, None, "UTF-8", "byte offset 0")
    expect_error(load_sft, write_lines(tmp_path / "e.jsonl", ["", "  "]), None, None, "no rows")


# --- load_preferences -------------------------------------------------------------------


def test_load_preferences_anthropic_hh(tmp_path: Path) -> None:
    rows = [
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
        {"chosen": "\n\nHuman: Is the sun a star?\n\nAssistant: Yes.", "rejected": "\n\nHuman: Is the sun a star?\n\nAssistant: No."},
    ]
    ds = load_preferences(write_lines(tmp_path / "hh.jsonl", rows))
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    assert ds.to_list() == [
        {
            "prompt": HH_PROMPT,
            "chosen": [bot("Leaves drift to the ground\nquiet air and amber light\nthe year exhales slow")],
            "rejected": [bot("Autumn is a season.")],
        },
        {"prompt": [user("Is the sun a star?")], "chosen": [bot("Yes.")], "rejected": [bot("No.")]},
    ]


def test_load_preferences_hh_with_strength(tmp_path: Path) -> None:
    row = {"chosen": HH_CHOSEN, "rejected": HH_REJECTED, "strength": "slightly_better"}
    ds = load_preferences(write_lines(tmp_path / "hh.jsonl", [row]))
    assert ds.column_names == ["prompt", "chosen", "rejected", "strength"]
    assert ds[0]["strength"] == "slightly_better" and ds[0]["prompt"] == HH_PROMPT


def test_load_preferences_conversational_explicit_prompt_with_strength(tmp_path: Path) -> None:
    rows = [
        {"prompt": [user("Name a prime.")], "chosen": [bot("7")], "rejected": [bot("8")], "strength": "significantly_better"},
        {
            "prompt": [{"role": "system", "content": "Answer in French."}, user("Hello?")],
            "chosen": [bot("Bonjour.")],
            "rejected": [bot("Hello.")],
            "strength": "negligibly_better",
            "source": "dropped",
        },
    ]
    ds = load_preferences(write_lines(tmp_path / "p.jsonl", rows))
    assert ds.column_names == ["prompt", "chosen", "rejected", "strength"]
    assert ds.to_list() == [{k: v for k, v in row.items() if k != "source"} for row in rows]


def test_load_preferences_conversational_implicit_prompt_with_margin(tmp_path: Path) -> None:
    rows = [
        {"chosen": [user("Hi"), bot("Hello!")], "rejected": [user("Hi"), bot("Go away.")], "margin": 2},
        {"chosen": [user("2+2"), bot("4")], "rejected": [user("2+2"), bot("5")], "margin": 0.5},
    ]
    ds = load_preferences(write_lines(tmp_path / "m.jsonl", rows))
    assert ds.column_names == ["chosen", "rejected", "margin"]
    assert ds["margin"] == [2.0, 0.5]
    assert ds.features["margin"].dtype == "float64"
    assert ds["chosen"] == [rows[0]["chosen"], rows[1]["chosen"]]
    assert ds["rejected"] == [rows[0]["rejected"], rows[1]["rejected"]]


def test_load_preferences_standard_text_becomes_conversational(tmp_path: Path) -> None:
    # reward models train on and score the chat-template rendering the policy samples through
    rows = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}]
    ds = load_preferences(write_lines(tmp_path / "s.jsonl", rows))
    expected = [{"prompt": [user("The sky is")], "chosen": [bot("blue.")], "rejected": [bot("green.")]}]
    assert ds.to_list() == expected
    # without 'prompt', the text both replies start with (TRL's extract_prompt)
    ds = load_preferences(write_lines(tmp_path / "s2.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is green."}]))
    assert ds.to_list() == expected
    path = write_lines(tmp_path / "s3.jsonl", [{"chosen": "Blue.", "rejected": "Green."}])
    expect_error(load_preferences, path, 1, "chosen", "share no prompt text")


PAIR = {"prompt": [user("q")], "chosen": [bot("a")], "rejected": [bot("b")]}


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"prompt": [user("q")], "rejected": [bot("b")]}, "chosen", "missing required field"),
        ({"prompt": [user("q")], "chosen": [bot("a")]}, "rejected", "missing required field"),
        (dict(PAIR, chosen=5), "chosen", "must be a string or a list of messages, got number"),
        (dict(PAIR, rejected="b"), "rejected", "must be a list of messages like 'chosen', got string"),
        (dict(PAIR, prompt="q"), "prompt", "must be a list of messages like 'chosen', got string"),
        (dict(PAIR, chosen=[bot("   ")]), "chosen[0].content", "is empty"),
        (dict(PAIR, rejected=[{"role": "robot", "content": "b"}]), "rejected[0].role", "unknown role 'robot'"),
        (dict(PAIR, chosen=[user("a")]), "chosen[0].role", "must have role 'assistant', got 'user'"),
        (dict(PAIR, strength="much_better"), "strength", "unknown strength label 'much_better'"),
        (dict(PAIR, strength=1), "strength", "must be a string, got number"),
        (dict(PAIR, margin=True), "margin", "must be a number, got boolean"),
        (dict(PAIR, margin="1.0"), "margin", "must be a number, got string"),
    ],
)
def test_load_preferences_rejects_bad_rows(tmp_path: Path, row: dict, field: str, reason: str) -> None:
    # A good first row with the same optional columns, so only the bad value can fail.
    first = dict(PAIR, **{k: v for k, v in {"strength": "better", "margin": 1.0}.items() if k in row})
    path = write_lines(tmp_path / "p.jsonl", [first, row])
    expect_error(functools.partial(load_preferences, on_bad_row="error"), path, 2, field, reason)


def test_load_preferences_strength_and_margin_on_one_row(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [dict(PAIR, strength="better", margin=1.0)])
    expect_error(load_preferences, path, 1, "margin", "give 'strength' or 'margin', not both")


def test_load_preferences_unknown_strength_lists_allowed_labels(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [dict(PAIR, strength="better"), "", dict(PAIR, strength="way_better")])
    err = expect_error(load_preferences, path, 3, "strength", "unknown strength label 'way_better'")
    for label in STRENGTHS:
        assert label in err.reason


def test_load_preferences_strength_on_some_rows_only(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [dict(PAIR, strength="better"), PAIR])
    expect_error(load_preferences, path, 2, "strength", "without 'strength'", "line 1 is with 'strength'")
    path = write_lines(tmp_path / "q.jsonl", [PAIR, PAIR, dict(PAIR, strength="better")])
    expect_error(load_preferences, path, 3, "strength", "with 'strength'", "line 1 is without 'strength'")
    path = write_lines(tmp_path / "r.jsonl", [PAIR, {"chosen": [user("q"), bot("a")], "rejected": [user("q"), bot("b")]}])
    expect_error(load_preferences, path, 2, "prompt", "without 'prompt'", "line 1 is with explicit 'prompt'")


def test_load_preferences_broken_json_on_line_3(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [PAIR, PAIR, '{"chosen": [{"role": "assistant", "content": "a"}], "rejected": '])
    expect_error(load_preferences, path, 3, None, "invalid JSON", "Expecting value")


def test_load_preferences_undecodable_bytes(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [PAIR, "", b'{"chosen": "\xff\xfe", "rejected": "x"}'])
    expect_error(load_preferences, path, 3, None, "UTF-8", "byte offset 12 of the line")


def test_load_preferences_blank_lines_count_toward_line_numbers(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", ["", PAIR, "   ", "", dict(PAIR, chosen=[bot("")])])
    expect_error(functools.partial(load_preferences, on_bad_row="error"), path, 5, "chosen[0].content", "is empty")


def test_load_preferences_hh_prompts_differ(tmp_path: Path) -> None:
    rejected = HH_REJECTED.replace("Keep it calm.", "Make it funny.")
    path = write_lines(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, {"chosen": HH_CHOSEN, "rejected": rejected}])
    expect_error(load_preferences, path, 2, "rejected", "prompts differ at message 3", "Make it funny")


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"chosen": "\n\nHuman: q\n\nAssistant:", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "chosen", "final Assistant reply (turn 2) is empty"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q"}, "rejected", "ends with a Human turn"),
        ({"chosen": "\n\nHuman: q\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "chosen", "second Human turn in a row"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "Note\n\nHuman: q\n\nAssistant: b"}, "rejected", "text before the first"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": 1}, "rejected", "must be a string like 'chosen', got number"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b", "prompt": "q"}, "prompt", "remove 'prompt'"),
    ],
)
def test_load_preferences_rejects_bad_hh_rows(tmp_path: Path, row: dict, field: str, reason: str) -> None:
    path = write_lines(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, row])
    expect_error(functools.partial(load_preferences, on_bad_row="error"), path, 2, field, reason)


def test_load_preferences_rejects_mixed_formats(tmp_path: Path) -> None:
    hh = {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}
    text = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    conv = {"chosen": [user("q"), bot("a")], "rejected": [user("q"), bot("b")]}
    expect_error(load_preferences, write_lines(tmp_path / "a.jsonl", [hh, text]), 2, "chosen", "standard (plain text)", "line 1 is Anthropic hh-rlhf")
    expect_error(load_preferences, write_lines(tmp_path / "b.jsonl", [text, "", hh]), 3, "chosen", "Anthropic hh-rlhf raw text", "line 1 is standard")
    expect_error(load_preferences, write_lines(tmp_path / "c.jsonl", [conv, text]), 2, "chosen", "standard (plain text)", "line 1 is conversational")


# --- load_prompts -----------------------------------------------------------------------


def test_load_prompts_wraps_text_and_keeps_metadata(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Write a poem about rain.", "id": 1, "category": "creative"},
        "",
        {"prompt": [{"role": "system", "content": "You are terse."}, user("Define entropy.")], "id": 2},
        {"prompt": [user("Hi"), bot("Hello"), user("Tell me a joke.")], "id": 3, "tags": ["humor"]},
    ]
    ds = load_prompts(write_lines(tmp_path / "prompts.jsonl", rows))
    assert ds.column_names == ["prompt", "id", "category", "tags"]
    assert ds.to_list() == [
        {"prompt": [user("Write a poem about rain.")], "id": 1, "category": "creative", "tags": None},
        {"prompt": rows[2]["prompt"], "id": 2, "category": None, "tags": None},
        {"prompt": rows[3]["prompt"], "id": 3, "category": None, "tags": ["humor"]},
    ]


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"text": "hi"}, "prompt", "missing required field"),
        ({"prompt": 12}, "prompt", "must be a string or a list of messages, got number"),
        ({"prompt": "  "}, "prompt", "is empty"),
        ({"prompt": [user("Hi"), bot("Hello")]}, "prompt[1].role", "must have role 'user', got 'assistant'"),
        ({"prompt": [{"role": "human", "content": "Hi"}]}, "prompt[0].role", "unknown role 'human'"),
        ({"prompt": "ok", "id": "seven"}, "id", "is a string but line 1 has a number"),
    ],
)
def test_load_prompts_rejects_bad_rows(tmp_path: Path, row: dict, field: str, reason: str) -> None:
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "fine", "id": 1}, row])
    expect_error(load_prompts, path, 2, field, reason)


def test_load_prompts_broken_json_and_bytes(tmp_path: Path) -> None:
    good = {"prompt": "fine"}
    expect_error(load_prompts, write_lines(tmp_path / "j.jsonl", [good, "", "{prompt: 'x'}"]), 3, None, "invalid JSON")
    expect_error(load_prompts, write_lines(tmp_path / "b.jsonl", [b"\xff\xfe"]), 1, None, "UTF-8", "0xff")
