"""``checker=example_mentions``: GAtt replies for real-data instructions, checked by rule.

The built-in ``list`` constraint source (``gatt.constraints=list``) cannot check free text,
so ``gatt.filter`` keeps every reply. This checker rejects a reply that does not name what
the instruction's persona and hobby parts ask for (``Instruction.keys`` such as
``"persona:Napoleon"``, ``"hobby:chess"``), case-insensitively, and cannot tell (None) for an
instruction with neither (a language, which a rule on words cannot judge).
"""

from __future__ import annotations

from typing import Any

NAME = "example_mentions"
CHECKED_KINDS = ("persona", "hobby")


def mentions(instruction: Any, reply: str) -> bool | None:
    wanted = [key.split(":", 1)[1] for key in instruction.keys if key.split(":", 1)[0] in CHECKED_KINDS]
    if not wanted:
        return None
    text = reply.casefold()
    return all(w.casefold() in text for w in wanted)


def make_mentions_checker(cfg: Any):
    """The ``register_checkers`` factory: ``make_check(cfg, **options) -> check``; this checker
    has no options (its ``checker`` node is the plain one, just ``name``)."""
    return mentions
