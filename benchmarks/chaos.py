"""Chaos: kill a run at random moments, resume it, and check that nothing was lost.

    python benchmarks/chaos.py [--kills 10] [--seed 0] [--workdir DIR] [--keep]
                               [--stages sft,collect,...]

Runs a small full pipeline (the toy world, two rounds, rejection sampling with Ghost
Attention, PPO in round 1, evaluation, ``logger=none``: :data:`CONFIG`) once without
interruption, the reference. Then ``--kills`` times: starts the same command in a new run
directory as a subprocess in a process group of its own, SIGKILLs the whole group while a
chosen stage runs, and resumes it (the same command, the same run directory) to the end.

Where each kill lands: kill i aims at the i-th kind of stage in turn (``sft``, ``reward``,
``collect``, ``rejection_sampling``, ``ppo``, ``rejection_sampling_after_ppo``,
``evaluate``; ``--stages`` picks some), at one of its runs (its round) picked at random,
a random fraction of that stage's reference duration (summary.json ``timings``) after the
stage before it is recorded done in ``state.json`` (scaled by how fast this run has gone so
far against the reference, and cut short if the stage ends first). The stage actually
running at the kill is read from ``state.json`` then: the first planned stage not done.
A kill whose run ended before it is reported and not counted.

Each resumed run is compared with the reference:

* ``state.json``'s ``done`` list, in order;
* every JSON Lines file the run wrote (comparisons, pairs, candidates and kept samples,
  GAtt examples, held-out replies; not ``metrics.jsonl``, an append-only log), row by row:
  rows lost, duplicated or different;
* every number in ``summary.json`` except ``timings``, by key; the first differing key is
  reported.

Prints one row per kill (the stage aimed at, the stage the kill landed in, and whether the
resumed run is identical or its first difference, every difference listed under it); the
last line reads ``chaos: <identical>/<killed> identical``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

# the smallest run that keeps every kind of stage: SFT and the reward model, then two rounds
# of collect, reward, rejection sampling (Ghost Attention from round 1, the toy pipeline's
# start), PPO and rejection sampling again in round 1, and evaluation
CONFIG = [
    "logger=none",
    "data.n_sft=160", "data.n_pairs=160", "data.n_eval_pairs=40", "data.n_eval_prompts=16",
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2",
    "model.vocab_size=400", "sft.num_train_epochs=1", "reward_model.num_train_epochs=1",
    "eval.max_new_tokens=12",
    "pipeline.rounds=2", "pipeline.stages=[sft,reward]", "pipeline.ppo_rounds=[1]",
    "collect.n_prompts=24", "collect.max_new_tokens=10",
    "rs.n_prompts=16", "rs.k=3", "rs.search_prompts=6", "rs.temperatures=[0.8,1.3]", "rs.train.num_train_epochs=1",
    "rs.max_new_tokens=10",
    "ppo.n_prompts=16", "ppo.per_device_train_batch_size=8", "ppo.gradient_accumulation_steps=1",
    "ppo.num_mini_batches=1", "ppo.max_new_tokens=10", "ppo.checkpoint_steps=1",
    "gatt.n_dialogues=4", "gatt.max_turns=3", "gatt.max_new_tokens=10", "gatt.filter=false",
    "gatt.eval_dialogues=4", "gatt.eval_turns=3",
]
RUN_TIMEOUT = 1800  # seconds for one run to its end
POLL = 0.01  # seconds between reads of state.json while waiting to kill


def command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "llama2rlhf", f"hydra.run.dir={run_dir}", *CONFIG]


def run_to_end(run_dir: Path, log: Path) -> None:
    with open(log, "ab") as out:
        proc = subprocess.run(command(run_dir), stdout=out, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT,
                              start_new_session=True)
    if proc.returncode != 0:
        raise SystemExit(f"chaos: {' '.join(command(run_dir))} exited with {proc.returncode}; see {log}")


def state(run_dir: Path) -> dict[str, Any]:
    """``state.json`` (empty before there is one; it is replaced whole, never half written)."""
    try:
        return json.loads((run_dir / "state.json").read_text())
    except FileNotFoundError:
        return {}


def done(run_dir: Path) -> list[str]:
    return state(run_dir).get("done", [])


def done_times(run_dir: Path) -> dict[str, float]:
    """When each stage was recorded done (state.json's events)."""
    return {e["stage"]: e["time"] for e in state(run_dir).get("events", []) if e.get("event") == "done"}


def kind(key: str) -> str:
    """``round_2/rejection_sampling_after_ppo`` -> ``rejection_sampling_after_ppo``."""
    return key.rsplit("/", 1)[-1]


def is_stage(key: str) -> bool:
    return key != "base" and not (key.startswith("round_") and "/" not in key)


def kill_during(run_dir: Path, log: Path, target: str, after: str, fraction: float,
                reference: dict[str, float], durations: dict[str, float]) -> tuple[list[str], float] | None:
    """Start the run and SIGKILL its process group ``fraction`` of the way into stage
    ``target``, which starts when stage ``after`` is done: the reference's duration of
    ``target``, scaled by how much slower or faster this run went from ``base`` to ``after``
    than the reference did. Returns state.json's done list at the kill and the delay, or
    None when the run ended first."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(command(run_dir), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + RUN_TIMEOUT
        while after not in done(run_dir):
            if proc.poll() is not None or time.time() > deadline:
                return None
            time.sleep(POLL)
        started = time.time()
        now = done_times(run_dir)
        scale = 1.0
        if after != "base" and reference[after] > reference["base"]:
            scale = min(4.0, max(0.25, (now[after] - now["base"]) / (reference[after] - reference["base"])))
        delay = fraction * durations.get(target, 0.0) * scale
        # the stage may end sooner than aimed: then the kill lands just after it (reported as such)
        while time.time() - started < delay and target not in done(run_dir):
            time.sleep(POLL)
        if proc.poll() is not None:
            return None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        return done(run_dir), delay
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def landed(plan: list[str], finished: list[str]) -> str:
    """The stage running when the run was killed: the first planned key not done."""
    running = next((key for key in plan if key not in finished), None)
    if running is None:
        return "after the last stage"
    if running == "base":
        return "base (start-up)"
    if not is_stage(running):
        return f"{running} (end of round)"
    return running


# --- comparing two run directories ------------------------------------------------------


def jsonl_files(run_dir: Path) -> dict[str, list[str]]:
    """Every JSON Lines file the run wrote (not the metrics log), its rows as canonical JSON."""
    out = {}
    for path in sorted(run_dir.rglob("*.jsonl")):
        rel = path.relative_to(run_dir).as_posix()
        if rel == "metrics.jsonl" or rel.startswith((".hydra/", "wandb/")):
            continue
        out[rel] = [json.dumps(json.loads(line), sort_keys=True) for line in path.read_text().splitlines()
                    if line.strip()]
    return out


def numbers(value: Any, key: str = "") -> dict[str, float]:
    """Every number in ``value`` by its key path (``rounds.0.ppo.kl``)."""
    if isinstance(value, bool):
        return {key: float(value)}
    if isinstance(value, (int, float)):
        return {key: float(value)}
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {}
    out: dict[str, float] = {}
    for k, v in items:
        out.update(numbers(v, f"{key}.{k}" if key else str(k)))
    return out


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def differences(reference: Path, run: Path) -> list[str]:
    """Where ``run`` ends differently from ``reference``: the done list, the JSON Lines
    files row by row, the numbers of summary.json but timings, in that order."""
    out = []
    ref_done, run_done = done(reference), done(run)
    if ref_done != run_done:
        out.append(f"state.json done: {run_done} instead of {ref_done}")
    ref_files, run_files = jsonl_files(reference), jsonl_files(run)
    for rel in sorted(set(ref_files) | set(run_files)):
        if rel not in run_files:
            out.append(f"{rel}: missing")
            continue
        if rel not in ref_files:
            out.append(f"{rel}: not in the reference")
            continue
        ref_rows, run_rows = ref_files[rel], run_files[rel]
        if ref_rows == run_rows:
            continue
        want, got = Counter(ref_rows), Counter(run_rows)
        lost = sum((want - got).values())
        duplicated = sum(n - 1 for row, n in got.items() if n > 1 and n > want[row])
        if lost or duplicated or len(ref_rows) != len(run_rows):
            out.append(f"{rel}: {len(run_rows)} rows for {len(ref_rows)}, {lost} lost or changed, "
                       f"{duplicated} duplicated")
        else:
            first = next(i for i, (a, b) in enumerate(zip(ref_rows, run_rows, strict=True)) if a != b)
            out.append(f"{rel}: the same rows in another order (first at row {first + 1})")
    summaries = [json.loads((d / "summary.json").read_text()) for d in (reference, run)]
    for s in summaries:
        s.pop("timings", None)
    ref_numbers, run_numbers = (numbers(s) for s in summaries)
    for key, value in ref_numbers.items():
        if key not in run_numbers:
            out.append(f"summary.json {key}: missing (reference {value:.6g})")
        elif not same(value, run_numbers[key]):
            out.append(f"summary.json {key}: {run_numbers[key]:.6g} instead of {value:.6g}")
    out += [f"summary.json {key}: not in the reference" for key in run_numbers if key not in ref_numbers]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10, help="runs to kill and resume")
    ap.add_argument("--seed", type=int, default=0, help="seeds the choice of kill moments")
    ap.add_argument("--workdir", type=Path, default=None, help="where the run directories go (default: a temporary "
                                                              "folder)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories and logs")
    ap.add_argument("--stages", default=None,
                    help="comma-separated kinds of stage to aim the kills at, in turn (default: every kind the "
                         "run has)")
    args = ap.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="llama2rlhf-chaos-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    reference = workdir / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    started = time.perf_counter()
    run_to_end(reference, workdir / "reference.log")
    print(f"reference run: {time.perf_counter() - started:.0f} s, {reference}", flush=True)
    plan = done(reference)
    timings = json.loads((reference / "summary.json").read_text())["timings"]
    reference_times = done_times(reference)
    kinds = list(dict.fromkeys(kind(key) for key in plan if is_stage(key)))
    if args.stages:
        wanted = args.stages.split(",")
        unknown = [k for k in wanted if k not in kinds]
        if unknown:
            raise SystemExit(f"chaos: --stages {','.join(unknown)}: not in this run; its stages: {', '.join(kinds)}")
        kinds = wanted

    header = f"{'kill':>4}  {'aimed at':<36} {'after':>7}  {'landed in':<36} resumed"
    print(header, flush=True)
    print("-" * len(header), flush=True)
    killed = identical = 0
    for i in range(args.kills):
        target = rng.choice([key for key in plan if is_stage(key) and kind(key) == kinds[i % len(kinds)]])
        after = plan[plan.index(target) - 1]
        fraction = rng.uniform(0.05, 0.95)
        run_dir = workdir / f"kill_{i + 1}"
        shutil.rmtree(run_dir, ignore_errors=True)
        log = workdir / f"kill_{i + 1}.log"
        result = kill_during(run_dir, log, target, after, fraction, reference_times, timings)
        if result is None:
            print(f"{i + 1:>4}  {target:<36} {'':>7}  {'(the run ended first)':<36} not killed", flush=True)
            continue
        at_kill, delay = result
        killed += 1
        where = landed(plan, at_kill)
        run_to_end(run_dir, log)
        diffs = differences(reference, run_dir)
        identical += not diffs
        verdict = "identical" if not diffs else f"DIFFERENT: {diffs[0]}"
        print(f"{i + 1:>4}  {target:<36} {delay:>6.2f}s  {where:<36} {verdict}", flush=True)
        for diff in diffs[1:]:
            print(f"{'':>4}  {'':<36} {'':>7}  {'':<36} {diff}", flush=True)
    if not args.keep:
        shutil.rmtree(workdir / "reference", ignore_errors=True)
        for i in range(args.kills):
            shutil.rmtree(workdir / f"kill_{i + 1}", ignore_errors=True)
        for log in workdir.glob("*.log"):
            log.unlink()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"run directories and logs: {workdir}", flush=True)
    print(f"chaos: {identical}/{killed} identical", flush=True)


if __name__ == "__main__":
    main()
