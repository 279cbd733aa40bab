"""The data files a run reads, by config key, and the one way every stage loads them.

``data.source=files`` names four inputs (:data:`INPUTS`); each built-in stage reads some of
them (:data:`STAGE_READS`). :func:`load_input` loads one with its loader, the
``data.on_bad_row`` rule and its split, for the stages and for the check that reads every
file before the run starts (``llama2rlhf.data.checks``), so both report a bad row in the same
words (``file:line: field 'f': reason``) and a problem with the whole file naming the key
and the path (``data.prompt_path=/x/y.jsonl: no such file or folder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from llama2rlhf.data.errors import ConfigError, DataError, InputError

if TYPE_CHECKING:
    from datasets import Dataset


@dataclass(frozen=True)
class Input:
    """One of the ``data.*_path`` keys: its loader, the name its load is recorded under in
    summary.json (``data.rows``), whether it reads ``data.eval_split``, and what it holds."""

    loader: str  # a loader of llama2rlhf.data.formats
    use: str
    evaluation: bool
    holds: str


INPUTS: dict[str, Input] = {
    "sft_path": Input("load_sft", "sft", False, "demonstrations for SFT, in a TRL format (e.g. {\"messages\": [...]})"),
    "preference_path": Input("load_preferences", "preferences", False,
                             "preference pairs for the reward models ({\"chosen\", \"rejected\"} rows)"),
    "preference_eval_path": Input("load_preferences", "preference_eval", True,
                                  "held-out preference pairs for reward-model accuracy"),
    "prompt_path": Input("load_prompts", "prompts", False,
                         "the prompts the RLHF rounds sample from and evaluate on ({\"prompt\": ...} rows)"),
}

# the inputs each built-in stage reads with data.source=files (preference_eval_path only when set)
_PROMPTS = ("prompt_path",)
STAGE_READS: dict[str, tuple[str, ...]] = {
    "sft": ("sft_path",),
    "reward": ("preference_path", "preference_eval_path"),
    "collect": _PROMPTS,
    "rejection_sampling": _PROMPTS,  # and Ghost Attention's user turns
    "ppo": _PROMPTS,
    "rloo": _PROMPTS,
    "grpo": _PROMPTS,
    "evaluate": _PROMPTS,
}
OPTIONAL = ("preference_eval_path",)


def first_readers(stages: Iterable[str]) -> dict[str, str]:
    """Each input key the ``stages`` read -> the first of them that reads it."""
    out: dict[str, str] = {}
    for stage in stages:
        for key in STAGE_READS.get(stage, ()):
            out.setdefault(key, stage)
    return out


def input_path(cfg: Any, key: str) -> str | None:
    """``data.<key>`` as the user set it; None when unset (null, or ``???`` left in a config)."""
    from omegaconf import OmegaConf

    data = cfg.data
    if OmegaConf.is_config(data) and key in data and OmegaConf.is_missing(data, key):
        return None
    value = getattr(data, key, None)
    return None if value is None or str(value) == "" else str(value)


def unset_problem(key: str, stage: str) -> ConfigError:
    return ConfigError(f"data.{key}", f"not set; with data.source=files the {stage} stage reads "
                                      f"{INPUTS[key].holds} from it: a JSON Lines file, a JSON array or a data set "
                                      f"(e.g. data.{key}=data/{key.removesuffix('_path')}.jsonl)")


def load_input(cfg: Any, key: str, *, report: Any = None, stage: str = "") -> "Dataset":
    """The rows of ``data.<key>`` (a key of :data:`INPUTS`), loaded with its loader, the
    ``data.on_bad_row`` rule and the split it reads, as every stage loads it; ``report``: the
    :class:`~llama2rlhf.data.formats.LoadReport` to fill. A row error is the loader's
    (``file:line: field 'f': reason``); a problem with the whole file or the key names the
    key too (``data.sft_path=/x.jsonl: no rows; the file is empty``)."""
    from llama2rlhf.data import formats
    from llama2rlhf.data.sources import where

    spec = INPUTS[key]
    path = input_path(cfg, key)
    if path is None:
        raise unset_problem(key, stage or next(s for s, keys in STAGE_READS.items() if key in keys))
    loader: Callable[..., Dataset] = getattr(formats, spec.loader)
    try:
        return loader(path, on_bad_row=cfg.data.on_bad_row, report=report,
                      **where(cfg.data, evaluation=spec.evaluation))
    except DataError as err:
        if err.line is not None:
            raise
        raise InputError(f"data.{key}={err}") from err
