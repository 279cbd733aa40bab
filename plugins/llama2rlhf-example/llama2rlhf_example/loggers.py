"""``logger=example_events``: an observer that keeps a JSON Lines log of the run and flags plateaus.

The observer hooks (``on_stage_start``, ``on_stage_end``, ``on_round_end``) are called for
every run, whatever is selected, so an observer decides itself when it is on: this one,
like the built-in ``wandb`` logger, only when the run selects it (``logger=example_events``).

Each event is one line of ``<run dir>/example_events.jsonl`` (``logger.path``): a stage
starting, a stage ending with the numbers it returned, and the end of each round with an
early-stopping check: has ``logger.watch`` (a key of the round's summary entry, dotted for
nested ones, higher is better) improved by more than ``logger.min_delta`` on every
earlier round within ``logger.patience`` rounds? When it has not, the event says
``"plateau": true`` and a warning suggests stopping; the run itself goes on. The check
reads the earlier rounds back from the file, so it survives a resumed run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from llama2rlhf.config import LoggerConfig

NAME = "example_events"
log = logging.getLogger(__name__)


@dataclass
class ExampleEventsConfig(LoggerConfig):
    name: str = NAME
    path: str = "example_events.jsonl"  # relative paths are under the run directory
    watch: str = "gold_reward"  # a key of the round's summary entry, higher is better
    min_delta: float = 0.0
    patience: int = 1  # rounds without improvement before the plateau flag


def active(cfg: Any) -> bool:
    return cfg.logger.name == NAME


def events_path(ctx) -> Path:
    path = Path(ctx.cfg.logger.path)
    return path if path.is_absolute() else ctx.run_dir / path


def numbers(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested metrics dict, keys joined with dots; text and lists left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def lookup(summary: dict[str, Any], dotted: str) -> Optional[float]:
    value: Any = summary
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def plateau_check(values: Sequence[Optional[float]], min_delta: float, patience: int) -> dict[str, Any]:
    """Early stopping's test over one metric per round (the last is this round's).

    A round improves when its value beats the best of all rounds before it by more than
    ``min_delta`` (the first round with a value always does); ``plateau`` once the last
    ``patience`` rounds have not improved. A round without a value does not improve.
    """
    if patience < 1:
        raise ValueError(f"logger.patience must be >= 1, got {patience}")
    best: Optional[float] = None
    stale = 0
    for value in values:
        if value is not None and (best is None or value > best + min_delta):
            stale = 0
        else:
            stale += 1
        if value is not None:
            best = value if best is None else max(best, value)
    return {"value": values[-1] if values else None, "best": best, "rounds_without_improvement": stale,
            "plateau": stale >= patience}


def write(ctx, event: dict[str, Any]) -> None:
    from llama2rlhf.data.jsonl import append_jsonl

    path = events_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(path, [{"time": time.time(), **event}])


def on_stage_start(ctx, stage: str, round: int) -> None:
    if active(ctx.cfg):
        write(ctx, {"event": "stage_start", "stage": stage, "key": ctx.stage_key(ctx.current_stage or stage),
                    "round": round})


def on_stage_end(ctx, stage: str, round: int, metrics: dict[str, Any]) -> None:
    if active(ctx.cfg):
        write(ctx, {"event": "stage_end", "stage": stage, "key": ctx.stage_key(ctx.current_stage or stage),
                    "round": round, "metrics": numbers(metrics)})


def on_round_end(ctx, round: int, summary: dict[str, Any]) -> None:
    if not active(ctx.cfg):
        return
    from llama2rlhf.data.jsonl import read_jsonl

    options = ctx.cfg.logger
    path = events_path(ctx)
    earlier: dict[int, Optional[float]] = {}
    if path.exists():
        for _, event in read_jsonl(path):
            if event.get("event") == "round_end" and event["round"] < round:
                earlier[event["round"]] = event["value"]  # a resumed round logged twice: the last wins
    value = lookup(summary, options.watch)
    check = plateau_check([*(earlier[r] for r in sorted(earlier)), value], options.min_delta, options.patience)
    if value is None:
        log.warning("logger.watch=%s is not in round %d's summary (keys: %s); the plateau check counts it as "
                    "no improvement", options.watch, round, ", ".join(sorted(numbers(summary))))
    elif check["plateau"]:
        log.warning("%s has not improved by more than %g for %d round(s) (best %.4g); consider stopping the run",
                    options.watch, options.min_delta, check["rounds_without_improvement"], check["best"])
    write(ctx, {"event": "round_end", "round": round, "watch": options.watch, **check,
                "summary": numbers(summary)})


def on_run_end(ctx, summary: dict[str, Any]) -> None:
    # the end-of-run numbers (``summary["final"]``), whatever the number of rounds
    if active(ctx.cfg):
        write(ctx, {"event": "run_end", "final": numbers(summary.get("final", {}))})
