"""``augmenter=example_system_prompt``: copies of rows under a system prompt, deterministic."""

from __future__ import annotations

import json

import pytest

from llama2rlhf_example.augmenters import system_prompt_augment, with_system_prompts

SYSTEMS = ["Be kind.", "Be brief."]


def rows(n):
    out = []
    for i in range(n):
        user = {"role": "user", "content": f"question {i}"}
        reply = {"role": "assistant", "content": f"answer {i}"}
        out.append({"messages": [user, reply]} if i % 2 else {"prompt": [user], "completion": [reply]})
    return out


def test_every_row_gets_one_copy_with_a_system_prompt_first():
    given = rows(6)
    copies = with_system_prompts(given, SYSTEMS, 1.0, salt="0:1")
    assert len(copies) == 6
    for row, copy in zip(given, copies, strict=True):
        key = "messages" if "messages" in row else "prompt"
        assert copy[key][0]["role"] == "system" and copy[key][0]["content"] in SYSTEMS
        assert copy[key][1:] == row[key]
        assert copy.get("completion") == row.get("completion")  # the trained reply is unchanged
    assert given == rows(6)  # the input rows are not modified


def test_rows_with_a_system_prompt_are_left_alone():
    has_system = {"messages": [{"role": "system", "content": "Speak French."},
                               {"role": "user", "content": "hi"}, {"role": "assistant", "content": "salut"}]}
    assert with_system_prompts([has_system], SYSTEMS, 1.0, salt="s") == []


def test_choices_are_fixed_by_the_salt_and_share():
    given = rows(200)
    a = with_system_prompts(given, SYSTEMS, 0.5, salt="0:1")
    assert a == with_system_prompts(given, SYSTEMS, 0.5, salt="0:1")  # the same on a re-run
    assert a != with_system_prompts(given, SYSTEMS, 0.5, salt="0:2")  # another round, other rows
    assert 70 <= len(a) <= 130  # about half of 200
    # both prompts are used, about evenly
    used = [c.get("messages", c.get("prompt"))[0]["content"] for c in a]
    assert all(abs(used.count(p) - len(a) / 2) < len(a) / 4 for p in SYSTEMS)
    assert with_system_prompts(given, SYSTEMS, 0.0, salt="0:1") == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"system_prompts": [], "share": 1.0}, "augmenter.system_prompts is empty"),
    ({"system_prompts": SYSTEMS, "share": 1.5}, r"augmenter.share must be within \[0, 1\], got 1.5"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        with_system_prompts(rows(2), salt="s", **kwargs)


def test_a_row_of_no_known_format_is_named():
    with pytest.raises(ValueError, match=r"row 1: expected a 'messages' or a 'prompt' and 'completion' row, "
                                         r"got keys \['text'\]"):
        with_system_prompts([rows(1)[0], {"text": "raw"}], SYSTEMS, 1.0, salt="s")


def test_augment_returns_the_rows_and_their_copies_and_writes_them(fresh_plugins, make_ctx):
    """Called as the rejection-sampling stage calls it: the ``augmenter`` node's keys as options."""
    ctx = make_ctx(round=2, augmenter={"name": "example_system_prompt", "system_prompts": SYSTEMS, "share": 1.0})
    given = rows(4)
    item = fresh_plugins.selected("augmenters", ctx.cfg)
    assert item.obj is system_prompt_augment and item.options == {"system_prompts": SYSTEMS, "share": 1.0}
    out = item.call(given, ctx)
    assert out[:4] == given and len(out) == 8
    written = [json.loads(x) for x in
               (ctx.run_dir / "round_2" / "rejection_sampling" / "example_system_prompt" / "variants.jsonl")
               .read_text().splitlines()]
    assert written == out[4:]
