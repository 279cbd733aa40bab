"""Reward-model training on padding-free batches (``reward_model.padding_free``): the padded
batch's rewards, gradients and trained model."""

from __future__ import annotations

import copy

import pytest
import torch

from llama2rlhf.runtime.speedups.packed_preferences import collate, packed_rewards


def _classifier(vocab: int = 64, pad: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=pad,
                         max_position_embeddings=128)
    config._attn_implementation = "sdpa"
    return LlamaForSequenceClassification(config)


def _examples():
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(1, 64, (n,), generator=g).tolist()

    return [{"chosen_ids": ids(5), "rejected_ids": ids(9), "margin": 1.0},
            {"chosen_ids": ids(1), "rejected_ids": ids(3), "margin": 0.0},
            {"chosen_ids": ids(12), "rejected_ids": ids(7), "margin": 0.5}]


def test_collate_lays_chosen_then_rejected_end_to_end():
    batch = collate(_examples())
    lengths = [5, 1, 12, 9, 3, 7]  # the chosen of each pair, then the rejected
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]
    assert batch["sequence_ends"].tolist() == [4, 5, 17, 26, 29, 36]
    assert batch["input_ids"][0, 6:18].tolist() == _examples()[2]["chosen_ids"]
    assert batch["margin"].tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="empty chosen or rejected"):
        collate([{"chosen_ids": [3], "rejected_ids": []}])


def _padded_rewards(model, examples):
    from trl.trainer.reward_trainer import DataCollatorForPreference

    batch = DataCollatorForPreference(pad_token_id=0)(examples)
    batch.pop("margin")
    return model(**batch, use_cache=False).logits.squeeze(-1)


def _packed_rewards(model, examples):
    batch = collate(examples)
    batch.pop("margin")
    return packed_rewards(model, batch, batch.pop("sequence_ends"))


@pytest.mark.parametrize("attention", ["sdpa_packed", "eager"])  # ours, and transformers' mask for the packing
def test_packed_rewards_and_gradients_equal_the_padded_batch(attention):
    from llama2rlhf.runtime.speedups.packed_attention import use_for_padding_free

    padded = _classifier()
    packed = copy.deepcopy(padded)
    if attention == "eager":
        packed.set_attn_implementation("eager")
    else:
        assert use_for_padding_free(packed)
    examples = _examples()
    grads = []
    for model, rewards in ((padded, _padded_rewards), (packed, _packed_rewards)):
        r = rewards(model, examples)
        assert r.shape == (6,)
        grads.append((r, *torch.autograd.grad(r.sin().sum(), list(model.parameters()))))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_packed_rewards_through_a_lora_adapter():
    from peft import LoraConfig, get_peft_model

    base = _classifier()
    torch.manual_seed(2)
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    expected = _padded_rewards(model, _examples())
    assert torch.allclose(_packed_rewards(model, _examples()), expected, atol=1e-5)


def test_a_model_without_a_score_head_is_named():
    class Classifier(torch.nn.Module):
        def forward(self, **kwargs):
            return None

    with pytest.raises(ValueError, match="Classifier has no `score` head.*reward_model.padding_free=false"):
        packed_rewards(Classifier(), {}, torch.tensor([0]))


def test_reward_stage_trains_the_same_model_padding_free(world, tokenizer, tiny_llama, tmp_path):
    """One optimiser step of the reward stage's trainer on 24 pairs of different lengths,
    padded and padding-free: the same loss, and the saved models score held-out pairs alike.
    (Over more steps Adam's division by the gradients' running scale amplifies float
    rounding in the smallest of them, as any change of batch layout does.)"""
    from omegaconf import OmegaConf

    from llama2rlhf.config import Config
    from llama2rlhf.evaluation.rm_accuracy import pair_conversations
    from llama2rlhf.recipe.reward_model import train_reward
    from llama2rlhf.reward.scoring import score_conversations

    cfg = OmegaConf.structured(Config)
    cfg.reward_loss.name = "margin_small"
    cfg.reward_model.update(per_device_train_batch_size=24, num_train_epochs=1, learning_rate=1e-3, warmup_steps=0,
                            bf16="false", logging_steps=1)
    init = tmp_path / "init"
    tiny_llama.save_pretrained(init)
    tokenizer.save_pretrained(init)
    rows = world.seed_comparisons(24)
    out = {}
    for padding_free in (False, True):
        cfg.reward_model.padding_free = padding_free
        torch.manual_seed(0)  # the new reward head's initial weights
        out[padding_free] = train_reward(cfg, str(init), str(init), rows, tmp_path / str(padding_free), "toy")
    assert out[False]["train_steps"] == out[True]["train_steps"] == 1
    assert out[True]["train_loss"] == pytest.approx(out[False]["train_loss"], rel=1e-5)

    from transformers import AutoModelForSequenceClassification

    held_out = pair_conversations(world.seed_comparisons(8, "heldout"))
    scores = [score_conversations(AutoModelForSequenceClassification.from_pretrained(out[k]["model_path"]).eval(),
                                  tokenizer, held_out) for k in (False, True)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)
