"""``selector=example_threshold``: the best sample per prompt, kept only above a score threshold.

Best-of-K keeps a sample for every prompt even when all K are bad (paper 3.2.3: the
policy is fine-tuned on what the reward model ranks first). This selector keeps a
prompt's best sample only when its score beats ``threshold``, so fine-tuning data is
never a reply the reward model itself rates poorly. Scores are the pipeline's combined
reward after whitening (``reward.whiten``, on by default): 0 is the mean reward of the
reward stage's held-out replies, 1 one standard deviation above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from llama2rlhf.config import SelectorConfig
from llama2rlhf.sampling.candidates import Candidate

NAME = "example_threshold"


@dataclass
class ExampleThresholdConfig(SelectorConfig):
    name: str = NAME
    # keep a prompt's best sample only when its score is above this
    threshold: float = 0.0
    # compete with the samples kept in earlier rounds (re-scored by the newest reward
    # model), as the default best_over_history does; false: this round's samples only
    over_history: bool = True


def threshold_select(candidates: Sequence[Candidate], history: Sequence[Candidate], *,
                     threshold: float = 0.0, over_history: bool = True) -> list[Candidate]:
    """Per prompt (first-seen order), the highest-scoring candidate if its score > ``threshold``.

    The selector contract (:func:`llama2rlhf.plugins.hookspecs.register_selectors`):
    ``select(candidates, history, **options)``, where ``options`` are the extra keys of the
    ``selector`` config node. Ties keep the earlier candidate, so a sample kept in an
    earlier round (history comes first) is not replaced by an equal newcomer.
    """
    if math.isnan(threshold):
        raise ValueError("selector.threshold is NaN")
    best: dict[str, Candidate] = {}
    for c in [*history, *candidates] if over_history else candidates:
        if math.isnan(c.score):
            raise ValueError(f"candidate of prompt {c.prompt_id!r} (round {c.round}) has a NaN score")
        if c.prompt_id not in best or c.score > best[c.prompt_id].score:
            best[c.prompt_id] = c
    return [c for c in best.values() if c.score > threshold]
