"""Killed mid-stage and resumed, a run ends as an uninterrupted one does
(``benchmarks/chaos.py`` at its smallest: two kills)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_kills_resume_to_the_same_run(tmp_path):
    # aimed at the run's last stages, and so are the stages after them that a kill which
    # overshoots its stage lands in; every stage's redo is exact (llama2rlhf.runtime.seeding:
    # each stage seeded from seed, stage and round), tests/test_resume_identical.py redoes each
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "chaos.py"), "--kills", "2", "--seed", "0",
         "--stages", "rejection_sampling_after_ppo,evaluate", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    rows = [line.split() for line in lines if line[:4].strip().isdigit()]
    assert [row[1].rsplit("/", 1)[-1] for row in rows] == ["rejection_sampling_after_ppo", "evaluate"]
    assert lines[-1] == "chaos: 2/2 identical", proc.stdout
    assert not any(tmp_path.iterdir())  # the run directories are removed without --keep
