"""The run directory and its state: what a stage reads, writes and records.

Layout under Hydra's run dir (docs/design.md, "Run directory")::

    state.json        finished stages and artifact paths, rewritten atomically
    summary.json      the numbers a person reads first, rewritten after every stage
    metrics.jsonl     one line per logged metric record
    base/             the starting model and tokenizer
    sft/ reward/      one folder per stage (round k: round_k/<stage>/)

Under ``accelerate launch`` every process holds a RunContext, and the main process alone
writes these files (``llama2rlhf.runtime.distributed``); the others keep the same state in memory.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama2rlhf.data.jsonl import write_json
from llama2rlhf.runtime import distributed
from llama2rlhf.runtime.seeding import stage_seed

STATE_VERSION = 1


@dataclass
class RunState:
    """``state.json``: which stages are done and where their outputs are."""

    path: Path
    done: list[str] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "RunState":
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != STATE_VERSION:
            raise RuntimeError(f"{path}: state version {data.get('version')!r}, expected {STATE_VERSION}")
        return cls(path, list(data["done"]), dict(data["artifacts"]), list(data.get("events", [])))

    def save(self) -> None:
        if not distributed.is_main_process():
            return
        write_json(self.path, {"version": STATE_VERSION, "done": self.done, "artifacts": self.artifacts,
                               "events": self.events}, default=str)

    def record(self, key: str, event: str, **info: Any) -> None:
        """Note something that happened in a stage (a guard that stopped training, say)."""
        self.events.append({"stage": key, "event": event, "time": time.time(), **info})
        self.save()

    def is_done(self, key: str) -> bool:
        return key in self.done

    def mark_done(self, key: str, artifacts: dict[str, str] | None = None) -> None:
        self.artifacts.update(artifacts or {})
        if key not in self.done:
            self.done.append(key)
        self.events.append({"stage": key, "event": "done", "time": time.time()})
        self.save()


@dataclass
class RunContext:
    """What every stage receives: the config, the run directory, state and summary."""

    cfg: Any  # the resolved DictConfig
    run_dir: Path
    state: RunState
    summary: dict[str, Any]
    world: Any = None  # ToyWorld when data.source == "toy"
    round: int = 0
    current_stage: str = ""  # the name the running stage runs as (see pipeline.run_stage)

    @classmethod
    def open(cls, cfg: Any, run_dir: Path, world: Any = None) -> "RunContext":
        run_dir.mkdir(parents=True, exist_ok=True)
        state = RunState.load(run_dir / "state.json")
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
        return cls(cfg, run_dir, state, summary, world)

    def stage_key(self, stage: str) -> str:
        return stage if self.round == 0 else f"round_{self.round}/{stage}"

    def seed(self, purpose: str = "") -> int:
        """The running stage's seed (``llama2rlhf.runtime.seeding``), or with ``purpose`` the
        seed of an independent stream inside it."""
        return stage_seed(self.cfg.seed, self.current_stage, self.round, purpose)

    def stage_dir(self, stage: str | None = None) -> Path:
        """The folder of ``stage`` in this round; by default the running stage's."""
        d = self.run_dir / self.stage_key(stage or self.current_stage)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def round_summary(self) -> dict[str, Any]:
        """This round's entry of ``summary["rounds"]`` (a list, round k at index k - 1)."""
        rounds = self.summary.setdefault("rounds", [])
        while len(rounds) < self.round:
            rounds.append({"round": len(rounds) + 1})
        return rounds[self.round - 1]

    def round_dir(self, round: int) -> Path:
        return self.run_dir / f"round_{round}"

    def sync_from_main(self) -> None:
        """Take the main process's state and summary (a stage records some of it in work that
        only the main process does); nothing to do in a single process."""
        if not distributed.is_distributed():
            return
        done, artifacts, events, summary = distributed.from_main(
            (self.state.done, self.state.artifacts, self.state.events, self.summary))
        self.state.done, self.state.artifacts, self.state.events, self.summary = done, artifacts, events, summary

    def record_data(self, use: str, report: Any) -> None:
        """What loading the ``use`` data (sft, preferences, preference_eval, prompts) took,
        skipped and repaired (a ``llama2rlhf.data.formats.LoadReport``), in summary.json's
        ``data`` entry: ``rows``, ``skipped_rows`` and ``repaired_rows``, each by use."""
        data = self.summary.setdefault("data", {})
        data.setdefault("rows", {})[use] = {"file": report.file, "rows": report.rows, "kept": report.kept}
        data.setdefault("skipped_rows", {})[use] = report.skipped
        data.setdefault("repaired_rows", {})[use] = report.repaired

    def artifact(self, name: str) -> str:
        if name not in self.state.artifacts:
            raise KeyError(
                f"no artifact {name!r} in {self.state.path} yet; produced so far: "
                f"{', '.join(self.state.artifacts) or '(none)'} - check the order of pipeline.stages"
            )
        return self.state.artifacts[name]

    def save_summary(self) -> None:
        if distributed.is_main_process():
            write_json(self.run_dir / "summary.json", self.summary, default=str)

    def log_metrics(self, prefix: str, metrics: dict[str, Any]) -> None:
        if not distributed.is_main_process():
            return
        # an append-only log, one record per call: appending keeps every earlier record
        # whatever happens to this one, where rewriting the file would risk them all
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"prefix": prefix, "round": self.round, "time": time.time(), **metrics}, default=str))
            f.write("\n")
