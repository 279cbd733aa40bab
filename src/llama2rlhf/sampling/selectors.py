"""Built-in selectors for rejection sampling (paper 3.2.3).

``best_of_k``: per prompt, the highest-scoring of this round's K samples (RLHF-V1..V3).
``best_over_history`` (default): per prompt, the highest-scoring sample over this round and
every earlier round's kept samples, all scored by the newest reward model. Llama 2 did this
from RLHF-V4 on, after finding that sampling only from the latest model lost capabilities
("we incorporated top-performing samples from all prior iterations").
"""

from __future__ import annotations

from typing import Sequence

from llama2rlhf import hookimpl
from llama2rlhf.sampling.candidates import Candidate


def _best_per_prompt(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Highest score per prompt, prompts in first-seen order; ties keep the earliest candidate,
    so a sample already kept in an earlier round is not replaced by an equal newcomer."""
    best: dict[str, Candidate] = {}
    for c in candidates:
        if c.prompt_id not in best or c.score > best[c.prompt_id].score:
            best[c.prompt_id] = c
    return list(best.values())


def best_of_k(candidates: Sequence[Candidate], history: Sequence[Candidate]) -> list[Candidate]:
    return _best_per_prompt(candidates)


def best_over_history(candidates: Sequence[Candidate], history: Sequence[Candidate]) -> list[Candidate]:
    # history first: on a tie the earlier keeper stays
    return _best_per_prompt([*history, *candidates])


@hookimpl(trylast=True)
def register_selectors(register):
    register("best_of_k", best_of_k)
    register("best_over_history", best_over_history)
