"""The one error type the data loaders raise for a bad input file."""

from __future__ import annotations


class DataError(ValueError):
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
        return f"{where}: {what}"

    def __str__(self) -> str:
        return self._render()

    # The default exception pickling replays ``args`` (the rendered message) into
    # ``__init__``, which takes four arguments; DataLoader workers pickle errors.
    def __reduce__(self):
        return (type(self), (self.file, self.line, self.field, self.reason))
