"""The errors a user can fix: bad input, reported in one line and exit code 2.

Every error the run raises because of what the user gave it (a config key, a data file,
a model path, a plugin, a run directory) is an :class:`InputError`. The command line prints
its message alone, ``llama2rlhf: <message>``, and exits with :data:`BAD_INPUT_EXIT`; the
traceback only with ``LLAMA2RLHF_DEBUG=1``. The message therefore names what to change: the
key, the ``file:line`` and field, the plugin and its distribution, or the path.
"""

from __future__ import annotations

BAD_INPUT_EXIT = 2
DEBUG_ENV = "LLAMA2RLHF_DEBUG"


def one_line(text: object) -> str:
    """``text`` with every run of white space (newlines included) as one space."""
    return " ".join(str(text).split())


class InputError(ValueError):
    """Bad input: the one-line message names what to change."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class ConfigError(InputError):
    """A config value that cannot work: ``str(err)`` reads ``"{key}={value!r}: {reason}"``
    (``"{key}: {reason}"`` without a value), ``key`` the dotted key to override."""

    _NO_VALUE = object()

    def __init__(self, key: str, reason: str, value: object = _NO_VALUE) -> None:
        self.key = key
        self.reason = reason
        self.value = value
        super().__init__(key, reason)

    def __str__(self) -> str:
        shown = self.key if self.value is ConfigError._NO_VALUE else f"{self.key}={self.value!r}"
        return one_line(f"{shown}: {self.reason}")

    def __reduce__(self):
        return (type(self), (self.key, self.reason, self.value))


class DataError(InputError):
    """A data file that cannot be used, and exactly where it goes wrong.

    ``file`` is the path as given, ``line`` the 1-based line number (``None`` when the
    problem is the file as a whole), ``field`` the offending field as a path such as
    ``"messages[2].role"`` (``None`` when the line itself is broken), ``reason`` what
    is wrong in words. ``str(err)`` reads ``"{file}:{line}: field '{field}': {reason}"``,
    the ``file:line:`` prefix editors and terminals turn into a link.
    """

    def __init__(self, file: str, line: int | None, field: str | None, reason: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.reason = reason
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = self.reason if self.field is None else f"field '{self.field}': {self.reason}"
        return one_line(f"{where}: {what}")

    def __str__(self) -> str:
        return self._render()

    # The default exception pickling replays ``args`` (the rendered message) into
    # ``__init__``, which takes four arguments; DataLoader workers pickle errors.
    def __reduce__(self):
        return (type(self), (self.file, self.line, self.field, self.reason))
