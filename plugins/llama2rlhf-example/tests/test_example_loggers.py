"""``logger=example_events``: the JSON Lines event log and its plateau check."""

from __future__ import annotations

import json

import pytest

from llama2rlhf_example import plugin
from llama2rlhf_example.loggers import lookup, numbers, plateau_check

ON = {"name": "example_events", "path": "example_events.jsonl", "watch": "gold_reward", "min_delta": 0.01,
      "patience": 2}


def events(ctx):
    path = ctx.run_dir / "example_events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(("values", "min_delta", "patience", "stale", "best", "flag"), [
    ([0.5], 0.0, 1, 0, 0.5, False),
    ([0.5, 0.6], 0.0, 1, 0, 0.6, False),
    ([0.5, 0.6, 0.6], 0.0, 1, 1, 0.6, True),  # equal is not better
    ([0.5, 0.6, 0.605], 0.01, 1, 1, 0.605, True),  # better, but not by more than min_delta
    ([0.5, 0.6, 0.55, 0.7], 0.0, 2, 0, 0.7, False),
    ([0.5, 0.6, 0.55, 0.58], 0.0, 2, 2, 0.6, True),  # 0.58 beats 0.55 but not the best, 0.6
    ([None, 0.4], 0.0, 1, 0, 0.4, False),
    ([0.4, None], 0.0, 1, 1, 0.4, True),
])
def test_plateau_check(values, min_delta, patience, stale, best, flag):
    got = plateau_check(values, min_delta, patience)
    assert got == {"value": values[-1], "best": best, "rounds_without_improvement": stale, "plateau": flag}


def test_patience_below_one_is_refused():
    with pytest.raises(ValueError, match="logger.patience must be >= 1, got 0"):
        plateau_check([0.1], 0.0, 0)


def test_numbers_and_lookup():
    summary = {"gold_reward": 0.5, "rs": {"n_kept": 3, "note": "text", "flag": True}, "curve": [1, 2]}
    assert numbers(summary) == {"gold_reward": 0.5, "rs.n_kept": 3}
    assert lookup(summary, "rs.n_kept") == 3.0 and lookup(summary, "rs.missing") is None
    assert lookup(summary, "rs.note") is None


def test_off_unless_selected(make_ctx):
    ctx = make_ctx(logger={"name": "none"})
    plugin.on_stage_start(ctx, "sft", 0)
    plugin.on_round_end(ctx, 1, {"gold_reward": 0.5})
    assert not (ctx.run_dir / "example_events.jsonl").exists()


def test_rounds_are_checked_against_the_earlier_ones_read_back_from_the_file(make_ctx, caplog):
    ctx = make_ctx(logger=ON)
    for k, value in enumerate([0.40, 0.50, 0.505, 0.49], start=1):
        ctx.round = k
        plugin.on_round_end(ctx, k, {"round": k, "gold_reward": value, "rs": {"n_kept": 10 + k}})
    ends = [e for e in events(ctx) if e["event"] == "round_end"]
    assert [(e["round"], e["value"], e["rounds_without_improvement"], e["plateau"]) for e in ends] == [
        (1, 0.40, 0, False), (2, 0.50, 0, False), (3, 0.505, 1, False), (4, 0.49, 2, True)]
    assert ends[-1]["best"] == 0.505 and ends[-1]["summary"]["rs.n_kept"] == 14
    assert "gold_reward has not improved by more than 0.01 for 2 round(s)" in caplog.text
    # a resumed round 4 logs again and reaches the same verdict from the file
    plugin.on_round_end(ctx, 4, {"gold_reward": 0.49})
    assert [e for e in events(ctx) if e["event"] == "round_end"][-1]["rounds_without_improvement"] == 2


def test_run_end_logs_the_final_numbers(make_ctx):
    ctx = make_ctx(logger=ON)
    plugin.on_run_end(ctx, {"final": {"gold_reward": 0.9, "round": 3, "note": "x"}, "rounds": []})
    assert events(ctx) == [{"event": "run_end", "final": {"gold_reward": 0.9, "round": 3}, "time": events(ctx)[0]["time"]}]


def test_a_missing_metric_is_named(make_ctx, caplog):
    ctx = make_ctx(logger={**ON, "watch": "win_rate_vs_sft"})
    plugin.on_round_end(ctx, 1, {"gold_reward": 0.5})
    [event] = events(ctx)
    assert event["value"] is None and event["rounds_without_improvement"] == 1 and event["plateau"] is False
    assert "logger.watch=win_rate_vs_sft is not in round 1's summary (keys: gold_reward)" in caplog.text


def test_stage_events_through_the_pipeline(fresh_plugins, make_ctx):
    """The core calls the observer around every stage it runs (here a stage of a test plugin)."""
    from llama2rlhf import Stage, hookimpl
    from llama2rlhf.recipe.pipeline import run_stage

    class Stages:
        @hookimpl
        def register_stages(self, register):
            register("count", Stage(lambda ctx: {"n": 3, "nested": {"x": 0.5}, "label": "text"}))

    fresh_plugins.get_plugin_manager().register(Stages(), name="stages_for_test")
    ctx = make_ctx(round=2, stage="", logger=ON)
    run_stage(ctx, "count")
    run_stage(ctx, "count")  # done: skipped, so no more events
    got = [(e["event"], e["stage"], e["key"], e["round"], e.get("metrics")) for e in events(ctx)]
    assert got == [("stage_start", "count", "round_2/count", 2, None),
                   ("stage_end", "count", "round_2/count", 2, {"n": 3, "nested.x": 0.5})]
