"""The command line: a Hydra app, plus ``llama2rlhf plugins``.

``llama2rlhf [overrides...]`` runs the pipeline (Hydra composes ``conf/`` shipped inside
the package, so it works from any directory). ``llama2rlhf plugins`` lists the installed
plugins and what each registers; ``llama2rlhf accelerate-config NAME`` prints the path of
a shipped accelerate config, for ``accelerate launch --config_file``; ``llama2rlhf chat``,
``generate`` and ``export`` use a run's models (``recipe/use.py``). torch and trl are
imported only once a stage runs. A run ends by writing ``report.md``;
``llama2rlhf-report RUN_DIR`` (``evaluation/report.py``) rebuilds it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("llama2rlhf")

AWAITING_LABELS_EXIT = 3  # the run stopped to wait for human labels (annotator=file)


def _hydra_main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from llama2rlhf.config import store_configs
    from llama2rlhf.evaluation.progress import gatt_table, progress_table
    from llama2rlhf.evaluation.report import REPORT

    store_configs()

    @hydra.main(config_path="config/conf", config_name="config", version_base="1.3")
    def app(cfg: DictConfig) -> None:
        from llama2rlhf.recipe.annotation import AwaitingLabels
        from llama2rlhf.recipe.pipeline import run
        from llama2rlhf.runtime import distributed

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        # Hydra logs INFO from every library; accelerate's per-step gather notices inside
        # TRL's PPO loop would drown the pipeline's own
        logging.getLogger("accelerate").setLevel(logging.WARNING)
        main_process = distributed.is_main_process()
        if not main_process:
            # under accelerate launch the main process reports; the others only warn (as
            # transformers' own log_level_replica does)
            log.setLevel(logging.WARNING)
        OmegaConf.resolve(cfg)
        try:
            ctx = run(cfg, run_dir)
        except AwaitingLabels as waiting:
            # not a failure: the round goes on once people have labelled the pairs
            if main_process:
                print(f"llama2rlhf: waiting for labels. {waiting}\nRun directory: {run_dir}", file=sys.stderr)
            sys.exit(AWAITING_LABELS_EXIT)
        except Exception as exc:
            _stop(exc, run_dir, main_process)
        if not main_process:
            return
        table = progress_table(ctx.summary)
        if table:
            print(table)
        if gatt_table(ctx.summary):
            print(gatt_table(ctx.summary))
        print(f"summary: {ctx.run_dir / 'summary.json'}")
        print(f"report: {ctx.run_dir / REPORT}")

    app()


def _stop(exc: Exception, run_dir: Path, main_process: bool) -> None:
    """End a run that raised: bad input in one line (exit 2), anything else in one line and
    exit 1; the traceback goes to the run's log file, and to the terminal too with
    ``LLAMA2RLHF_DEBUG=1``."""
    from llama2rlhf.data.errors import BAD_INPUT_EXIT, InputError, one_line
    from llama2rlhf.recipe.validate import debug

    _log_traceback(exc)
    if debug():
        raise exc
    if main_process:
        if isinstance(exc, InputError):
            print(f"llama2rlhf: {exc}", file=sys.stderr)
        else:
            print(f"llama2rlhf: failed: {type(exc).__name__}: {one_line(exc)} (the traceback is in "
                  f"{run_dir / LOG_FILE}; LLAMA2RLHF_DEBUG=1 prints it)", file=sys.stderr)
    sys.exit(BAD_INPUT_EXIT if isinstance(exc, InputError) else 1)


LOG_FILE = "llama2rlhf.log"  # hydra.job.name in conf/config.yaml


def _log_traceback(exc: BaseException) -> None:
    """The traceback into the log files Hydra set up (not the console)."""
    record = logging.LogRecord("llama2rlhf", logging.ERROR, __file__, 0, "the run stopped: %s: %s",
                               (type(exc).__name__, exc), (type(exc), exc, exc.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _config_error(exc: BaseException) -> str | None:
    """One line for Hydra's and OmegaConf's composition errors (a misspelt key, a value of
    the wrong type, an unknown config group option), naming the key; None for others."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from llama2rlhf.data.errors import one_line

    cause = exc
    while not isinstance(cause, OmegaConfBaseException) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        msg = one_line(getattr(cause, "msg", cause)).split(" full_key:")[0]
        return f"{cause.full_key}: {msg} (llama2rlhf --cfg job lists every key)"
    if isinstance(exc, (HydraException, MissingConfigException, OmegaConfBaseException)):
        return one_line(exc).split(" Config search path:")[0]
    return None


def _plugins_command(argv: list[str]) -> int:
    from llama2rlhf import plugins

    if argv and argv[0] in ("-h", "--help"):
        print("usage: llama2rlhf plugins\n\nList installed plugins (JSON) and what each registers.")
        return 0
    print(json.dumps(plugins.describe(), indent=2))
    return 0


def accelerate_configs() -> dict[str, Path]:
    """The accelerate configs shipped in ``conf/accelerate``, by name."""
    folder = Path(__file__).resolve().parent / "config" / "conf" / "accelerate"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def _accelerate_config_command(argv: list[str]) -> int:
    configs = accelerate_configs()
    usage = ("usage: llama2rlhf accelerate-config NAME\n\nPrint the path of a shipped accelerate config, for "
             "`accelerate launch --config_file`.\nNAME: " + ", ".join(configs))
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    if len(argv) != 1:
        print(usage, file=sys.stderr)
        return 2
    if argv[0] not in configs:
        print(f"llama2rlhf: no accelerate config {argv[0]!r}; choose one of {', '.join(configs)}", file=sys.stderr)
        return 2
    print(configs[argv[0]])
    return 0


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["plugins"]:
        sys.exit(_plugins_command(argv[1:]))
    if argv[:1] == ["accelerate-config"]:
        sys.exit(_accelerate_config_command(argv[1:]))
    if argv[:1] in (["chat"], ["generate"], ["export"]):
        from llama2rlhf.recipe import use

        sys.exit(use.main(argv[0], argv[1:]))
    picked = [a for a in argv if a.lstrip("+~").startswith("accelerate=")]
    if picked:
        # Hydra lists conf/accelerate as a config group, but its files configure the launcher
        print(f"llama2rlhf: {picked[0]}: conf/accelerate holds configs for `accelerate launch --config_file`, not "
              "pipeline options; run: accelerate launch --config_file \"$(llama2rlhf accelerate-config NAME)\" "
              "-m llama2rlhf ...", file=sys.stderr)
        sys.exit(2)
    from llama2rlhf.data.errors import BAD_INPUT_EXIT, InputError
    from llama2rlhf.recipe import validate

    if "--validate" in argv:
        if any(a in ("-m", "--multirun") for a in argv):
            print("llama2rlhf: --validate checks one run; drop --multirun and give one value per key", file=sys.stderr)
            sys.exit(BAD_INPUT_EXIT)
        validate.VALIDATE_ONLY = True
        sys.argv = [sys.argv[0], *(a for a in argv if a != "--validate")]
    # Hydra prints its own errors in many lines; with its full-error switch it raises them,
    # and each becomes one line here (restored after: it would reach child processes)
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except Exception as exc:
        line = str(exc) if isinstance(exc, InputError) else _config_error(exc)
        if line is None or validate.debug():
            raise
        print(f"llama2rlhf: {line}", file=sys.stderr)
        sys.exit(BAD_INPUT_EXIT)
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


if __name__ == "__main__":
    main()
