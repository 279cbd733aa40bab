"""SFT with TRL's padding-free batches: the same loss as padded batches, long examples dropped."""

from __future__ import annotations

import logging

import pytest


def _rows(n_short: int, long_text: str | None = None) -> list[dict]:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"The answer is {2 * i}."}]} for i in range(n_short)]
    # a longer, multi-turn example with a system prompt
    rows.insert(1, {"messages": [{"role": "system", "content": "Act as Newton. You love chess."},
                                 {"role": "user", "content": "What is 2 + 3?"},
                                 {"role": "assistant", "content": "Newton here. The answer is 5. I love chess."},
                                 {"role": "user", "content": "Reverse: cat, dog, owl."},
                                 {"role": "assistant", "content": "Newton here. The answer is owl, dog, cat."}]})
    if long_text:
        rows.append({"messages": [{"role": "user", "content": long_text}, {"role": "assistant", "content": "ok"}]})
    return rows


def _train(tokenizer, tiny_llama, tmp_path, padding_free: bool, rows) -> dict:
    """One optimizer step over one batch holding every row: train_loss is that batch's loss."""
    import copy

    from omegaconf import OmegaConf

    from llama2rlhf.config import Config
    from llama2rlhf.recipe import sft

    cfg = OmegaConf.structured(Config)
    stage = cfg.sft
    stage.update(padding_free=padding_free, max_length=128, per_device_train_batch_size=len(rows), num_train_epochs=1,
                 learning_rate=1e-3, warmup_steps=0, bf16="false")
    model_dir = tmp_path / "init"
    copy.deepcopy(tiny_llama).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return sft.train_sft(cfg, stage, str(model_dir), str(model_dir), rows, tmp_path / "out")


def test_padding_free_gives_the_padded_loss_and_drops_what_is_too_long(tokenizer, tiny_llama, tmp_path, caplog):
    rows = _rows(7)
    padded = _train(tokenizer, tiny_llama, tmp_path / "a", False, rows)
    free = _train(tokenizer, tiny_llama, tmp_path / "b", True, rows)
    # examples of different lengths in one batch: attention must stay within each example
    assert padded["train_steps"] == free["train_steps"] == 1
    assert free["train_loss"] == pytest.approx(padded["train_loss"], rel=1e-4)

    with caplog.at_level(logging.WARNING):
        out = _train(tokenizer, tiny_llama, tmp_path / "c", True, _rows(7, " ".join(["word"] * 200)))
    assert out["train_steps"] == 1
    assert "dropped 1 of 9 examples longer than max_length=128 tokens (padding_free)" in caplog.text
