"""The data files a run reads, checked before any stage trains (a check of
``llama2rlhf.recipe.validate``).

:func:`data_problems` loads every file the planned stages read (``llama2rlhf.data.inputs``),
row by row with the stage's loader and ``data.on_bad_row``: the first bad row of each file is
reported as the stage would report it (``file:line: field 'f': reason``), a missing, empty or
unusable file (every row skipped by rule) with its key and path. Rows skipped by rule
(identical replies, empty replies) are counted and logged as the stage logs them, and with
``data.on_bad_row=error`` each one is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama2rlhf.data.errors import InputError
from llama2rlhf.data.inputs import OPTIONAL, first_readers, input_path, load_input

if TYPE_CHECKING:
    from datasets import Dataset

# the stages that draw prompts held out for evaluation, and those that draw training prompts
HELD_OUT_PROMPTS = ("evaluate", "ppo", "rloo", "grpo")
TRAINING_PROMPTS = ("collect", "rejection_sampling", "ppo", "rloo", "grpo")


def data_problems(cfg: Any, run_dir: Path, stages: list[str]) -> list[InputError]:
    """Every data file the planned ``stages`` read, loaded row by row as the stage will (the
    first bad row of each file, an empty file, a file left empty by the skip rules, a key not
    set), and whether what they hold is enough: two preference pairs at least when the
    held-out ones are drawn from them, prompts on both sides of the held-out share when
    stages draw from both."""
    if cfg.data.source == "toy":
        return []
    from llama2rlhf.data.formats import LoadReport

    problems: list[InputError] = []
    for key, stage in first_readers(stages).items():
        if key in OPTIONAL and input_path(cfg, key) is None:
            continue
        try:
            rows = load_input(cfg, key, report=LoadReport(), stage=stage)
        except InputError as err:
            problems.append(err)
            continue
        problems.extend(_enough(cfg, key, rows, stages))
    return problems


def _enough(cfg: Any, key: str, rows: "Dataset", stages: list[str]) -> list[InputError]:
    path = input_path(cfg, key)
    if key == "preference_path" and input_path(cfg, "preference_eval_path") is None:
        from llama2rlhf.data.formats import limited

        n = len(limited(list(range(len(rows))), cfg, "preferences"))
        n_eval = max(1, int(n * cfg.data.eval_fraction))  # as the reward stage splits them
        if n - n_eval < 1:
            return [InputError(f"data.preference_path={path}: {n} usable preference pair(s), and the reward stage "
                               f"holds out {n_eval} of them (data.eval_fraction={cfg.data.eval_fraction}, at least "
                               "one), leaving none to train on: give more pairs, a smaller data.eval_fraction, or "
                               "the held-out pairs in data.preference_eval_path")]
    if key == "prompt_path":
        from llama2rlhf.data.round_prompts import heldout_share

        fraction = cfg.data.eval_fraction
        held_out = sum(heldout_share(messages, fraction) for messages in rows["prompt"])
        sides = [("held out for evaluation", held_out, HELD_OUT_PROMPTS),
                 ("left for training", len(rows) - held_out, TRAINING_PROMPTS)]
        for what, n, readers in sides:
            if n == 0 and any(s in stages for s in readers):
                return [InputError(f"data.prompt_path={path}: none of its {len(rows)} prompts is {what} "
                                   f"(data.eval_fraction={fraction} of them, picked by a hash of the prompt), which "
                                   f"the {next(s for s in readers if s in stages)} stage draws from: give more "
                                   "prompts, or change data.eval_fraction")]
    return []
