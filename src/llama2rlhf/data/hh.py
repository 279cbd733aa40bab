"""Parser for the raw transcripts of Anthropic hh-rlhf (Bai et al. 2022).

Each ``chosen``/``rejected`` string of Anthropic's hh-rlhf files is a whole
conversation with role tags, every turn introduced by a blank line::

    "\\n\\nHuman: hi\\n\\nAssistant: hello\\n\\nHuman: and?\\n\\nAssistant: bye"

The two strings of a pair share every turn except the final Assistant reply.
:func:`split_hh_pair` turns a pair into TRL's explicit-prompt conversational
preference row: the shared prompt messages, then the two one-message replies.
"""

from __future__ import annotations

import re

Message = dict[str, str]

HUMAN_TAG = "\n\nHuman:"

# Only a tag after a blank line starts a turn; single newlines and plain blank lines
# are part of the content. The start-of-text alternative accepts a transcript whose
# leading blank line was trimmed.
_TURN_TAG = re.compile(r"(?:\A|\n\n)(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def hh_turns(text: str) -> list[Message]:
    """The turns of one Anthropic hh-rlhf transcript as written, ``[{"role", "content"}, ...]``.

    Human turns become ``user`` messages, Assistant turns ``assistant`` ones, contents
    stripped of surrounding whitespace. Only the framing is checked: a ``"\\n\\nHuman:"`` tag,
    nothing before it, a Human turn first. Turns of one speaker in a row and empty turns
    are returned as they are (see :func:`merge_repeated_turns` and :func:`parse_hh`).
    """
    if not isinstance(text, str):
        raise TypeError(f"hh-rlhf transcript must be a string, got {type(text).__name__}")
    parts = _TURN_TAG.split(text)
    prefix, tagged = parts[0], parts[1:]
    if not tagged:
        raise ValueError("no '\\n\\nHuman:' tag found; not an Anthropic hh-rlhf transcript")
    if prefix.strip():
        raise ValueError(f"text before the first '\\n\\nHuman:' tag: {_preview(prefix.strip())}")
    if tagged[0] != "Human":
        raise ValueError("transcript starts with an Assistant turn; the first turn must be Human")
    return [{"role": _ROLE[tagged[i]], "content": tagged[i + 1].strip()} for i in range(0, len(tagged), 2)]


def merge_repeated_turns(turns: list[Message]) -> tuple[list[Message], list[int]]:
    """Join turns of one speaker in a row into one message (contents separated by a blank line).

    The published hh-rlhf files have such transcripts (an Assistant reply cut in two by a
    stray tag); read as one turn, they alternate as every chat template requires. Returns
    the messages and the 1-based numbers of the turns that were joined to the one before.
    """
    out: list[Message] = []
    joined: list[int] = []
    for number, turn in enumerate(turns, start=1):
        if out and out[-1]["role"] == turn["role"]:
            out[-1] = {"role": turn["role"], "content": "\n\n".join(c for c in (out[-1]["content"], turn["content"]) if c)}
            joined.append(number)
        else:
            out.append(dict(turn))
    return out, joined


def parse_hh(text: str) -> list[Message]:
    """Parse one Anthropic hh-rlhf transcript strictly into ``[{"role", "content"}, ...]``.

    The transcript must start with a Human turn, alternate Human/Assistant, and end with a
    non-empty Assistant reply; anything else raises ``ValueError`` saying which turn is
    wrong. (The data loaders read the published files' quirks by rule instead: see
    ``llama2rlhf.data.formats``.)
    """
    messages = hh_turns(text)
    for turn in range(2, len(messages) + 1):
        if messages[turn - 1]["role"] == messages[turn - 2]["role"]:
            tag = "Human" if messages[turn - 1]["role"] == "user" else "Assistant"
            raise ValueError(f"turn {turn} is a second {tag} turn in a row; Human and Assistant turns must alternate")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"transcript ends with a Human turn (turn {len(messages)}) and has no Assistant reply to it")
    if not messages[-1]["content"]:
        raise ValueError(f"the final Assistant reply (turn {len(messages)}) is empty")
    for turn, message in enumerate(messages, start=1):
        if not message["content"]:
            tag = "Human" if message["role"] == "user" else "Assistant"
            raise ValueError(f"turn {turn} ({tag}) is empty")
    return messages


def split_hh_messages(
    chosen: list[Message], rejected: list[Message]
) -> tuple[list[Message], list[Message], list[Message]]:
    """Split two parsed transcripts (see :func:`parse_hh`) into prompt, chosen, rejected.

    The prompt is every turn before the final Assistant reply and must be identical
    in both; raises ``ValueError`` naming the first turn where they differ.
    """
    prompt, other = chosen[:-1], rejected[:-1]
    for turn, (mine, theirs) in enumerate(zip(prompt, other, strict=False), start=1):
        if mine != theirs:
            raise ValueError(
                f"chosen and rejected prompts differ at turn {turn}: "
                f"{_preview(mine['content'])} vs {_preview(theirs['content'])}"
            )
    if len(prompt) != len(other):
        raise ValueError(
            f"chosen and rejected prompts differ in length: {len(prompt)} vs {len(other)} turns "
            "before the final Assistant reply"
        )
    return prompt, [dict(chosen[-1])], [dict(rejected[-1])]


def split_hh_pair(chosen_text: str, rejected_text: str) -> tuple[list[Message], list[Message], list[Message]]:
    """Parse an hh-rlhf ``chosen``/``rejected`` pair into ``(prompt, chosen, rejected)``.

    ``prompt`` is the shared conversation up to the last Assistant turn; ``chosen`` and
    ``rejected`` are ``[{"role": "assistant", "content": ...}]``, the two final replies.
    Parse errors are prefixed with ``chosen:`` or ``rejected:``.
    """
    parsed: list[list[Message]] = []
    for side, text in (("chosen", chosen_text), ("rejected", rejected_text)):
        try:
            parsed.append(parse_hh(text))
        except ValueError as err:
            raise ValueError(f"{side}: {err}") from err
    return split_hh_messages(parsed[0], parsed[1])
