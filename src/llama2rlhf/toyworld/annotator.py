"""The simulated annotator: gold differences seen through rater noise (paper 3.2.1).

Llama 2's annotators chose the better of two responses and rated how much better on a
four-point scale. Here the rater perceives the gold reward difference plus Gaussian
noise, picks the side that looks better, and maps the perceived gap to a strength label.
Close pairs therefore get flipped often, clear pairs rarely: the reason RM accuracy falls
from "significantly better" to "negligibly better" (paper Table 8).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llama2rlhf.toyworld import oracle
from llama2rlhf.toyworld.tasks import Prompt

# perceived gap thresholds, strongest first
THRESHOLDS = (
    (0.55, "significantly_better"),
    (0.30, "better"),
    (0.12, "slightly_better"),
    (0.0, "negligibly_better"),
)


@dataclass(frozen=True)
class Judgement:
    chosen: str
    rejected: str
    strength: str
    gold_gap: float  # gold(chosen) - gold(rejected); negative when the rater got it wrong


def strength_for_gap(gap: float) -> str:
    for threshold, label in THRESHOLDS:
        if gap >= threshold:
            return label
    return THRESHOLDS[-1][1]


class SimulatedAnnotator:
    def __init__(self, noise: float = 0.08, axis: str = "reward"):
        if axis not in ("reward", "helpfulness", "safety"):
            raise ValueError(f"annotator axis must be reward, helpfulness or safety, not {axis!r}")
        self.noise = noise
        self.axis = axis

    def judge(self, prompt: Prompt, a: str, b: str, rng: random.Random) -> Judgement:
        ga = getattr(oracle.score(prompt, a), self.axis)
        gb = getattr(oracle.score(prompt, b), self.axis)
        perceived = ga - gb + rng.gauss(0.0, self.noise)
        if perceived == 0.0:
            perceived = rng.choice((-1e-9, 1e-9))
        if perceived > 0:
            return Judgement(a, b, strength_for_gap(perceived), ga - gb)
        return Judgement(b, a, strength_for_gap(-perceived), gb - ga)
