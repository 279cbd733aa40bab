"""Reward combination (paper 3.2.3, "PPO"): the piecewise rule, LOGIT, WHITEN, and the
adapter that feeds the combined reward to TRL's PPO."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from omegaconf import OmegaConf

from llama2rlhf import RewardCombiner, plugins
from llama2rlhf.reward.combined import CombinedReward, is_safety_prompt, selected_combiner


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _cfg(name="llama2", whiten=True, **extra):
    return OmegaConf.create({"reward": {"name": name, "whiten": whiten, **extra},
                             "model": {"trust_remote_code": False, "dtype": "float32"}, "device": "cpu",
                             "reward_model": {"eval_batch_size": 8}})


def test_llama2_rule_takes_safety_on_safety_prompts_and_below_the_threshold():
    combine = plugins.get("reward_combiners", "llama2").obj
    helpful = torch.tensor([2.0, 2.0, 2.0, -1.0, 0.3])
    # R_s = sigmoid(safe): 0.62, 0.047 (< 0.15: unsafe reply), 0.73, 0.73, just above 0.15
    safe = torch.tensor([0.5, -3.0, 1.0, 1.0, _logit(0.15) + 1e-3])
    is_safety = torch.tensor([False, False, True, False, False])
    out = combine({"helpfulness": helpful, "safety": safe}, is_safety)
    # R_c by hand, then LOGIT(R_c)
    r_c = [_sigmoid(2.0), _sigmoid(-3.0), _sigmoid(1.0), _sigmoid(-1.0), _sigmoid(0.3)]
    assert out.tolist() == pytest.approx([_logit(p) for p in r_c], abs=1e-5)
    # the threshold is strict: R_s = 0.15 - a little picks safety
    just_below = combine({"helpfulness": torch.tensor([2.0]), "safety": torch.tensor([_logit(0.15) - 1e-3])},
                         torch.tensor([False]))
    assert just_below.item() == pytest.approx(_logit(0.15) - 1e-3, abs=1e-5)
    # an option from the config node moves the threshold
    strict = combine({"helpfulness": helpful, "safety": safe}, is_safety, safety_threshold=0.7)
    assert strict.tolist() == pytest.approx([0.5, -3.0, 1.0, -1.0, _logit(0.15) + 1e-3], abs=1e-5)


def test_llama2_rule_stays_finite_for_confident_models():
    combine = plugins.get("reward_combiners", "llama2").obj
    out = combine({"helpfulness": torch.tensor([40.0]), "safety": torch.tensor([30.0])}, torch.tensor([False]))
    assert out.item() == 40.0  # logit(sigmoid(40)) computed naively in float32 is inf


def test_per_position_scores_broadcast_against_per_row_flags():
    combine = plugins.get("reward_combiners", "llama2").obj
    helpful, safe = torch.zeros(2, 3), torch.full((2, 3), -4.0)
    safe[0] = 4.0
    out = combine({"helpfulness": helpful, "safety": safe}, torch.tensor([True, False])[:, None])
    assert out.tolist() == [[4.0] * 3, [-4.0] * 3]


def test_combiner_names_the_missing_model():
    combine = plugins.get("reward_combiners", "llama2").obj
    with pytest.raises(ValueError, match="needs the safety reward model"):
        combine({"helpfulness": torch.zeros(2)}, torch.zeros(2, dtype=torch.bool))


def test_single_reads_helpfulness_and_llama2_falls_back_to_it_without_a_safety_model(caplog):
    combiner, fallback = selected_combiner(_cfg(safety_threshold=0.2), ["helpfulness", "safety"])
    assert (combiner.name, combiner.options, fallback) == ("llama2", {"safety_threshold": 0.2}, None)
    with caplog.at_level("WARNING", logger="llama2rlhf.reward.combined"):
        combiner, fallback = selected_combiner(_cfg(safety_threshold=0.2), ["helpfulness"])
    assert (combiner.name, combiner.options) == ("single", {})
    assert fallback.startswith("reward=llama2 needs the safety reward model(s)") and "using reward=single" in fallback
    assert [r.levelname for r in caplog.records] == ["WARNING"] and caplog.records[0].getMessage() == fallback
    assert combiner.call({"helpfulness": torch.tensor([1.5])}, torch.tensor([True])).tolist() == [1.5]


def test_is_safety_prompt_reads_toy_family_and_safety_field():
    assert is_safety_prompt({"toy_prompt": {"family": "unsafe"}})
    assert not is_safety_prompt({"toy_prompt": {"family": "add"}})
    assert is_safety_prompt({"safety": True}) and not is_safety_prompt({}) and not is_safety_prompt(None)


# --- with saved reward models ---------------------------------------------------------------

CONVS = [
    [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "The answer is 7."}],
    [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "The answer is 8."}],
    [{"role": "user", "content": "How do I rob a bank?"}, {"role": "assistant", "content": "Sorry, I can't help with that."}],
    [{"role": "user", "content": "How do I rob a bank?"}, {"role": "assistant", "content": "Sure! First get the tools."}],
    [{"role": "user", "content": "Reverse: red, cat, sun."}, {"role": "assistant", "content": "sun, cat, red"}],
]
SAFETY = [False, False, True, True, False]


@pytest.fixture(scope="module")
def saved_rms(tmp_path_factory, tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    out = {}
    for seed, name in enumerate(("helpfulness", "safety")):
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                             pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config)
        with torch.no_grad():  # spread the scores so that both branches of the rule are taken
            model.score.weight.mul_(40.0)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[name] = str(path)
    return out


def _by_hand(saved_rms, tokenizer, threshold=0.15):
    from transformers import AutoModelForSequenceClassification

    raw = {}
    for name, path in saved_rms.items():
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        scores = []
        for conv in CONVS:
            ids = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True, return_tensors="pt")
            with torch.no_grad():
                scores.append(float(model(**ids).logits[0, 0]))
        raw[name] = scores
    combined = [s if flag or _sigmoid(s) < threshold else h
                for h, s, flag in zip(raw["helpfulness"], raw["safety"], SAFETY, strict=True)]
    return raw, combined


def test_whitening_uses_fixed_statistics(saved_rms, tokenizer):
    raw, combined = _by_hand(saved_rms, tokenizer)
    assert any(s for s in SAFETY) and len(set(combined) - set(raw["helpfulness"])) >= 2  # both branches taken
    reward = CombinedReward(_cfg(), saved_rms)
    stats = reward.fit_whitening(reward.model_scores(CONVS), SAFETY)
    mean = sum(combined) / len(combined)
    std = math.sqrt(sum((c - mean) ** 2 for c in combined) / (len(combined) - 1))
    assert (stats["mean"], stats["std"], stats["n"]) == (pytest.approx(mean, abs=1e-4), pytest.approx(std, abs=1e-4), 5)
    whitened = CombinedReward(_cfg(), saved_rms, stats)
    assert whitened.score_conversations(CONVS, SAFETY) == pytest.approx([(c - mean) / std for c in combined], abs=1e-4)
    # one reply scored alone gets the reward it gets in a batch: the statistics are fixed
    assert whitened.score_conversations(CONVS[3:4], SAFETY[3:4])[0] == pytest.approx((combined[3] - mean) / std, abs=1e-4)
    assert CombinedReward(_cfg(whiten=False), saved_rms, stats).score_conversations(CONVS, SAFETY) == \
        pytest.approx(combined, abs=1e-4)


def _query_responses(tokenizer):
    """PPO's layout: left-padded prompts (generation prompt included), then right-padded replies."""
    pad = tokenizer.pad_token_id
    prompts, replies = [], []
    for conv in CONVS:
        full = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
        query = tokenizer.apply_chat_template(conv[:-1], tokenize=True, add_generation_prompt=True,
                                              return_dict=True)["input_ids"]
        assert full[: len(query)] == query
        prompts.append(query)
        replies.append(full[len(query):])
    width_q, width_r = max(map(len, prompts)), max(map(len, replies)) + 2
    rows = [[pad] * (width_q - len(q)) + q + r + [pad] * (width_r - len(r)) for q, r in zip(prompts, replies, strict=True)]
    return torch.tensor(rows), width_q, prompts


def test_ppo_adapter_equals_the_combined_reward(saved_rms, tokenizer):
    from trl.experimental.utils import get_reward

    from llama2rlhf.reward.trl_rewards import combined_reward_model, reads_policy_tokens

    raw, combined = _by_hand(saved_rms, tokenizer)
    stats = {"mean": 0.7, "std": 3.0}
    reward = CombinedReward(_cfg(), saved_rms, stats)
    assert reads_policy_tokens(reward, tokenizer)  # so PPO feeds them its token ids
    expected = reward.score_conversations(CONVS, SAFETY)
    assert expected == pytest.approx([(c - 0.7) / 3.0 for c in combined], abs=1e-4)
    query_responses, context_length, queries = _query_responses(tokenizer)
    adapter = combined_reward_model(reward, queries, SAFETY)
    _, scores, _ = get_reward(adapter, query_responses, tokenizer.pad_token_id, context_length)
    assert scores.tolist() == pytest.approx(expected, abs=1e-4)
    # a third-party combiner feeds PPO through the same adapter
    reward.combiner = dataclasses.replace(reward.combiner, obj=RewardCombiner(lambda s, f: s["helpfulness"] - s["safety"],
                                                                               needs=()), options={})
    _, scores, _ = get_reward(adapter, query_responses, tokenizer.pad_token_id, context_length)
    by_hand = [(h - s - 0.7) / 3.0 for h, s in zip(raw["helpfulness"], raw["safety"], strict=True)]
    assert scores.tolist() == pytest.approx(by_hand, abs=1e-4)


def test_grpo_reward_function_reads_the_safety_column(saved_rms, tokenizer):
    from llama2rlhf.reward.trl_rewards import reward_function

    reward = CombinedReward(_cfg(whiten=False), saved_rms)
    _, combined = _by_hand(saved_rms, tokenizer)
    fn = reward_function(reward)
    prompts = [c[:-1] for c in CONVS]
    completions = [[c[-1]] for c in CONVS]
    assert fn(prompts, completions, safety=SAFETY) == pytest.approx(combined, abs=1e-4)


def test_a_failing_combiner_is_named_with_its_plugin(saved_rms, monkeypatch):
    from llama2rlhf.plugins import PluginError, Registered

    def broken(scores, is_safety):
        raise KeyError("harmlessness")

    plugins.registry("reward_combiners")
    monkeypatch.setitem(plugins._registries["reward_combiners"], "broken",
                        Registered("broken", RewardCombiner(broken), "my_plugin", "my-dist"))
    reward = CombinedReward(_cfg(name="broken"), saved_rms)
    with pytest.raises(PluginError, match=r"reward combiner 'broken' of plugin 'my_plugin' \(distribution my-dist\) "
                                          r"failed: KeyError"):
        reward.score_conversations(CONVS, SAFETY)


def test_safety_lookup_takes_the_longest_query_a_row_starts_with():
    from llama2rlhf.reward.trl_rewards import SafetyLookup

    lookup = SafetyLookup([[5, 6], [5, 6, 7], [9]], [False, True, True])
    rows = torch.tensor([[0, 0, 5, 6, 7, 3], [0, 5, 6, 8, 3, 0], [9, 4, 4, 4, 0, 0], [0, 0, 0, 5, 4, 4]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])
    # [5, 6, 7] (safety) beats its prefix [5, 6]; [5, 6] alone is not; an unknown query is not
    assert lookup(rows, mask).tolist() == [True, False, True, False]


def test_ppo_value_model_starts_in_the_whitened_rewards_units(saved_rms, tokenizer):
    """PPO's critic starts as the helpfulness RM with its head rescaled: at the last token it
    predicts the whitened reward that PPO is fed wherever the combiner passes the helpfulness
    score through, so its first returns are not several standard deviations off."""
    from transformers import AutoModelForSequenceClassification
    from trl.experimental.utils import get_reward

    from llama2rlhf.recipe.ppo import value_model_in_reward_units

    raw, _ = _by_hand(saved_rms, tokenizer)
    stats = {"mean": 0.7, "std": 3.0}
    query_responses, context_length, _ = _query_responses(tokenizer)
    value = AutoModelForSequenceClassification.from_pretrained(saved_rms["helpfulness"]).eval()
    assert value_model_in_reward_units(value, None).score.bias is None  # no whitening: left as it is
    value = value_model_in_reward_units(value, stats)
    _, scores, _ = get_reward(value, query_responses, tokenizer.pad_token_id, context_length)
    assert scores.tolist() == pytest.approx([(h - 0.7) / 3.0 for h in raw["helpfulness"]], abs=1e-4)
    helpful_only = CombinedReward(_cfg(), {"helpfulness": saved_rms["helpfulness"]}, stats)
    assert scores.tolist() == pytest.approx(helpful_only.score_conversations(CONVS, SAFETY), abs=1e-4)
