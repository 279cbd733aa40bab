"""JSON Lines reading and writing: one JSON object per line, UTF-8.

Reading names the file and 1-based line of any broken row (:class:`DataError`);
writing never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from llama2rlhf.data.errors import DataError

PathLike = str | os.PathLike[str]

_BOM = b"\xef\xbb\xbf"

_JSON_TYPE_NAMES: dict[type, str] = {
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def read_jsonl(path: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` for every non-blank line of a JSON Lines file.

    Line numbers are 1-based and count blank lines too, so they match what an editor
    shows. Raises :class:`DataError` on bytes that are not UTF-8, on broken JSON and
    on a line that holds anything but a JSON object.
    """
    file = os.fspath(path)
    offset = 0
    # Bytes, not text mode: a text-mode decode error cannot say which line it is on,
    # and str.splitlines would also split inside JSON strings holding U+2028.
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line_start = offset
            offset += len(raw)
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
                line_start += len(_BOM)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = raw[err.start]
                raise DataError(
                    file,
                    number,
                    None,
                    f"not valid UTF-8: byte 0x{bad:02x} at byte offset {err.start} of the line "
                    f"(byte offset {line_start + err.start} of the file)",
                ) from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(file, number, None, f"invalid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(row, dict):
                got = _JSON_TYPE_NAMES.get(type(row), type(row).__name__)
                hint = " (JSON Lines needs one object per line, not a JSON array file)" if isinstance(row, list) else ""
                raise DataError(file, number, None, f"expected a JSON object, got {got}{hint}")
            yield number, row


def _encode(rows: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"row {index} is {type(row).__name__}, not a mapping; JSON Lines rows are objects")
        # ensure_ascii=False keeps non-English text readable in the file; allow_nan=False
        # because NaN is not JSON and other readers reject it.
        yield (json.dumps(dict(row), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def write_jsonl(path: PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write ``rows`` as JSON Lines, replacing ``path`` atomically; return the row count.

    The rows go to a temporary file in the same directory that is fsynced and then
    renamed over ``path``, so readers see the old file or the complete new one, and a
    row that fails to serialise leaves the old file untouched.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    count = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for line in _encode(rows):
                handle.write(line)
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
    return count


def append_jsonl(path: PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append ``rows`` to a JSON Lines file (created if missing), flushed and fsynced.

    All rows are serialised before the file is opened, so a row that cannot be
    written appends nothing. Returns the number of rows appended.
    """
    target = os.fspath(path)
    payload = list(_encode(rows))
    count = len(payload)
    with open(target, "a+b") as handle:
        # A file whose last line lacks its newline would glue our first row onto it.
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                payload.insert(0, b"\n")
        handle.write(b"".join(payload))
        handle.flush()
        os.fsync(handle.fileno())
    return count


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
