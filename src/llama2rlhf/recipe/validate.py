"""Checking a whole run before its first stage trains.

A bad key, file, model path or plugin option found after SFT costs the SFT; at real size
that is GPU-hours. :func:`validate` therefore runs every check that needs no training first,
for the stages the run will run (:func:`llama2rlhf.recipe.pipeline.stages_used`), and returns
every problem it finds, each an :class:`~llama2rlhf.data.errors.InputError` whose one-line
message names the key, ``file:line`` and field, plugin or path.

The checks, in order (each is a function ``(cfg, run_dir, stages) -> Iterable[InputError]``
in :data:`CHECKS`, in tiers):

* the config's own rules, the values a stage would otherwise take silently or fail on
  late (``llama2rlhf.config.checks``);
* the plugins every planned stage selects, their options against their schema;
* every input file the planned stages read, row by row, as the stages will load them
  (``llama2rlhf.data.checks``), and the labels people wrote for ``annotator=file``;
* the models the run starts from (local folders and Hub ids), then the lengths their
  tokenizers give the training data (``llama2rlhf.runtime.model_checks``, ``length_checks``);
* the run directory a resumed run continues (``state.json`` and its artifacts).

``llama2rlhf --validate [overrides]`` runs only this; a run runs it first, and stops with
every problem listed (exit code 2) before the run directory is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from llama2rlhf import plugins
from llama2rlhf.config.checks import config_problems
from llama2rlhf.data.checks import data_problems
from llama2rlhf.data.errors import InputError
from llama2rlhf.recipe.annotators import label_problems
from llama2rlhf.recipe.pipeline import check_run_directory
from llama2rlhf.runtime.length_checks import length_problems
from llama2rlhf.runtime.model_checks import model_problems

Check = Callable[[Any, Path, list[str]], Iterable[InputError]]

# Tiers: a tier runs only when the ones before it found nothing, so that a file is read
# only once the config that names it is sound, and lengths are measured only once the files
# and models are; one problem is then not reported twice in other words.
CHECKS: list[list[Check]] = [
    [config_problems, plugins.option_problems],
    [data_problems, label_problems, model_problems, check_run_directory],
    [length_problems],
]


def validate(cfg: Any, run_dir: Path) -> list[InputError]:
    """Every problem the checks find in ``cfg`` for a run in ``run_dir`` (the first tier of
    :data:`CHECKS` that finds any); an empty list when the run can start."""
    from llama2rlhf.recipe.pipeline import stages_used

    try:
        stages = stages_used(cfg)
    except InputError as exc:
        return [exc]
    for tier in CHECKS:
        problems = [problem for check in tier for problem in check(cfg, run_dir, stages)]
        if problems:
            return problems
    return []


VALIDATE_ONLY = False  # set by ``llama2rlhf --validate``: check, report, and exit


def report_and_exit(problems: list[InputError]) -> None:
    """Print one ``llama2rlhf: <problem>`` line per problem on stderr and exit with code 2
    (nothing when there are none). With ``LLAMA2RLHF_DEBUG=1`` the first problem is raised
    instead, traceback and all."""
    import sys

    from llama2rlhf.data.errors import BAD_INPUT_EXIT
    from llama2rlhf.runtime import distributed

    if not problems:
        return
    if debug():
        raise problems[0]
    if distributed.is_main_process():
        for problem in problems:
            print(f"llama2rlhf: {problem}", file=sys.stderr)
    sys.exit(BAD_INPUT_EXIT)


def debug() -> bool:
    import os

    from llama2rlhf.data.errors import DEBUG_ENV

    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _task_config(config: Any) -> Any:
    """The job's config as the task function gets it: without the ``hydra`` node, resolved."""
    from omegaconf import OmegaConf, open_dict, read_write

    task = config.copy()
    with read_write(task), open_dict(task):
        del task["hydra"]
    OmegaConf.resolve(task)
    return task


def _validate_job(config: Any, run_dir: str) -> None:
    import sys

    task = _task_config(config)
    problems = validate(task, Path(run_dir))
    report_and_exit(problems)
    if VALIDATE_ONLY:
        from llama2rlhf.recipe.pipeline import stages_used

        print(f"llama2rlhf: valid: {task.pipeline.rounds} round(s); stages {', '.join(stages_used(task))}; "
              f"run directory {run_dir}", file=sys.stderr)
        sys.exit(0)


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency; keeps this module importable alone
    Callback = object  # type: ignore[assignment,misc]


class ValidateFirst(Callback):  # type: ignore[misc,valid-type]
    """The Hydra callback (``hydra.callbacks.validate`` in ``conf/config.yaml``) that runs
    :func:`validate` before Hydra writes anything into the run directory (a single run), or
    into each job's fresh directory before it starts (``--multirun``)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        _validate_job(config, OmegaConf.select(config, "hydra.run.dir"))

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            _validate_job(config, HydraConfig.get().runtime.output_dir)
