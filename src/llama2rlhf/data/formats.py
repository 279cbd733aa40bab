"""Loaders from data files to ``datasets.Dataset`` in TRL standard dataset formats.

TRL standard dataset formats (https://huggingface.co/docs/trl/dataset_formats) come
in two flavours: *standard* (plain strings) and *conversational* (lists of
``{"role", "content"}`` messages, roles ``system``/``user``/``assistant``). The
loaders here cover the three the Llama 2 recipe trains on:

* SFT: language modeling ``{"messages"}`` or prompt-completion ``{"prompt", "completion"}``;
* preferences: ``{"chosen", "rejected"}`` with an optional explicit ``"prompt"`` and
  an optional Llama 2 ``"strength"`` label or numeric ``"margin"``;
* prompts: prompt-only ``{"prompt"}`` for RLHF rollouts.

Two formats other tools publish are read into the same rows: Anthropic hh-rlhf raw
transcripts (``chosen``/``rejected`` strings of ``"\\n\\nHuman: ..."`` turns) and
ShareGPT (``conversations`` of ``{"from", "value"}`` turns, with ``chosen``/``rejected``
replies for preferences), the format LLaMA-Factory and Axolotl write.

Every row is validated, role order included: an optional system message first, then
user and assistant messages alternating, starting with the user. A bad row raises
:class:`DataError` with the file, the 1-based line and the field. Published data has
quirks that are not errors of the file's format; they follow fixed rules, counted in a
:class:`LoadReport`, and ``on_bad_row="error"`` makes each of them an error instead:

* ``repeated_turns`` (repaired): hh-rlhf turns of one speaker in a row are joined into one
  message, separated by a blank line;
* ``empty_reply`` (skipped): a row whose reply to train on or compare is empty, in any
  format (SFT learns nothing from it; a reward model would compare a reply with nothing);
* ``empty_turn`` (skipped): an hh-rlhf transcript with an empty earlier turn;
* ``identical_replies`` (skipped): a preference pair whose two replies are the same, white
  space around them aside (chat templates strip it).

Plain-text preference pairs become conversational ones (the prompt a user message, each
reply an assistant message), so reward models train on and score the same chat-template
rendering the policy samples through. Loading only reads: a failed load writes nothing.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from llama2rlhf.data.errors import ConfigError, DataError
from llama2rlhf.data.hh import HUMAN_TAG, hh_turns, merge_repeated_turns
from llama2rlhf.data.jsonl import PathLike
from llama2rlhf.data.sources import open_rows
from llama2rlhf.data.strength import check_strength

if TYPE_CHECKING:  # datasets costs a second to import; the CLI must start fast
    from datasets import Dataset

log = logging.getLogger(__name__)

ROLES: tuple[str, ...] = ("system", "user", "assistant")
ON_BAD_ROW: tuple[str, ...] = ("skip", "error")
# ShareGPT's speakers; tool turns (function_call, observation) have no place in the chat recipe
SHAREGPT_ROLES: dict[str, str] = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                                  "system": "system"}

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


class LoadReport:
    """What a loader did not take as written: rows skipped and rows repaired, by reason,
    each with its count and the first few ``file:line`` (see the module doc for the rules)."""

    FIRST = 5

    def __init__(self) -> None:
        self.file = ""
        self.rows = 0
        self.kept = 0
        self.skipped: dict[str, dict[str, Any]] = {}
        self.repaired: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _note(table: dict[str, dict[str, Any]], reason: str, where: str) -> None:
        entry = table.setdefault(reason, {"count": 0, "first": []})
        entry["count"] += 1
        if len(entry["first"]) < LoadReport.FIRST:
            entry["first"].append(where)

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "rows": self.rows, "kept": self.kept, "skipped_rows": self.skipped,
                "repaired_rows": self.repaired}

    def describe(self) -> str:
        def part(table: dict[str, dict[str, Any]]) -> str:
            return ", ".join(f"{reason} {e['count']} (first {e['first'][0]})" for reason, e in table.items())

        text = f"{self.file}: {self.kept} of {self.rows} rows kept"
        if self.skipped:
            text += f"; skipped: {part(self.skipped)}"
        if self.repaired:
            text += f"; repaired: {part(self.repaired)}"
        return text


class _Skip(Exception):
    """A row left out by rule (recorded in the LoadReport)."""


class _Row:
    """One row with its file and line, so every check can say where it failed."""

    def __init__(self, file: str, line: int, data: dict[str, Any], on_bad_row: str, report: LoadReport) -> None:
        self.file = file
        self.line = line
        self.data = data
        self.on_bad_row = on_bad_row
        self.report = report
        self._noted: set[str] = set()  # a row counts once per reason, whichever fields have it
        self._sharegpt_fields: dict[str, str] = {}  # field -> "object" or "list", for error paths

    def error(self, field: str | None, reason: str) -> DataError:
        return DataError(self.file, self.line, field, reason)

    def _quirk(self, table: dict, reason: str, field: str, message: str, action: str) -> None:
        if self.on_bad_row == "error":
            raise self.error(field, f"{message} (data.on_bad_row=skip {action} such rows)")
        if reason not in self._noted:
            self._noted.add(reason)
            LoadReport._note(table, reason, f"{self.file}:{self.line}")

    def skip(self, reason: str, field: str, message: str) -> None:
        """Leave this row out by the rule ``reason``; an error with ``on_bad_row="error"``."""
        self._quirk(self.report.skipped, reason, field, message, "skips")
        raise _Skip

    def repair(self, reason: str, field: str, message: str) -> None:
        """Note that this row was repaired by the rule ``reason``; an error with ``on_bad_row="error"``."""
        self._quirk(self.report.repaired, reason, field, message, "repairs")

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

    def reply_text(self, field: str, value: Any) -> str:
        """A reply's text: an empty one skips the row (``empty_reply``)."""
        if isinstance(value, str) and not value.strip():
            self.skip("empty_reply", field, "the reply is empty")
        return self.text(field, value)

    def messages(self, field: str, value: Any, *, last_role: str | None = None,
                 reply_last: bool = False) -> list[Message]:
        """Validate a conversational value; rebuild each message with only role and content.
        ``reply_last``: the last message is the reply the row is about (empty: ``empty_reply``)."""
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
            out.append({"role": role, "content": message["content"]})
        if last_role is not None:
            self.ends_with(field, out, last_role)
        for index, message in enumerate(out):
            where = f"{field}[{index}].content"
            if reply_last and index == len(out) - 1 and message["role"] == "assistant":
                message["content"] = self.reply_text(where, message["content"])
            else:
                message["content"] = self.text(where, message["content"])
        return out

    def sharegpt(self, field: str, value: Any, *, reply_last: bool = False) -> list[Message]:
        """ShareGPT turns (``{"from", "value"}``, one object or a list) as messages.
        ``reply_last``: as for :meth:`messages`."""
        turns = [value] if isinstance(value, dict) else value
        self._sharegpt_fields[field] = "object" if isinstance(value, dict) else "list"
        if not isinstance(turns, list):
            raise self.error(field, f"must be a list of {{'from', 'value'}} turns, got {_json_type(value)}")
        if not turns:
            raise self.error(field, "is an empty list of turns")
        out = []
        for index, turn in enumerate(turns):
            where = field if isinstance(value, dict) else f"{field}[{index}]"
            if not isinstance(turn, dict):
                raise self.error(where, f"must be a {{'from', 'value'}} object, got {_json_type(turn)}")
            for key in ("from", "value"):
                if key not in turn:
                    raise self.error(f"{where}.{key}", "missing required field")
            speaker = turn["from"]
            if speaker not in SHAREGPT_ROLES:
                raise self.error(f"{where}.from", f"unsupported speaker {speaker!r}; expected one of "
                                                  f"{', '.join(SHAREGPT_ROLES)} (tool turns are not supported)")
            role = SHAREGPT_ROLES[speaker]
            last = reply_last and index == len(turns) - 1 and role == "assistant"
            text = self.reply_text if last else self.text
            out.append({"role": role, "content": text(f"{where}.value", turn["value"])})
        return out

    def ends_with(self, field: str, messages: list[Message], role: str) -> None:
        if messages[-1]["role"] != role:
            raise self.error(
                f"{field}[{len(messages) - 1}].role",
                f"the last message of '{field}' must have role {role!r}, got {messages[-1]['role']!r}",
            )

    def role_order(self, *parts: tuple[str, list[Message]]) -> None:
        """The conversation that ``parts`` ((field, messages), in order) make: an optional
        system message first, then user and assistant alternating from the user (what chat
        templates accept). Errors name the message's role field, ShareGPT's ``from`` for
        ShareGPT fields (see :meth:`sharegpt`)."""
        previous: str | None = None
        position = 0
        for field, messages in parts:
            for index, message in enumerate(messages):
                where, role = self._role_field(field, index), message["role"]
                if role == "system":
                    if position:
                        raise self.error(where, "a system message can only open the conversation, not follow "
                                                f"its message {position}")
                elif previous in (None, "system"):
                    if role != "user":
                        raise self.error(where, f"the conversation must start with a user message"
                                                f"{' after the system message' if previous else ''}, got {role!r}")
                elif role == previous:
                    raise self.error(where, f"a second {role} message in a row; user and assistant messages "
                                            "must alternate")
                previous, position = role, position + 1

    def _role_field(self, field: str, index: int) -> str:
        shape = self._sharegpt_fields.get(field)
        if shape is None:
            return f"{field}[{index}].role"
        return f"{field}.from" if shape == "object" else f"{field}[{index}].from"

    def text_or_messages(self, field: str, value: Any, *, last_role: str) -> tuple[bool, str | list[Message]]:
        """Return ``(is_conversational, validated value)``."""
        if _is_conversational(self, field, value):
            return True, self.messages(field, value, last_role=last_role, reply_last=last_role == "assistant")
        if last_role == "assistant":
            return False, self.reply_text(field, value)
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
            column = self.data.get(name)
            if column is None:
                # A column first seen on a later row is null on the earlier ones.
                column = self.data[name] = [None] * self.rows
            column.append(value)
        self.rows += 1
        for column in self.data.values():
            if len(column) < self.rows:
                column.append(None)

    def dataset(self, report: LoadReport) -> "Dataset":
        if self.rows == 0:
            if report.rows:
                raise DataError(self.file, None, None, f"none of its {report.rows} rows is usable: {report.describe()}")
            raise DataError(self.file, None, None, "no rows; the file is empty")
        try:
            from datasets import Dataset

            return Dataset.from_dict(self.data)
        except (ValueError, TypeError) as err:  # pyarrow.ArrowInvalid is a ValueError
            # Only free-form metadata can get here; the checked fields have fixed types.
            raise DataError(self.file, None, None, f"cannot build a table from the rows: {err}") from err


def _load(path: PathLike, where: dict[str, Any], on_bad_row: str, report: LoadReport | None,
          read_row, columns: tuple[str, ...] = ()) -> "Dataset":
    """Run ``read_row(row) -> column values`` over every row of ``path``; rows skipped by rule
    are counted in ``report`` and logged as one WARNING line."""
    if on_bad_row not in ON_BAD_ROW:
        raise ConfigError("data.on_bad_row", f"must be one of {', '.join(ON_BAD_ROW)}", on_bad_row)
    report = report if report is not None else LoadReport()
    file, rows = open_rows(path, **where)
    report.file = file
    table = _Columns(file, columns)
    for line, data in rows:
        report.rows += 1
        try:
            values = read_row(_Row(file, line, data, on_bad_row, report))
        except _Skip:
            continue
        table.add(values)
        report.kept += 1
    if report.skipped or report.repaired:
        log.warning("%s", report.describe())
    return table.dataset(report)


def _hh_transcript(row: _Row, field: str, *, prompt_only: bool = False) -> list[Message]:
    """A raw hh-rlhf transcript by the module's rules: repeated turns joined, a row with an
    empty reply or turn skipped; ``prompt_only``: the messages before the final reply."""
    value = row.data[field]
    if not isinstance(value, str):
        raise row.error(field, f"must be a string like 'chosen', got {_json_type(value)}")
    try:
        turns = hh_turns(value)
    except ValueError as err:
        raise row.error(field, f"bad hh-rlhf transcript: {err}") from None
    messages, joined = merge_repeated_turns(turns)
    if joined:
        tag = "Human" if turns[joined[0] - 1]["role"] == "user" else "Assistant"
        row.repair("repeated_turns", field, f"turn {joined[0]} is a second {tag} turn in a row")
    if messages[-1]["role"] != "assistant":
        raise row.error(field, f"bad hh-rlhf transcript: it ends with a Human turn (turn {len(turns)}) and has no "
                               "Assistant reply to it")
    if prompt_only:
        messages = messages[:-1]
    elif not messages[-1]["content"]:
        row.skip("empty_reply", field, f"the final Assistant reply (turn {len(turns)}) is empty")
    for number, message in enumerate(messages if prompt_only else messages[:-1], start=1):
        if not message["content"]:
            row.skip("empty_turn", field, f"message {number} ({message['role']}) is empty")
    return messages


def _is_hh(row: _Row) -> bool:
    chosen = row.data.get("chosen")
    return isinstance(chosen, str) and chosen.startswith(HUMAN_TAG)


def _sharegpt_parts(row: _Row, *, reply_last: bool = False) -> list[tuple[str, list[Message]]]:
    """A ShareGPT row's optional ``system`` string and its ``conversations``, as
    (field, messages) parts in conversation order."""
    parts = []
    if "system" in row.data:
        parts.append(("system", [{"role": "system", "content": row.text("system", row.data["system"])}]))
    parts.append(("conversations", row.sharegpt("conversations", row.data["conversations"], reply_last=reply_last)))
    return parts


def _is_conversational(row: _Row, field: str, value: Any) -> bool:
    if isinstance(value, list):
        return True
    if isinstance(value, str):
        return False
    raise row.error(field, f"must be a string or a list of messages, got {_json_type(value)}")


def _kind_name(conversational: bool) -> str:
    return "a list of messages" if conversational else "a string"


# --- SFT ------------------------------------------------------------------------------


def load_sft(path: PathLike, *, on_bad_row: str = "skip", report: LoadReport | None = None,
             **where: Any) -> "Dataset":
    """Load SFT rows in a TRL standard dataset format from a file or data set
    (:func:`llama2rlhf.data.sources.open_rows`; ``where`` = its split, subset, data_dir).

    Each line is either conversational language modeling,
    ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}``
    (must end with an assistant message), or prompt-completion,
    ``{"prompt": ..., "completion": ...}`` with both plain strings or both message
    lists. Columns are ``messages`` or ``prompt``/``completion``; other fields are
    dropped. All rows must use the same format. Anthropic hh-rlhf rows (no ``messages``,
    ``chosen`` a raw transcript) and ShareGPT rows (``conversations``, optional ``system``)
    give their conversation as ``messages``. ``on_bad_row`` and ``report``: see the module doc.
    """
    same = _SameEveryRow()

    def read(row: _Row) -> dict[str, Any]:
        if not {"messages", "prompt", "completion"} & set(row.data):
            if _is_hh(row):
                same.check(row, "chosen", "format", "Anthropic hh-rlhf raw text ('chosen')")
                return {"messages": _hh_transcript(row, "chosen")}
            if "conversations" in row.data:
                same.check(row, "conversations", "format", "ShareGPT ('conversations')")
                parts = _sharegpt_parts(row, reply_last=True)
                row.role_order(*parts)
                row.ends_with(*parts[-1], "assistant")
                return {"messages": [m for _, ms in parts for m in ms]}
        if "messages" in row.data:
            for key in ("prompt", "completion"):
                if key in row.data:
                    raise row.error(key, "row has both 'messages' and prompt-completion fields; use one format")
            same.check(row, "messages", "format", "conversational language modeling ('messages')")
            messages = row.messages("messages", row.data["messages"], last_role="assistant", reply_last=True)
            row.role_order(("messages", messages))
            return {"messages": messages}
        if "prompt" not in row.data and "completion" not in row.data:
            raise row.error("messages", "missing required field (or give 'prompt' and 'completion')")
        prompt = row.require("prompt")
        conversational = _is_conversational(row, "prompt", prompt)
        kind = "conversational" if conversational else "standard"
        same.check(row, "prompt", "format", f"{kind} prompt-completion")
        completion = row.require("completion")
        if conversational != _is_conversational(row, "completion", completion):
            raise row.error("completion", f"must be {_kind_name(conversational)} like 'prompt'")
        values = {"prompt": row.text_or_messages("prompt", prompt, last_role="user")[1],
                  "completion": row.text_or_messages("completion", completion, last_role="assistant")[1]}
        if conversational:
            row.role_order(("prompt", values["prompt"]), ("completion", values["completion"]))
        return values

    return _load(path, where, on_bad_row, report, read)


# --- preferences ----------------------------------------------------------------------


def _pair_kind(row: _Row, chosen: Any) -> str:
    if isinstance(chosen, str):
        # Detected from the text itself because hh-rlhf files carry no format marker.
        return "Anthropic hh-rlhf raw text" if chosen.startswith(HUMAN_TAG) else "standard (plain text)"
    if isinstance(chosen, list):
        return "ShareGPT" if "conversations" in row.data else "conversational"
    if isinstance(chosen, dict) and "conversations" in row.data:
        return "ShareGPT"
    raise row.error("chosen", f"must be a string or a list of messages, got {_json_type(chosen)}")


def _hh_pair(row: _Row) -> dict[str, Any]:
    if "prompt" in row.data:
        raise row.error("prompt", "hh-rlhf rows carry the prompt inside 'chosen'/'rejected'; remove 'prompt'")
    chosen = _hh_transcript(row, "chosen")
    rejected = _hh_transcript(row, "rejected")
    # the two transcripts share every turn but the final Assistant reply
    prompt, other = chosen[:-1], rejected[:-1]
    for turn, (mine, theirs) in enumerate(zip(prompt, other, strict=False), start=1):
        if mine != theirs:
            raise row.error("rejected", f"chosen and rejected prompts differ at message {turn}: "
                                        f"{mine['content'][:40]!r} vs {theirs['content'][:40]!r}")
    if len(prompt) != len(other):
        raise row.error("rejected", f"chosen and rejected prompts differ in length: {len(prompt)} vs {len(other)} "
                                    "messages before the final Assistant reply")
    return {"prompt": prompt, "chosen": chosen[-1:], "rejected": rejected[-1:]}


def _sharegpt_pair(row: _Row) -> dict[str, Any]:
    parts = _sharegpt_parts(row)
    row.ends_with(*parts[-1], "user")
    values: dict[str, Any] = {"prompt": [m for _, ms in parts for m in ms]}
    for field in ("chosen", "rejected"):
        values[field] = row.sharegpt(field, row.require(field), reply_last=True)
        row.role_order(*parts, (field, values[field]))
        row.ends_with(field, values[field], "assistant")
    return values


def _plain_pair(row: _Row, chosen: Any, rejected: Any) -> dict[str, Any]:
    """A plain-text pair as a conversational one: the prompt a user message, each reply an
    assistant message. Without ``prompt``, the prompt is the text both replies start with
    (TRL's ``extract_prompt``)."""
    from trl.data_utils import extract_prompt

    texts = {"chosen": row.reply_text("chosen", chosen), "rejected": row.reply_text("rejected", rejected)}
    if "prompt" in row.data:
        prompt = row.text("prompt", row.data["prompt"])
    else:
        texts = extract_prompt(texts)
        prompt = texts["prompt"]
        if not prompt.strip():
            raise row.error("chosen", "'chosen' and 'rejected' share no prompt text; give the prompt in 'prompt'")
        for field in ("chosen", "rejected"):
            row.reply_text(field, texts[field])
    return {"prompt": [{"role": "user", "content": prompt.strip()}],
            **{field: [{"role": "assistant", "content": texts[field].strip()}] for field in ("chosen", "rejected")}}


def _conversational_pair(row: _Row, chosen: Any, rejected: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    parts = []
    if "prompt" in row.data:
        out["prompt"] = row.messages("prompt", row.data["prompt"], last_role="user")
        parts.append(("prompt", out["prompt"]))
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        out[field] = row.messages(field, value, last_role="assistant", reply_last=True)
        row.role_order(*parts, (field, out[field]))
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


def _same_replies(chosen: list[Message], rejected: list[Message]) -> bool:
    # chat templates strip each message's content: replies that differ only in the white
    # space around them render as the same tokens
    def shown(messages: list[Message]) -> list[tuple[str, str]]:
        return [(m["role"], m["content"].strip()) for m in messages]

    return shown(chosen) == shown(rejected)


def load_preferences(path: PathLike, *, on_bad_row: str = "skip", report: LoadReport | None = None,
                     **where: Any) -> "Dataset":
    """Load preference pairs in TRL's conversational preference format (reward modeling /
    DPO) from a file or data set (``where``, ``on_bad_row``, ``report``: see :func:`load_sft`).

    Each line is ``{"chosen", "rejected"}``, both message lists with an optional explicit
    ``"prompt"`` list, or all plain strings (made conversational, see the module doc), plus
    optionally a Llama 2 ``"strength"`` label (see :data:`~llama2rlhf.data.strength.STRENGTHS`)
    or a numeric ``"margin"``, and optionally a boolean ``"safety"`` (a safety prompt's
    comparison: these train the safety reward model). Anthropic hh-rlhf raw transcripts
    (``chosen`` starting with ``"\\n\\nHuman:"``) and ShareGPT rows (``conversations`` ending
    with a human turn, ``chosen``/``rejected`` a gpt turn) become explicit-prompt rows.
    Columns: ``prompt`` when there is one, ``chosen``, ``rejected``, then ``strength`` and/or
    ``margin`` and ``safety`` only when the file has them (then on every row); other fields
    are dropped. A pair whose two replies are the same is skipped (``identical_replies``).
    """
    same = _SameEveryRow()

    def read(row: _Row) -> dict[str, Any]:
        chosen = row.require("chosen")
        rejected = row.require("rejected")
        kind = _pair_kind(row, chosen)
        same.check(row, "chosen", "format", kind)
        if kind == "Anthropic hh-rlhf raw text":
            values = _hh_pair(row)
        elif kind == "ShareGPT":
            values = _sharegpt_pair(row)
        else:
            conversational = kind == "conversational"
            has_prompt = "prompt" in row.data
            same.check(row, "prompt", "prompt", "with explicit 'prompt'" if has_prompt else "without 'prompt'")
            for field in ("prompt", "rejected") if has_prompt else ("rejected",):
                value = row.data[field]
                if conversational != _is_conversational(row, field, value):
                    raise row.error(field, f"must be {_kind_name(conversational)} like 'chosen', got {_json_type(value)}")
            values = (_conversational_pair if conversational else _plain_pair)(row, chosen, rejected)
        if _same_replies(values["chosen"], values["rejected"]):
            row.skip("identical_replies", "rejected", "'chosen' and 'rejected' are the same reply")
        values.update(_strength_and_margin(row, same))
        values.update(_safety(row, same))
        return values

    return _load(path, where, on_bad_row, report, read)


# --- prompts --------------------------------------------------------------------------


def load_prompts(path: PathLike, *, on_bad_row: str = "skip", report: LoadReport | None = None,
                 **where: Any) -> "Dataset":
    """Load prompt-only rows (TRL standard dataset formats) for RLHF rollouts from a file
    or data set (``where``, ``on_bad_row``, ``report``: see :func:`load_sft`).

    Each line is ``{"prompt": ...}``: a plain string, which becomes
    ``[{"role": "user", "content": ...}]``, or a message list ending with a user
    message. Any other fields are kept as metadata columns (null where a row lacks
    them) and must hold the same JSON type on every row. Conversational language modeling
    rows (``{"messages": [...]}``, the SFT format, metadata kept likewise), Anthropic hh-rlhf
    rows (no ``prompt``, ``chosen`` a raw transcript) and ShareGPT rows give the conversation
    before its last reply (one that ends with a user turn, all of it).
    """
    metadata_types: dict[str, tuple[int, str]] = {}

    def read(row: _Row) -> dict[str, Any]:
        if "prompt" not in row.data:
            if "messages" in row.data:
                messages = row.messages("messages", row.data["messages"])
                row.role_order(("messages", messages))
                if messages[-1]["role"] == "assistant":
                    messages = messages[:-1]
                if messages[-1]["role"] != "user":
                    raise row.error(f"messages[{len(messages) - 1}].role", "the conversation needs a user message to "
                                                                         "reply to")
                return {"prompt": messages, **metadata(row, "messages")}
            if _is_hh(row):
                return {"prompt": _hh_transcript(row, "chosen", prompt_only=True)}
            if "conversations" in row.data:
                parts = _sharegpt_parts(row)
                row.role_order(*parts)
                messages = [m for _, ms in parts for m in ms]
                return {"prompt": messages[:-1] if messages[-1]["role"] == "assistant" else messages}
        prompt = row.require("prompt")
        conversational, value = row.text_or_messages("prompt", prompt, last_role="user")
        if conversational:
            row.role_order(("prompt", value))
        return {"prompt": value if conversational else [{"role": "user", "content": value}],
                **metadata(row, "prompt")}

    def metadata(row: _Row, taken: str) -> dict[str, Any]:
        """The row's fields other than ``taken``, each of one JSON type on every row."""
        values = {}
        for key, extra in row.data.items():
            if key == taken:
                continue
            kind = _json_type(extra)
            if kind != "null":
                line, first = metadata_types.setdefault(key, (row.line, kind))
                if first != kind:
                    raise row.error(key, f"is {_article(kind)} but line {line} has {_article(first)}; a column needs one type")
            values[key] = extra
        return values

    return _load(path, where, on_bad_row, report, read, ("prompt",))


def limited(rows: list[dict[str, Any]], cfg: Any, use: str) -> list[dict[str, Any]]:
    """At most ``data.limit`` of ``rows``, a random draw in file order (seeded by ``seed`` and
    ``use``), for a run smaller than its data."""
    import random

    limit = cfg.data.limit
    if limit is None or len(rows) <= limit:
        return rows
    keep = sorted(random.Random(f"{cfg.seed}:limit:{use}").sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


__all__: list[str] = ["ON_BAD_ROW", "ROLES", "LoadReport", "limited", "load_preferences", "load_prompts", "load_sft"]


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
