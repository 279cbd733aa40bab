"""Anthropic hh-rlhf transcript parsing (llama2rlhf.data.hh)."""

from __future__ import annotations

import pytest

from llama2rlhf.data.hh import parse_hh, split_hh_messages, split_hh_pair

# Shaped like a row of Anthropic's hh-rlhf helpful-base train file: the assistant
# reply holds a blank-line paragraph break and a single newline, the pair shares
# every turn but the last.
HH_CHOSEN = (
    "\n\nHuman: What are some good vegetables to grow in a small garden?"
    "\n\nAssistant: Tomatoes, lettuce and radishes all do well in small spaces."
    "\n\nHuman: Which one is easiest?\nI have never gardened before."
    "\n\nAssistant: Radishes are the easiest.\n\nThey sprout in a few days and are ready in about a month."
)
HH_REJECTED = (
    "\n\nHuman: What are some good vegetables to grow in a small garden?"
    "\n\nAssistant: Tomatoes, lettuce and radishes all do well in small spaces."
    "\n\nHuman: Which one is easiest?\nI have never gardened before."
    "\n\nAssistant: I don't know."
)
HH_PROMPT = [
    {"role": "user", "content": "What are some good vegetables to grow in a small garden?"},
    {"role": "assistant", "content": "Tomatoes, lettuce and radishes all do well in small spaces."},
    {"role": "user", "content": "Which one is easiest?\nI have never gardened before."},
]


def test_parse_single_turn_strips_contents() -> None:
    assert parse_hh("\n\nHuman:   hi there  \n\nAssistant: hello!  ") == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello!"},
    ]


def test_parse_multi_turn_keeps_newlines_inside_contents() -> None:
    assert parse_hh(HH_CHOSEN) == HH_PROMPT + [
        {
            "role": "assistant",
            "content": "Radishes are the easiest.\n\nThey sprout in a few days and are ready in about a month.",
        }
    ]


def test_parse_accepts_transcript_with_trimmed_leading_blank_line() -> None:
    assert parse_hh("Human: a\n\nAssistant: b") == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
    ]


def test_tag_words_inside_a_line_are_content() -> None:
    # Only a tag after a blank line starts a turn.
    text = "\n\nHuman: Reply with Assistant: yes\n\nAssistant: Human: no"
    assert parse_hh(text) == [
        {"role": "user", "content": "Reply with Assistant: yes"},
        {"role": "assistant", "content": "Human: no"},
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Preamble\n\nHuman: hi\n\nAssistant: hello", "text before the first"),
        ("no tags at all", "no '\\n\\nHuman:' tag"),
        ("\n\nAssistant: hello\n\nHuman: hi\n\nAssistant: x", "starts with an Assistant turn"),
        ("\n\nHuman: hi\n\nHuman: again\n\nAssistant: hello", "turn 2 is a second Human turn in a row"),
        ("\n\nHuman: hi\n\nAssistant: a\n\nAssistant: b", "turn 3 is a second Assistant turn in a row"),
        ("\n\nHuman: hi\n\nAssistant:", "final Assistant reply (turn 2) is empty"),
        ("\n\nHuman: hi\n\nAssistant:   \n ", "final Assistant reply (turn 2) is empty"),
        ("\n\nHuman: hi", "ends with a Human turn (turn 1)"),
        ("\n\nHuman: hi\n\nAssistant: a\n\nHuman: more", "ends with a Human turn (turn 3)"),
        ("\n\nHuman:  \n\nAssistant: hello", "turn 1 (Human) is empty"),
    ],
)
def test_parse_rejects_malformed_transcripts(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_hh(text)
    assert reason in str(info.value)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(TypeError):
        parse_hh(["\n\nHuman: hi"])  # type: ignore[arg-type]


def test_split_pair_gives_shared_prompt_and_final_replies() -> None:
    prompt, chosen, rejected = split_hh_pair(HH_CHOSEN, HH_REJECTED)
    assert prompt == HH_PROMPT
    assert chosen == [
        {
            "role": "assistant",
            "content": "Radishes are the easiest.\n\nThey sprout in a few days and are ready in about a month.",
        }
    ]
    assert rejected == [{"role": "assistant", "content": "I don't know."}]


def test_split_pair_single_turn() -> None:
    assert split_hh_pair("\n\nHuman: q\n\nAssistant: good", "\n\nHuman: q\n\nAssistant: bad") == (
        [{"role": "user", "content": "q"}],
        [{"role": "assistant", "content": "good"}],
        [{"role": "assistant", "content": "bad"}],
    )


def test_split_pair_rejects_differing_prompts() -> None:
    other = HH_REJECTED.replace("Which one is easiest?", "Which one is hardest?")
    with pytest.raises(ValueError) as info:
        split_hh_pair(HH_CHOSEN, other)
    assert "prompts differ at turn 3" in str(info.value)
    assert "easiest" in str(info.value) and "hardest" in str(info.value)


def test_split_pair_rejects_prompts_of_different_length() -> None:
    with pytest.raises(ValueError) as info:
        split_hh_pair(HH_CHOSEN, "\n\nHuman: What are some good vegetables to grow in a small garden?\n\nAssistant: x")
    # Turn 1 matches; the rejected transcript simply stops earlier.
    assert "differ in length: 3 vs 1" in str(info.value)


@pytest.mark.parametrize("side", ["chosen", "rejected"])
def test_split_pair_names_the_side_that_fails_to_parse(side: str) -> None:
    broken = "\n\nHuman: q\n\nAssistant:"
    good = "\n\nHuman: q\n\nAssistant: fine"
    args = (broken, good) if side == "chosen" else (good, broken)
    with pytest.raises(ValueError) as info:
        split_hh_pair(*args)
    assert str(info.value).startswith(f"{side}: ")
    assert "is empty" in str(info.value)


def test_split_messages_returns_copies_of_the_replies() -> None:
    chosen = parse_hh("\n\nHuman: q\n\nAssistant: a")
    _, reply, _ = split_hh_messages(chosen, parse_hh("\n\nHuman: q\n\nAssistant: b"))
    reply[0]["content"] = "changed"
    assert chosen[-1]["content"] == "a"
