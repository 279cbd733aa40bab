"""Every stage's random numbers come from its own seed, derived from the run's ``seed``, the
stage (the name it runs as: ``rejection_sampling_after_ppo``, say) and the round.

The pipeline seeds Python's, NumPy's, torch's and CUDA's generators with it right before a
stage runs (``llama2rlhf.recipe.pipeline.run_stage``), and the stage's trainers get it as
their ``seed`` and ``data_seed``. A stage's result then depends on the run's seed and on
its inputs alone, not on what ran before it in the process: a stage redone after a resume
gives what the uninterrupted run gave. A stage that needs several independent streams
(PPO's held-out evaluation, the same before and after training) derives each from the
same seed with a ``purpose``.

Sampling draws from a seed per prompt (:func:`item_seeds`), keyed by the prompt's id, so a
prompt's samples are the same whichever process samples it and whatever other prompts
share its batch: one process or eight give the same samples.

The seed is a hash of its parts' text (sha256), not ``hash()``, whose value for a string
changes with every process (``PYTHONHASHSEED``); under ``accelerate launch`` every process
derives the same one, and a trainer that needs per-process streams adds the process index
itself.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence


def stage_seed(seed: int, stage: str, round: int, purpose: str = "") -> int:
    """The seed, in [0, 2**32), of ``stage`` in ``round`` of a run seeded with ``seed``;
    ``purpose`` names an independent stream inside the stage."""
    text = "\x1f".join(map(str, (seed, stage, round, purpose)))
    # 32 bits: NumPy takes no larger seed
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def item_seeds(seed: int, keys: Sequence[Any]) -> list[int]:
    """One seed, in [0, 2**63), per key (a prompt's id, a dialogue and its turn), from the
    stream ``seed``: each depends only on ``seed`` and its own key."""
    return [int.from_bytes(hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()[:8], "big") >> 1 for key in keys]


def seed_everything(seed: int) -> None:
    """Python's, NumPy's, torch's and every accelerator's generators, all from ``seed``."""
    from transformers import set_seed

    set_seed(seed)
