"""Preference pairs tokenized once per process: the ids TRL's RewardTrainer would make itself."""

from __future__ import annotations

from llama2rlhf.reward.pair_tokens import tokenize_pairs


def _rows(world):
    rows = world.seed_comparisons(12)
    rows.append({"prompt": [{"role": "system", "content": "Always answer in capitals."},
                            {"role": "user", "content": "What is 2 + 2?"},
                            {"role": "assistant", "content": "4"},
                            {"role": "user", "content": "Capital of Kovia?"}],
                 "chosen": [{"role": "assistant", "content": "THE ANSWER IS LUNE."}],
                 "rejected": [{"role": "assistant", "content": "Mire"}], "margin": 1.0})
    return [{**r, "margin": float(r.get("margin", 0.5))} for r in rows]


def test_the_ids_are_those_trl_makes_and_a_second_stage_renders_nothing(world, tokenizer, tmp_path, monkeypatch):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    rows = _rows(world)
    keep = ("prompt", "chosen", "rejected", "margin")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, dataset_num_proc=None, max_length=256)

    def prepared(data):
        trainer = RewardTrainer(model=LlamaForSequenceClassification(config), args=args,
                                train_dataset=Dataset.from_list(data), processing_class=tokenizer)
        return trainer.train_dataset.to_dict()

    by_trl = prepared([{k: r[k] for k in keep if k in r} for r in rows])
    ours = tokenize_pairs(rows, tokenizer)
    assert prepared(ours) == {k: by_trl[k] for k in ("chosen_ids", "rejected_ids", "margin")}
    assert len(set(map(tuple, by_trl["chosen_ids"]))) > 5  # different conversations, different ids

    calls = []
    render = tokenizer.apply_chat_template
    monkeypatch.setattr(tokenizer, "apply_chat_template", lambda *a, **k: calls.append(1) or render(*a, **k))
    again = tokenize_pairs(rows + [{**rows[0], "rejected": [{"role": "assistant", "content": "no idea"}]}], tokenizer)
    assert again[:-1] == ours
    assert len(calls) == 1  # only the one new reply was rendered


def test_text_rows_and_template_less_tokenizers_are_left_to_trl(world):
    class Tokenizer:
        chat_template = "{{ messages }}"

    assert tokenize_pairs([{"chosen": "a good reply", "rejected": "a bad one"}], Tokenizer()) is None
    Tokenizer.chat_template = None
    assert tokenize_pairs(world.seed_comparisons(2), Tokenizer()) is None
