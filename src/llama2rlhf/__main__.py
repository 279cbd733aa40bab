"""The command line: a Hydra app, plus ``llama2rlhf plugins``.

``llama2rlhf [overrides...]`` runs the pipeline (Hydra composes ``conf/`` shipped inside
the package, so it works from any directory). ``llama2rlhf plugins`` lists the installed
plugins and what each registers; ``llama2rlhf accelerate-config NAME`` prints the path of
a shipped accelerate config, for ``accelerate launch --config_file``. torch and trl are
imported only once a stage runs. A run ends by writing ``report.md``;
``llama2rlhf-report RUN_DIR`` (``evaluation/report.py``) rebuilds it.
"""

from __future__ import annotations

import json
import logging
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
    picked = [a for a in argv if a.lstrip("+~").startswith("accelerate=")]
    if picked:
        # Hydra lists conf/accelerate as a config group, but its files configure the launcher
        print(f"llama2rlhf: {picked[0]}: conf/accelerate holds configs for `accelerate launch --config_file`, not "
              "pipeline options; run: accelerate launch --config_file \"$(llama2rlhf accelerate-config NAME)\" "
              "-m llama2rlhf ...", file=sys.stderr)
        sys.exit(2)
    from llama2rlhf.plugins import PluginError

    try:
        _hydra_main()
    except PluginError as exc:
        print(f"llama2rlhf: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
