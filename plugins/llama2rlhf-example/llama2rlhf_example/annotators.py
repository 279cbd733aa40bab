"""``annotator=example_shorter``: a rule-based annotator that prefers the shorter reply.

A template for annotators that label by rule or by another model rather than by people
(paper 3.2.1 used people; ``annotator=file`` is the built-in exchange with them). The
preference strength comes from how much shorter the chosen reply is, relative to the
longer one: at least ``thresholds[0]`` shorter is "significantly better", then "better",
"slightly better", and below the last threshold (or equal lengths) "negligibly better".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from llama2rlhf.config import AnnotatorConfig
from llama2rlhf.data.strength import STRENGTHS
from llama2rlhf.recipe.annotation import PairToLabel

NAME = "example_shorter"
UNITS = ("words", "chars")


@dataclass
class ExampleShorterConfig(AnnotatorConfig):
    name: str = NAME
    unit: str = "words"  # words | chars
    # relative length gaps, (longer - shorter) / longer, for significantly better, better
    # and slightly better; anything below the last is negligibly better
    thresholds: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.1])


def length(text: str, unit: str) -> int:
    return len(text.split()) if unit == "words" else len(text)


def strength(gap: float, thresholds: Sequence[float]) -> str:
    """The strength label of a relative length gap in [0, 1]."""
    for label, bound in zip(STRENGTHS, thresholds, strict=False):
        if gap >= bound:
            return label
    return STRENGTHS[-1]


class ShorterAnnotator:
    def __init__(self, unit: str = "words", thresholds: Sequence[float] = (0.5, 0.25, 0.1)):
        if unit not in UNITS:
            raise ValueError(f"annotator.unit must be one of {', '.join(UNITS)}, got {unit!r}")
        thresholds = [float(t) for t in thresholds]
        if len(thresholds) != len(STRENGTHS) - 1:
            raise ValueError(f"annotator.thresholds needs {len(STRENGTHS) - 1} values (for "
                             f"{', '.join(STRENGTHS[:-1])}), got {len(thresholds)}")
        falling = all(a > b for a, b in zip(thresholds, thresholds[1:], strict=False))
        if not (falling and thresholds[0] <= 1.0 and thresholds[-1] > 0.0):
            raise ValueError(f"annotator.thresholds must fall strictly, within (0, 1], got {thresholds}")
        self.unit = unit
        self.thresholds = thresholds

    def annotate(self, pairs: Sequence[PairToLabel], workdir: Path) -> list[dict]:
        """The annotator contract (:func:`llama2rlhf.plugins.hookspecs.register_annotators`): one
        preference row per pair, in order, with the pair's ``id`` and a ``strength``."""
        rows = []
        for pair in pairs:
            la, lb = length(pair.a, self.unit), length(pair.b, self.unit)
            # equal lengths: a, negligibly better (the pair still teaches the RM nothing wrong)
            chosen, rejected = (pair.a, pair.b) if la <= lb else (pair.b, pair.a)
            longer = max(la, lb)
            gap = (longer - min(la, lb)) / longer if longer else 0.0
            rows.append({"id": pair.id, "prompt": pair.prompt, "strength": strength(gap, self.thresholds),
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
        return rows


def make_shorter_annotator(cfg: Any, world: Any, *, unit: str = "words",
                           thresholds: Sequence[float] = (0.5, 0.25, 0.1)) -> ShorterAnnotator:
    """The ``register_annotators`` factory: ``factory(cfg, world, **options)``, the options
    being the ``annotator`` node's fields but ``name`` (:class:`ExampleShorterConfig`); the
    toy world is not needed."""
    return ShorterAnnotator(unit, list(thresholds))
