"""The built-in GAtt checkers (paper 3.3): ``source`` and ``text``.

``source`` is the constraint source's own check: the toy world's source verifies its
constraints; the ``list`` source's free-text instructions cannot be checked by rule, so it
keeps every reply. ``text`` checks the ``list`` source's instructions on free text: a
persona or a hobby by the reply naming it, a language by the reply's most frequent
function words. A plugin registered under ``register_checkers`` replaces them with
``checker=<name>``.
"""

from __future__ import annotations

import re
from typing import Any

from llama2rlhf import hookimpl

# frequent function words of each language ``gatt.languages`` lists by default, and English,
# which a reply that ignores the instruction is written in
FUNCTION_WORDS: dict[str, frozenset[str]] = {
    "English": frozenset("the and is are you of to it that in for with this not be have".split()),
    "French": frozenset("le la les et est vous de des un une que pour dans avec ce pas je".split()),
    "Spanish": frozenset("el la los las y es usted de un una que para en con por no yo".split()),
    "German": frozenset("der die das und ist sie ich nicht ein eine zu mit für auf den dem".split()),
    "Italian": frozenset("il lo la gli e è di un una che per con non sono io del della".split()),
}


def language_of(text: str) -> str | None:
    """The language whose function words ``text`` uses most (at least two of them)."""
    words = re.findall(r"[^\W\d_]+", text.casefold())
    counts = {lang: sum(w in vocab for w in words) for lang, vocab in FUNCTION_WORDS.items()}
    best = max(counts, key=counts.get)
    return best if counts[best] >= 2 and list(counts.values()).count(counts[best]) == 1 else None


def text_check(instruction: Any, reply: str) -> bool | None:
    """Whether ``reply`` follows every part of a ``list`` instruction (``Instruction.keys``
    such as ``persona:Napoleon``, ``language:French``, ``hobby:chess``); None when no part is
    of a kind this rule knows."""
    verdicts = []
    for key in instruction.keys:
        kind, _, value = key.partition(":")
        if kind in ("persona", "hobby"):
            verdicts.append(value.casefold() in reply.casefold())
        elif kind == "language" and value in FUNCTION_WORDS:
            verdicts.append(language_of(reply) == value)
    return all(verdicts) if verdicts else None


def source_check(cfg: Any):
    from llama2rlhf.gatt.augmenter import constraint_source

    return constraint_source(cfg).check


def make_text_check(cfg: Any):
    return text_check


@hookimpl(trylast=True)
def register_checkers(register):
    register("source", source_check)
    register("text", make_text_check)
