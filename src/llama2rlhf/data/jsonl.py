"""JSON Lines reading and writing: one JSON object per line, UTF-8; reading a JSON array
of objects, the other layout data sets are published in; and writing one JSON document.

Reading names the file and 1-based line of any broken row (:class:`DataError`).

This module is also the one way the run writes its files. :func:`write_jsonl`,
:func:`write_json`, :func:`write_text` and :func:`write_bytes` replace a file atomically
(:func:`_replace_atomically`), so a reader, or a run killed mid-write, finds the old file
or the complete new one, never half of it; :func:`staging_folder` and
:func:`replace_folder` do the same for a folder a library writes file by file (a model's
``save_pretrained``). The one file that grows instead, ``metrics.jsonl``, is an append-only
log (:func:`append_log`, read back by :func:`read_log`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
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


def is_json_array(path: PathLike) -> bool:
    """Whether the file's first non-blank character opens a JSON array."""
    with open(os.fspath(path), "rb") as handle:
        head = handle.read(4096).lstrip(_BOM).lstrip()
    return head[:1] == b"["


def read_json_array(path: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` for every element of a file holding one JSON array of
    objects; each row's line is where its object starts, so errors point into the file."""
    file = os.fspath(path)
    with open(file, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(file, line, None, f"not valid UTF-8: byte 0x{raw[err.start]:02x} at byte offset "
                                          f"{err.start} of the file") from None
    decoder = json.JSONDecoder()
    ws = " \t\r\n"

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in ws:
            pos += 1
        return pos

    counted = [0, 1]  # newlines are counted up to this position, and the line there (positions only grow)

    def line_of(pos: int) -> int:
        counted[1] += text.count("\n", counted[0], pos)
        counted[0] = pos
        return counted[1]

    pos = skip(0) + 1  # past the "["
    pos = skip(pos)
    if text[pos:pos + 1] == "]":
        return
    while True:
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(file, err.lineno, None, f"invalid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(row, dict):
            got = _JSON_TYPE_NAMES.get(type(row), type(row).__name__)
            raise DataError(file, line_of(pos), None, f"expected a JSON object in the array, got {got}")
        yield line_of(pos), row
        pos = skip(end)
        if text[pos:pos + 1] == ",":
            pos = skip(pos + 1)
            continue
        if text[pos:pos + 1] == "]" and not text[skip(pos + 1):].strip():
            return
        raise DataError(file, line_of(pos), None, "invalid JSON: expected ',' or ']' after an array element")


def _encode(rows: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"row {index} is {type(row).__name__}, not a mapping; JSON Lines rows are objects")
        # ensure_ascii=False keeps non-English text readable in the file; allow_nan=False
        # because NaN is not JSON and other readers reject it.
        yield (json.dumps(dict(row), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _replace_atomically(path: PathLike, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to a temporary file in ``path``'s folder (created if missing), fsync
    it, then rename it over ``path``; on any failure, ``chunks`` raising included, remove
    the temporary file and leave ``path`` as it was."""
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
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


def write_jsonl(path: PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write ``rows`` as JSON Lines, replacing ``path`` atomically; return the row count.

    A row that fails to serialise (not a mapping, not JSON, NaN) leaves the old file
    untouched and no temporary file behind.
    """
    count = 0

    def lines() -> Iterator[bytes]:
        nonlocal count
        for line in _encode(rows):
            count += 1
            yield line

    _replace_atomically(path, lines())
    return count


def write_json(path: PathLike, data: Any, *, indent: int | None = 2,
               default: Callable[[Any], Any] | None = None) -> None:
    """Write ``data`` as one JSON document ending in a newline, replacing ``path``
    atomically; a value that fails to serialise leaves the old file untouched. Text outside
    ASCII is escaped (``\\u00e9``), so the file reads the same whatever encoding a reader
    assumes.

    ``default`` is :func:`json.dumps`'s: what to write for a value JSON has no type for
    (``str`` for the run's summary and state, whose entries come from plugins too).
    NaN and infinities are written as Python's :mod:`json` writes and reads them: a
    metric that diverged is a result to record, where a data row with one is a bug.
    """
    text = json.dumps(data, indent=indent, default=default) + "\n"
    _replace_atomically(path, [text.encode("ascii")])


def write_text(path: PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path``, replacing it atomically (``report.md``)."""
    _replace_atomically(path, [text.encode(encoding)])


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path``, replacing it atomically (a plot's PNG)."""
    _replace_atomically(path, [bytes(data)])


def staging_folder(path: PathLike) -> str:
    """The folder to write a new version of the folder ``path`` into (its sibling
    ``<name>.tmp``), emptied first: what a killed attempt left there is never mixed into
    this one. :func:`replace_folder` then puts it in place of ``path``."""
    target = os.path.abspath(os.fspath(path))
    staging = target + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def replace_folder(staging: PathLike, path: PathLike) -> None:
    """Put the complete folder ``staging`` (from :func:`staging_folder`) in place of the
    folder ``path``: its files are fsynced, the old folder is renamed away, the new one
    renamed in, then the old one removed. A kill at any moment leaves the old folder whole,
    or no folder at ``path``, never files of two writes side by side."""
    source, target = os.path.abspath(os.fspath(staging)), os.path.abspath(os.fspath(path))
    for root, _, files in os.walk(source):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
    old = target + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.lexists(target):
        os.replace(target, old)
    os.replace(source, target)
    _fsync_directory(os.path.dirname(target))
    shutil.rmtree(old, ignore_errors=True)


def append_log(path: PathLike, record: Mapping[str, Any], *, default: Callable[[Any], Any] | None = None) -> None:
    """Append ``record`` as one line to the append-only JSON Lines log ``path`` (created if
    missing), in one write, flushed.

    Appending keeps every earlier record whatever happens to this one, where rewriting the
    file would risk them all. A kill mid-append can leave the last line cut short (no
    newline at its end): that fragment was never a record, and it is dropped before this
    one is appended, so the log is whole lines plus at most a cut last line, which
    :func:`read_log` skips. ``default`` and NaN as in :func:`write_json`.
    """
    line = (json.dumps(dict(record), default=default) + "\n").encode("utf-8")
    with open(os.fspath(path), "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        if end:
            handle.seek(end - 1)
            if handle.read(1) != b"\n":
                handle.truncate(_last_line_start(handle, end))
                handle.seek(0, os.SEEK_END)
        handle.write(line)
        handle.flush()


def _last_line_start(handle: Any, end: int, chunk: int = 65536) -> int:
    """The offset just past the last newline before ``end`` (0 when there is none)."""
    pos = end
    while pos > 0:
        start = max(0, pos - chunk)
        handle.seek(start)
        found = handle.read(pos - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        pos = start
    return 0


def read_log(path: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for every record of a log written by
    :func:`append_log`; a last line cut short by a kill (no newline at its end, not valid
    JSON) is skipped. Any other broken line is a :class:`DataError`, as in
    :func:`read_jsonl`."""
    file = os.fspath(path)
    with open(file, "rb") as handle:
        data = handle.read()
    cut = not data.endswith(b"\n")
    lines = data.split(b"\n")
    if not cut:
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if cut and number == len(lines):
                return
            raise DataError(file, number, None, f"not a JSON record ({err})") from None
        if not isinstance(row, dict):
            raise DataError(file, number, None, "expected a JSON object")
        yield number, row


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
