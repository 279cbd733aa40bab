"""The reward stage's trainer computes its loss with the selected registered loss."""

from __future__ import annotations

import pytest
import torch

from llama2rlhf import plugins


@pytest.fixture()
def rm_trainer_factory(world, tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from trl import RewardConfig

    from llama2rlhf.recipe.reward_model import _trainer_class, with_margins

    def make(loss_name, options):
        loss = plugins.named("reward_losses", loss_name, options)
        rows = with_margins(world.seed_comparisons(16), loss.obj, "toy")
        keep = ("prompt", "chosen", "rejected", "margin")
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                             pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config)
        args = RewardConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[], bf16=False,
                            use_cpu=True, dataset_num_proc=None, max_length=256)
        return _trainer_class()(model=model, args=args,
                                train_dataset=Dataset.from_list([{k: r[k] for k in keep if k in r} for r in rows]),
                                processing_class=tokenizer, reward_loss=loss)

    return make


@pytest.mark.parametrize("loss_name,options", [("margin_large", {}), ("example_hinge", {"width": 0.5})])
def test_compute_loss_is_the_registered_loss(rm_trainer_factory, loss_name, options):
    if loss_name not in plugins.registry("reward_losses"):
        pytest.skip("the example plugin is not installed (make test installs it)")
    trainer = rm_trainer_factory(loss_name, options)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "margin" in batch
    margin = batch["margin"].clone()
    model = trainer.model
    model.eval()
    with torch.no_grad():
        got = float(trainer.compute_loss(model, dict(batch)))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    rc, rr = torch.chunk(logits, 2)
    if loss_name == "example_hinge":
        # the plugin's formula, by hand: mean(relu(width + m - (r_c - r_r)))
        expected = float(torch.relu(0.5 + margin - (rc - rr)).mean())
    else:
        expected = float(torch.nn.functional.softplus(-(rc - rr - margin)).mean())
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
