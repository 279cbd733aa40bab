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


@pytest.mark.parametrize("override,key", [("rs.kk=3", "rs.kk"), ("collect.temperatures=[0.7]", "collect.temperatures")],
                         ids=["misspelt key", "broken rule"])
def test_bad_input_leaves_an_existing_run_directory_as_it_was(cli, tmp_path, override, key):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- logger=none\n")
    (run / "state.json").write_text('{"version": 1, "done": ["base"], "artifacts": {}}')
    before = snapshot(run)
    assert_bad(cli(f"hydra.run.dir={run}", *TINY, override), key)
    assert snapshot(run) == before


# --- errors raised once the run has started ----------------------------------------------

TINY_MODEL = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2",
              "model.vocab_size=400", "pipeline.rounds=0", "logger=none"]


def stage_raising(fresh, exc: Exception, distribution: str = "boom-dist") -> None:
    """A stage ``boom`` that raises ``exc``, from a plugin of ``distribution``."""
    from llama2rlhf import Stage, hookimpl

    class Boom:
        @hookimpl
        def register_stages(self, register):
            register("boom", Stage(lambda ctx: (_ for _ in ()).throw(exc)))

    fresh.register(Boom(), "boom_plugin", distribution)


def test_an_input_error_inside_a_stage_is_one_line_and_exit_2(cli, fresh, tmp_path):
    from llama2rlhf.data.errors import ConfigError

    # a plugin's own bad-input error passes through as it is
    stage_raising(fresh, ConfigError("boom.size", "must be at least 1", 0))
    run = tmp_path / "run"
    line = assert_bad(cli(f"hydra.run.dir={run}", *TINY_MODEL, "pipeline.stages=[boom]"), "boom.size=0", alone=False)
    assert line == "llama2rlhf: boom.size=0: must be at least 1"
    # the stage never finished, and the traceback is kept in the run's log
    state = (run / "state.json").read_text()
    assert '"base"' in state and '"boom"' not in state
    assert "Traceback" in (run / "llama2rlhf.log").read_text()


def test_a_plugin_failing_inside_a_stage_is_named_in_one_line(cli, fresh, tmp_path):
    stage_raising(fresh, ZeroDivisionError("division by zero"))
    run = tmp_path / "run"
    line = assert_bad(cli(f"hydra.run.dir={run}", *TINY_MODEL, "pipeline.stages=[boom]"), alone=False)
    assert line == ("llama2rlhf: stage 'boom' of plugin 'boom_plugin' (distribution boom-dist) failed: "
                    "ZeroDivisionError: division by zero")


def test_any_other_error_is_one_line_exit_1_with_the_traceback_in_the_log(cli, fresh, tmp_path):
    stage_raising(fresh, ZeroDivisionError("division by zero"), distribution=fresh.BUILTIN_DISTRIBUTION)
    run = tmp_path / "run"
    result = cli(f"hydra.run.dir={run}", *TINY_MODEL, "pipeline.stages=[boom]")
    assert result.code == 1
    assert "Traceback" not in result.err
    failed = [line for line in result.lines if line.startswith("llama2rlhf: failed:")]
    assert failed == [f"llama2rlhf: failed: ZeroDivisionError: division by zero (the traceback is in "
                      f"{run / 'llama2rlhf.log'}; LLAMA2RLHF_DEBUG=1 prints it)"]
    log = (run / "llama2rlhf.log").read_text()
    assert "Traceback" in log and "ZeroDivisionError: division by zero" in log


def test_the_debug_switch_shows_the_traceback(cli, fresh, tmp_path, monkeypatch):
    stage_raising(fresh, ZeroDivisionError("division by zero"), distribution=fresh.BUILTIN_DISTRIBUTION)
    monkeypatch.setenv("LLAMA2RLHF_DEBUG", "1")
    result = cli(f"hydra.run.dir={tmp_path / 'run'}", *TINY_MODEL, "pipeline.stages=[boom]")
    assert result.code == 1
    assert "Traceback" in result.err and "ZeroDivisionError" in result.err
    # a bad override is raised as it is too
    result = cli("--validate", *TINY_MODEL, "rs.kk=3")
    assert result.code == 1 and "Traceback" in result.err and "rs.kk" in result.err


def test_validate_refuses_multirun(cli):
    assert_bad(cli("--validate", "-m", "rs.k=2,4"), "--validate checks one run")


def test_multirun_validates_each_job_before_it_starts(cli, tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("-m", f"hydra.sweep.dir={sweep}", *TINY_MODEL, "pipeline.stages=[sfft]")
    assert result.code == 2, result.err
    assert "pipeline.stages" in result.err or "sfft" in result.err
    assert not any(sweep.rglob("sft"))
