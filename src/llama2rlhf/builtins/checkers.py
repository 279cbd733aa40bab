"""The built-in GAtt checker ``source``: the constraint source's own check (paper 3.3).

The toy world's source verifies its constraints; the ``list`` source's free-text
instructions cannot be checked by rule, so it keeps every reply. A plugin registered under
``register_checkers`` replaces it with ``checker=<name>``.
"""

from __future__ import annotations

from typing import Any

from .. import hookimpl


def source_check(cfg: Any):
    from .augmenters import constraint_source

    return constraint_source(cfg).check


@hookimpl(trylast=True)
def register_checkers(register):
    register("source", source_check)
