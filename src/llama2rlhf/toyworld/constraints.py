"""System-prompt constraints that a checker can verify on every turn (for Ghost Attention).

The paper's GAtt instructions were hobbies, a language and a public figure to act as
(paper 3.3). Their toy counterparts here change every reply in a way a checker can see:

* ``persona``: "Act as {figure}." -> every reply starts with "{figure} here."
* ``language``: "Answer in {style}." -> every reply is upper-case / lower-case.
* ``hobby``: "You love {hobby}." -> every reply ends with "I love {hobby}."
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

FIGURES = ("Napoleon", "Cleopatra", "Newton", "Curie", "Caesar", "Lincoln")
STYLES = {"capitals": str.upper, "lower case": str.lower}
HOBBIES = ("tennis", "chess", "jazz", "hiking", "poetry", "cooking")


@dataclass(frozen=True)
class Constraint:
    """One instruction: its text, how it changes a reply, and how to check one."""

    key: str  # "persona:Newton", "language:capitals", "hobby:chess"
    instruction: str
    apply: Callable[[str], str]
    check: Callable[[str], bool]


def _persona(figure: str) -> Constraint:
    head = f"{figure} here."
    return Constraint(
        f"persona:{figure}",
        f"Act as {figure}.",
        lambda reply: f"{head} {reply}",
        # case-free: a language constraint may restyle the persona's words too
        lambda reply: reply.strip().lower().startswith(head.lower()),
    )


def _language(style: str) -> Constraint:
    fn = STYLES[style]
    return Constraint(
        f"language:{style}",
        f"Answer in {style}.",
        fn,
        # a reply with no letters cannot show the style; it does not adhere
        lambda reply: any(ch.isalpha() for ch in reply) and fn(reply) == reply,
    )


def _hobby(hobby: str) -> Constraint:
    tail = f"I love {hobby}."
    return Constraint(
        f"hobby:{hobby}",
        f"You love {hobby}.",
        lambda reply: f"{reply} {tail}",
        lambda reply: reply.strip().lower().endswith(tail.lower()),
    )


def constraint_from_key(key: str) -> Constraint:
    kind, _, value = key.partition(":")
    makers = {"persona": _persona, "language": _language, "hobby": _hobby}
    if kind not in makers:
        raise ValueError(f"unknown constraint {key!r}; kinds: {', '.join(makers)}")
    return makers[kind](value)


KINDS = ("persona", "language", "hobby")


def sample_constraints(rng: random.Random, max_n: int = 2, kinds: tuple[str, ...] = KINDS) -> tuple[Constraint, ...]:
    """A random combination of 1..max_n constraints of different ``kinds``."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"constraint kinds must be some of {', '.join(KINDS)}; got {list(kinds)}")
    chosen = rng.sample(list(kinds), rng.randint(1, min(max_n, len(kinds))))
    pools = {"persona": FIGURES, "language": tuple(STYLES), "hobby": HOBBIES}
    return tuple(constraint_from_key(f"{k}:{rng.choice(pools[k])}") for k in sorted(chosen))


def system_prompt(constraints: tuple[Constraint, ...]) -> str:
    return " ".join(c.instruction for c in constraints)


def apply_all(reply: str, constraints: tuple[Constraint, ...]) -> str:
    # language last, so that persona and hobby text are styled too
    for c in sorted(constraints, key=lambda c: c.key.startswith("language")):
        reply = c.apply(reply)
    return reply


def adherence(reply: str, keys: tuple[str, ...]) -> float:
    """Fraction of the constraints that ``reply`` satisfies (1.0 when there are none)."""
    if not keys:
        return 1.0
    return sum(constraint_from_key(k).check(reply) for k in keys) / len(keys)
