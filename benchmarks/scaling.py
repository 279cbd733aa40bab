"""Rejection sampling on one process and on two: the work shared out, the samples the same.

    python benchmarks/scaling.py [--workdir DIR] [--repeats 3] [--prompts 256] [--k 8] [--keep]

First a toy run trains the SFT policy and the reward models (``pipeline.rounds=0``). Then
the sampling half of round 1's rejection-sampling stage (the temperature search, K samples
per prompt, their reward-model scores, the selection; no fine-tuning) runs on that run's
models in one process and under ``accelerate launch`` with two CPU processes
(``conf/accelerate/cpu_2proc.yaml``), alternately, ``--repeats`` times each. Each side is
timed inside its processes, from the stage's start to its end, so both leave out Python's
start-up and the launcher's. Each of the two processes has one thread; the one process
has torch's default (every core), or ``--one-process-threads N``. On a machine shared with
other work, a process whose threads wait on each other at every small operation can slow
down many times over: ``--one-process-threads 1`` times the sharing alone.

Prints the median seconds of each side, and whether the two wrote the same candidates
(prompt, text and score of every sample) and kept the same ones; the last line reads
``rs_speedup_2proc=<one process seconds / two processes seconds> identical=<true|false>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZE = ["data.n_sft=800", "data.n_pairs=800", "data.n_eval_pairs=100", "data.n_eval_prompts=32",
        "sft.num_train_epochs=1", "reward_model.num_train_epochs=1", "logger=none", "device=cpu",
        "augmenter=none", "rs.max_new_tokens=24"]
HERE = Path(__file__).resolve()


def worker(run_dir: str, out: str) -> None:
    """Under the launcher or alone: round 1's rejection sampling up to the fine-tune."""
    from omegaconf import OmegaConf

    from llama2rlhf.recipe.pipeline import make_world
    from llama2rlhf.recipe.rejection_sampling import _sample_and_select
    from llama2rlhf.runtime import distributed
    from llama2rlhf.runtime.run import RunContext
    from llama2rlhf.runtime.seeding import seed_everything

    cfg = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    distributed.setup(cfg)
    ctx = RunContext.open(cfg, Path(run_dir), make_world(cfg))
    ctx.round, ctx.current_stage = 1, "rejection_sampling"
    seed_everything(ctx.seed())
    distributed.wait_for_everyone()
    started = time.perf_counter()
    rows, metrics = _sample_and_select(ctx)
    distributed.wait_for_everyone()
    seconds = time.perf_counter() - started
    if distributed.is_main_process():
        stage = ctx.stage_dir()
        digest = {name: hashlib.sha256((stage / name).read_bytes()).hexdigest()
                  for name in ("candidates.jsonl", "kept.jsonl")}
        Path(out).write_text(json.dumps({"seconds": seconds, "temperature": metrics["temperature"],
                                         "n_kept": metrics["n_kept"], **digest}))


def prepare(workdir: Path, prompts: int, k: int) -> Path:
    run = workdir / "run"
    if not (run / "state.json").exists():
        cli = Path(sys.executable).with_name("llama2rlhf")
        overrides = [*SIZE, f"rs.n_prompts={prompts}", f"rs.k={k}", "pipeline.stages=[sft,reward]", "pipeline.rounds=0",
                     f"hydra.run.dir={run}"]
        print("training the SFT policy and the reward models ...", flush=True)
        subprocess.run([str(cli), *overrides], check=True, capture_output=True, text=True)
    return run


def once(run: Path, processes: int, workdir: Path, threads: int | None = None) -> dict:
    out = workdir / f"result_{processes}.json"
    out.unlink(missing_ok=True)
    shutil.rmtree(run / "round_1", ignore_errors=True)
    # the stage reads the run's config: round 1 is planned only here
    env = dict(os.environ)
    if processes == 1:
        command = [sys.executable, str(HERE), "--worker", str(run), str(out)]
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
    else:
        import llama2rlhf

        config = Path(llama2rlhf.__file__).parent / "config" / "conf" / "accelerate" / "cpu_2proc.yaml"
        command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", str(config),
                   str(HERE), "--worker", str(run), str(out)]
        env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--one-process-threads", type=int, help="torch threads of the one process (default: torch's)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rs-scaling-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run = prepare(workdir, args.prompts, args.k)
        results: dict[int, list[dict]] = {1: [], 2: []}
        for r in range(args.repeats):
            for processes in ((1, 2) if r % 2 == 0 else (2, 1)):  # drift in load falls on both sides
                results[processes].append(once(run, processes, workdir, args.one_process_threads))
                print(f"repeat {r + 1}: {processes} process(es) {results[processes][-1]['seconds']:.1f} s", flush=True)
        keys = ("candidates.jsonl", "kept.jsonl", "temperature", "n_kept")
        outputs = {json.dumps({k: res[k] for k in keys}) for side in results.values() for res in side}
        identical = len(outputs) == 1
        one = statistics.median(res["seconds"] for res in results[1])
        two = statistics.median(res["seconds"] for res in results[2])
        print(f"{'processes':<10} {'median s':>9}")
        print(f"{1:<10} {one:>9.1f}")
        print(f"{2:<10} {two:>9.1f}")
        print(f"prompts={args.prompts} k={args.k} temperature={results[1][0]['temperature']:g} "
              f"kept={results[1][0]['n_kept']} one-process threads={args.one_process_threads or 'default'}")
        print(f"rs_speedup_2proc={one / two:.2f} identical={str(identical).lower()}")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
