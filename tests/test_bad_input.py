"""Bad input as a user gives it: each case exits with code 2 and one line naming what to
change, prints no traceback, leaves the run directory as it was, and is found before any
stage trains (``llama2rlhf --validate`` and a real run alike)."""

from __future__ import annotations

import pytest

from conftest import assert_bad, snapshot

TINY = ["logger=none", "pipeline.rounds=1"]


CONFIG_CASES = [
    # (overrides, what the line must name)
    (["rs.kk=3"], ["rs.kk", "not in"]),
    (["rs.k=abc"], ["rs.k", "Integer"]),
    (["sampler=nope"], ["sampler/nope", "hf"]),
]


@pytest.mark.parametrize("overrides,named", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_a_bad_override_is_one_line_naming_the_key(cli, tmp_path, overrides, named):
    run = tmp_path / "run"
    assert_bad(cli("--validate", f"hydra.run.dir={run}", *TINY, *overrides), *named)
    assert not run.exists()


def test_validate_accepts_the_default_run_and_creates_nothing(cli, tmp_path):
    run = tmp_path / "run"
    result = cli("--validate", f"hydra.run.dir={run}", "logger=none")
    assert result.code == 0, result.err
    assert "valid: 3 round(s)" in result.err and "sft" in result.err
    assert not run.exists()


def test_a_bad_override_leaves_an_existing_run_directory_as_it_was(cli, tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- logger=none\n")
    (run / "state.json").write_text('{"version": 1, "done": ["base"], "artifacts": {}}')
    before = snapshot(run)
    assert_bad(cli(f"hydra.run.dir={run}", *TINY, "rs.kk=3"), "rs.kk")
    assert snapshot(run) == before
