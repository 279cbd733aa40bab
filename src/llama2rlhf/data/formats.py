"""Loaders from JSON Lines files to ``datasets.Dataset`` in TRL standard dataset formats.

TRL standard dataset formats (https://huggingface.co/docs/trl/dataset_formats) come
in two flavours: *standard* (plain strings) and *conversational* (lists of
``{"role", "content"}`` messages, roles ``system``/``user``/``assistant``). The
loaders here cover the three the Llama 2 recipe trains on:

* SFT: language modeling ``{"messages"}`` or prompt-completion ``{"prompt", "completion"}``;
* preferences: ``{"chosen", "rejected"}`` with an optional explicit ``"prompt"`` and
  an optional Llama 2 ``"strength"`` label or numeric ``"margin"``; Anthropic hh-rlhf
  raw transcripts are recognised and split into explicit-prompt conversational rows;
* prompts: prompt-only ``{"prompt"}`` for RLHF rollouts.

Every row is validated; the first bad one raises :class:`DataError` with the file,
the 1-based line and the field. Loading only reads: a failed load writes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from llama2rlhf.data.errors import DataError
from llama2rlhf.data.hh import HUMAN_TAG, parse_hh, split_hh_messages
from llama2rlhf.data.jsonl import PathLike
from llama2rlhf.data.sources import open_rows
from llama2rlhf.data.strength import check_strength

if TYPE_CHECKING:  # datasets costs a second to import; the CLI must start fast
    from datasets import Dataset

ROLES: tuple[str, ...] = ("system", "user", "assistant")

Message = dict[str, str]


def _json_type(value: Any) -> str:
    # JSON's names, not Python's: the person fixing the file is looking at JSON.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


class _Row:
    """One JSON Lines row with its file and line, so every check can say where it failed."""

    def __init__(self, file: str, line: int, data: dict[str, Any]) -> None:
        self.file = file
        self.line = line
        self.data = data

    def error(self, field: str | None, reason: str) -> DataError:
        return DataError(self.file, self.line, field, reason)

    def require(self, key: str) -> Any:
        if key not in self.data:
            raise self.error(key, "missing required field")
        return self.data[key]

    def text(self, field: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.error(field, f"must be a string, got {_json_type(value)}")
        if not value.strip():
            raise self.error(field, "is empty")
        # Not stripped: in standard formats a completion's leading space is a token.
        return value

    def messages(self, field: str, value: Any, *, last_role: str | None = None) -> list[Message]:
        """Validate a conversational value; rebuild each message with only role and content."""
        if not isinstance(value, list):
            raise self.error(field, f"must be a list of messages, got {_json_type(value)}")
        if not value:
            raise self.error(field, "is an empty list of messages")
        out: list[Message] = []
        for index, message in enumerate(value):
            where = f"{field}[{index}]"
            if not isinstance(message, dict):
                raise self.error(where, f"must be a {{'role', 'content'}} object, got {_json_type(message)}")
            # Dropping extra keys (tool calls, names) would silently train on something
            # other than what the file says.
            extra = sorted(set(message) - {"role", "content"})
            if extra:
                raise self.error(f"{where}.{extra[0]}", "unexpected key; messages hold only 'role' and 'content'")
            if "role" not in message:
                raise self.error(f"{where}.role", "missing required field")
            if "content" not in message:
                raise self.error(f"{where}.content", "missing required field")
            role = message["role"]
            if role not in ROLES:
                raise self.error(f"{where}.role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
            out.append({"role": role, "content": self.text(f"{where}.content", message["content"])})
        if last_role is not None:
            self.ends_with(field, out, last_role)
        return out

    def ends_with(self, field: str, messages: list[Message], role: str) -> None:
        if messages[-1]["role"] != role:
            raise self.error(
                f"{field}[{len(messages) - 1}].role",
                f"the last message of '{field}' must have role {role!r}, got {messages[-1]['role']!r}",
            )

    def text_or_messages(self, field: str, value: Any, *, last_role: str) -> tuple[bool, str | list[Message]]:
        """Return ``(is_conversational, validated value)``."""
        if _is_conversational(self, field, value):
            return True, self.messages(field, value, last_role=last_role)
        return False, self.text(field, value)


class _SameEveryRow:
    """Remembers what the first row chose for each aspect of the format.

    Arrow needs one type per column and TRL picks its code path from the first
    example, so a file that switches format halfway is an error at the switching line.
    """

    def __init__(self) -> None:
        self._first: dict[str, tuple[int, str]] = {}

    def check(self, row: _Row, field: str, aspect: str, value: str) -> None:
        line, first = self._first.setdefault(aspect, (row.line, value))
        if first != value:
            raise row.error(
                field, f"row is {value}, but line {line} is {first}; all rows in one file must use the same format"
            )


class _Columns:
    """Column lists for ``Dataset.from_dict``: one list per field, no per-row dicts kept."""

    def __init__(self, file: str, names: tuple[str, ...] = ()) -> None:
        self.file = file
        self.rows = 0
        self.data: dict[str, list[Any]] = {name: [] for name in names}

    def add(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            # A column first seen on a later row is null on the earlier ones.
            self.data.setdefault(name, [None] * self.rows).append(value)
        self.rows += 1
        for column in self.data.values():
            if len(column) < self.rows:
                column.append(None)

    def dataset(self) -> "Dataset":
        if self.rows == 0:
            raise DataError(self.file, None, None, "no rows; the file is empty")
        try:
            from datasets import Dataset

            return Dataset.from_dict(self.data)
        except (ValueError, TypeError) as err:  # pyarrow.ArrowInvalid is a ValueError
            # Only free-form metadata can get here; the checked fields have fixed types.
            raise DataError(self.file, None, None, f"cannot build a table from the rows: {err}") from err


def _rows(path: PathLike, where: dict[str, Any]) -> tuple[str, Iterator[_Row]]:
    file, rows = open_rows(path, **where)
    return file, (_Row(file, line, data) for line, data in rows)


def _hh_transcript(row: _Row) -> list[Message] | None:
    """The parsed ``chosen`` transcript of an Anthropic hh-rlhf row, else None."""
    chosen = row.data.get("chosen")
    if not (isinstance(chosen, str) and chosen.startswith(HUMAN_TAG)):
        return None
    try:
        return parse_hh(chosen)
    except ValueError as err:
        raise row.error("chosen", f"bad hh-rlhf transcript: {err}") from None


def _is_conversational(row: _Row, field: str, value: Any) -> bool:
    if isinstance(value, list):
        return True
    if isinstance(value, str):
        return False
    raise row.error(field, f"must be a string or a list of messages, got {_json_type(value)}")


def _kind_name(conversational: bool) -> str:
    return "a list of messages" if conversational else "a string"


# --- SFT ------------------------------------------------------------------------------


def load_sft(path: PathLike, **where: Any) -> "Dataset":
    """Load SFT rows in a TRL standard dataset format from a file or data set
    (:func:`llama2rlhf.data.sources.open_rows`; ``where`` = its split, subset, data_dir).

    Each line is either conversational language modeling,
    ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}``
    (must contain and end with an assistant message), or prompt-completion,
    ``{"prompt": ..., "completion": ...}`` with both plain strings or both message
    lists. Columns are ``messages`` or ``prompt``/``completion``; other fields are
    dropped. All rows must use the same format. Anthropic hh-rlhf rows (no ``messages``,
    ``chosen`` a raw transcript) give their chosen conversation as ``messages``.
    """
    file, rows = _rows(path, where)
    same = _SameEveryRow()
    columns = _Columns(file)
    for row in rows:
        if not {"messages", "prompt", "completion"} & set(row.data):
            transcript = _hh_transcript(row)
            if transcript is not None:
                same.check(row, "chosen", "format", "Anthropic hh-rlhf raw text ('chosen')")
                columns.add({"messages": transcript})
                continue
        if "messages" in row.data:
            for key in ("prompt", "completion"):
                if key in row.data:
                    raise row.error(key, "row has both 'messages' and prompt-completion fields; use one format")
            same.check(row, "messages", "format", "conversational language modeling ('messages')")
            messages = row.messages("messages", row.data["messages"])
            if not any(message["role"] == "assistant" for message in messages):
                raise row.error("messages", "has no assistant message; SFT needs a reply to train on")
            row.ends_with("messages", messages, "assistant")
            columns.add({"messages": messages})
            continue
        if "prompt" not in row.data and "completion" not in row.data:
            raise row.error("messages", "missing required field (or give 'prompt' and 'completion')")
        prompt = row.require("prompt")
        conversational = _is_conversational(row, "prompt", prompt)
        kind = "conversational" if conversational else "standard"
        same.check(row, "prompt", "format", f"{kind} prompt-completion")
        completion = row.require("completion")
        if conversational != _is_conversational(row, "completion", completion):
            raise row.error("completion", f"must be {_kind_name(conversational)} like 'prompt'")
        columns.add(
            {
                "prompt": row.text_or_messages("prompt", prompt, last_role="user")[1],
                "completion": row.text_or_messages("completion", completion, last_role="assistant")[1],
            }
        )
    return columns.dataset()


# --- preferences ----------------------------------------------------------------------


def _pair_kind(row: _Row, chosen: Any) -> str:
    if isinstance(chosen, str):
        # Detected from the text itself because hh-rlhf files carry no format marker.
        return "Anthropic hh-rlhf raw text" if chosen.startswith(HUMAN_TAG) else "standard (plain text)"
    if isinstance(chosen, list):
        return "conversational"
    raise row.error("chosen", f"must be a string or a list of messages, got {_json_type(chosen)}")


def _hh_pair(row: _Row) -> dict[str, Any]:
    if "prompt" in row.data:
        raise row.error("prompt", "hh-rlhf rows carry the prompt inside 'chosen'/'rejected'; remove 'prompt'")
    parsed: dict[str, list[Message]] = {}
    for field in ("chosen", "rejected"):
        value = row.data[field]
        if not isinstance(value, str):
            raise row.error(field, f"must be a string like 'chosen', got {_json_type(value)}")
        try:
            parsed[field] = parse_hh(value)
        except ValueError as err:
            raise row.error(field, f"bad hh-rlhf transcript: {err}") from None
    try:
        prompt, chosen, rejected = split_hh_messages(parsed["chosen"], parsed["rejected"])
    except ValueError as err:
        raise row.error("rejected", str(err)) from None
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _plain_pair(row: _Row, conversational: bool, chosen: Any, rejected: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "prompt" in row.data:
        prompt = row.data["prompt"]
        if conversational:
            out["prompt"] = row.messages("prompt", prompt, last_role="user")
        else:
            out["prompt"] = row.text("prompt", prompt)
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if conversational:
            out[field] = row.messages(field, value, last_role="assistant")
        else:
            out[field] = row.text(field, value)
    return out


def _strength_and_margin(row: _Row, same: _SameEveryRow) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in ("strength", "margin"):
        present = field in row.data
        same.check(row, field, field, f"with '{field}'" if present else f"without '{field}'")
    if "strength" in row.data and "margin" in row.data:
        raise row.error("margin", "give 'strength' or 'margin', not both; the margin would be ambiguous")
    if "strength" in row.data:
        label = row.data["strength"]
        if not isinstance(label, str):
            raise row.error("strength", f"must be a string, got {_json_type(label)}")
        try:
            out["strength"] = check_strength(label)
        except ValueError as err:
            raise row.error("strength", str(err)) from None
    if "margin" in row.data:
        margin = row.data["margin"]
        # bool is an int subclass in Python, but `true` is not a margin.
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise row.error("margin", f"must be a number, got {_json_type(margin)}")
        if not math.isfinite(margin):
            raise row.error("margin", f"must be finite, got {margin}")
        out["margin"] = float(margin)
    return out


def _safety(row: _Row, same: _SameEveryRow) -> dict[str, Any]:
    # Llama 2 trains a separate safety reward model on the comparisons of safety prompts
    # (paper 3.2.2); the label says which comparisons those are
    present = "safety" in row.data
    same.check(row, "safety", "safety", "with 'safety'" if present else "without 'safety'")
    if not present:
        return {}
    if not isinstance(row.data["safety"], bool):
        raise row.error("safety", f"must be true or false, got {_json_type(row.data['safety'])}")
    return {"safety": row.data["safety"]}


def load_preferences(path: PathLike, **where: Any) -> "Dataset":
    """Load preference pairs in a TRL standard dataset format (reward modeling / DPO) from
    a file or data set (``where``: see :func:`load_sft`).

    Each line is ``{"chosen", "rejected"}``, both plain strings or both message lists,
    with an optional explicit ``"prompt"`` of the same kind, plus optionally a Llama 2
    ``"strength"`` label (see :data:`~llama2rlhf.data.strength.STRENGTHS`) or a numeric
    ``"margin"``, and optionally a boolean ``"safety"`` (a safety prompt's comparison: these
    train the safety reward model). Anthropic hh-rlhf raw transcripts (``chosen`` starting with
    ``"\\n\\nHuman:"``) become explicit-prompt conversational rows. Columns:
    ``prompt`` when there is one, ``chosen``, ``rejected``, then ``strength`` and/or
    ``margin`` and ``safety`` only when the file has them (then on every row); other fields are dropped.
    """
    file, rows = _rows(path, where)
    same = _SameEveryRow()
    columns = _Columns(file)
    for row in rows:
        chosen = row.require("chosen")
        rejected = row.require("rejected")
        kind = _pair_kind(row, chosen)
        same.check(row, "chosen", "format", kind)
        if kind == "Anthropic hh-rlhf raw text":
            values = _hh_pair(row)
        else:
            conversational = kind == "conversational"
            has_prompt = "prompt" in row.data
            same.check(row, "prompt", "prompt", "with explicit 'prompt'" if has_prompt else "without 'prompt'")
            for field in ("prompt", "rejected") if has_prompt else ("rejected",):
                value = row.data[field]
                if conversational != _is_conversational(row, field, value):
                    raise row.error(field, f"must be {_kind_name(conversational)} like 'chosen', got {_json_type(value)}")
            values = _plain_pair(row, conversational, chosen, rejected)
        values.update(_strength_and_margin(row, same))
        values.update(_safety(row, same))
        columns.add(values)
    return columns.dataset()


# --- prompts --------------------------------------------------------------------------


def load_prompts(path: PathLike, **where: Any) -> "Dataset":
    """Load prompt-only rows (TRL standard dataset formats) for RLHF rollouts from a file
    or data set (``where``: see :func:`load_sft`).

    Each line is ``{"prompt": ...}``: a plain string, which becomes
    ``[{"role": "user", "content": ...}]``, or a message list ending with a user
    message. Any other fields are kept as metadata columns (null where a row lacks
    them) and must hold the same JSON type on every row. Anthropic hh-rlhf rows (no
    ``prompt``, ``chosen`` a raw transcript) give the conversation before its last reply.
    """
    file, rows = _rows(path, where)
    columns = _Columns(file, ("prompt",))
    metadata_types: dict[str, tuple[int, str]] = {}
    for row in rows:
        if "prompt" not in row.data:
            transcript = _hh_transcript(row)
            if transcript is not None:
                columns.add({"prompt": transcript[:-1]})
                continue
        prompt = row.require("prompt")
        conversational, value = row.text_or_messages("prompt", prompt, last_role="user")
        values: dict[str, Any] = {"prompt": value if conversational else [{"role": "user", "content": value}]}
        for key, extra in row.data.items():
            if key == "prompt":
                continue
            kind = _json_type(extra)
            if kind != "null":
                line, first = metadata_types.setdefault(key, (row.line, kind))
                if first != kind:
                    raise row.error(key, f"is {_article(kind)} but line {line} has {_article(first)}; a column needs one type")
            values[key] = extra
        columns.add(values)
    return columns.dataset()


__all__: list[str] = ["ROLES", "load_preferences", "load_prompts", "load_sft"]


def unify_sft_formats(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFT rows in one TRL format, so they fit one ``Dataset``.

    Conversational ``messages`` rows become prompt-completion rows (the last assistant
    message is the completion) as soon as any row is prompt-completion, as Ghost
    Attention's are; with ``assistant_only_loss`` a one-turn row trains on the same tokens
    either way.
    """
    if not any("completion" in r for r in rows):
        return rows
    out = []
    for i, r in enumerate(rows):
        if "completion" in r:
            out.append(r)
            continue
        msgs = r.get("messages")
        if not msgs or msgs[-1].get("role") != "assistant":
            raise ValueError(f"fine-tuning row {i}: needs 'messages' ending with an assistant message, "
                             f"or 'prompt' and 'completion'; got keys {sorted(r)}")
        out.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    return out
