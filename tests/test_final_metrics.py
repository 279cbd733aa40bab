"""``summary["final"]``: the end-of-run numbers under names that do not depend on the number
of rounds (llama2rlhf.evaluation.final), what sweeps optimise."""

from __future__ import annotations

from llama2rlhf.evaluation.final import final_metrics

SFT = {"task_accuracy": 0.5, "gold_reward": 0.4, "train_loss": 1.0}


def test_without_rounds_the_sft_model_and_the_first_reward_model():
    summary = {"sft": SFT, "rm_accuracy": {"overall": 0.7, "better": 0.6}}
    assert final_metrics(summary) == {"rm_accuracy": 0.7, "task_accuracy": 0.5, "gold_reward": 0.4, "round": 0}


def test_the_newest_round_that_measured_each_number():
    summary = {"sft": SFT, "rm_accuracy": {"overall": 0.7}, "rounds": [
        {"round": 1, "rm_accuracy": {"overall": 0.8}, "task_accuracy": 0.6, "gold_reward": 0.5,
         "win_rate_vs_sft": 0.55},
        # round 2 trained a reward model but did not evaluate its policy
        {"round": 2, "rm_accuracy": {"overall": 0.9}},
    ]}
    assert final_metrics(summary) == {"rm_accuracy": 0.9, "task_accuracy": 0.6, "gold_reward": 0.5,
                                      "win_rate_vs_sft": 0.55, "round": 1}
    summary["rounds"].append({"round": 3, "task_accuracy": 0.7, "gold_reward": 0.65, "win_rate_vs_sft": 0.6})
    assert final_metrics(summary) == {"rm_accuracy": 0.9, "task_accuracy": 0.7, "gold_reward": 0.65,
                                      "win_rate_vs_sft": 0.6, "round": 3}


def test_real_data_has_no_gold_numbers():
    summary = {"sft": {"train_loss": 1.0}, "rm_accuracy": {"overall": 0.61}, "rounds": [{"round": 1}]}
    assert final_metrics(summary) == {"rm_accuracy": 0.61}
    assert final_metrics({}) == {}
