"""SFT puts the loss on assistant tokens only, in every turn (paper 3.1)."""

from __future__ import annotations

import pytest

SYSTEM = "Act as Newton."
TURNS = [
    ("What is 3 + 4?", "Newton here. The answer is 7."),
    ("Reverse: red, cat, sun.", "Newton here. The answer is sun, cat, red."),
]


def _messages():
    msgs = [{"role": "system", "content": SYSTEM}]
    for user, assistant in TURNS:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return msgs


def test_llama2_chat_format(tokenizer):
    text = tokenizer.apply_chat_template(_messages(), tokenize=False)
    assert text == (
        "<s>[INST] <<SYS>>\nAct as Newton.\n<</SYS>>\n\nWhat is 3 + 4? [/INST] Newton here. The answer is 7. </s>"
        "<s>[INST] Reverse: red, cat, sun. [/INST] Newton here. The answer is sun, cat, red. </s>"
    )


def test_sft_trainer_labels_exactly_the_assistant_tokens(tokenizer, tiny_llama, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=256, report_to=[],
                     bf16=False, use_cpu=True, dataset_num_proc=None)
    trainer = SFTTrainer(model=tiny_llama, args=args, train_dataset=Dataset.from_list([{"messages": _messages()}]),
                         processing_class=tokenizer)
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]

    # Expected mask, computed independently from character offsets of the rendered text:
    # a token is an answer token iff it lies inside " {assistant} </s>" of some turn.
    text = tokenizer.apply_chat_template(_messages(), tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ids
    spans, pos = [], 0
    for _, assistant in TURNS:
        piece = f" {assistant} </s>"
        start = text.index(piece, pos)
        spans.append((start, start + len(piece)))
        pos = start + len(piece)
    expected = [
        tok if any(s <= a and b <= e for s, e in spans) else -100
        for tok, (a, b) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    assert labels == expected
    for i, (tok, label) in enumerate(zip(ids, labels, strict=True)):
        assert label in (tok, -100), f"token {i} has a label that is not its own id"

    # What carries a label reads back as the two answers with their closing </s>, nothing else.
    labelled = tokenizer.decode([t for t in labels if t != -100])
    assert labelled == " Newton here. The answer is 7. </s> Newton here. The answer is sun, cat, red. </s>"
    # The system prompt and both user turns carry none.
    unlabelled = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab == -100])
    assert SYSTEM in unlabelled and TURNS[0][0] in unlabelled and TURNS[1][0] in unlabelled
    assert "[/INST]" in unlabelled and "[/INST]" not in labelled


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_a_template_without_generation_markers_has_its_assistant_tokens_found(tokenizer):
    """A pretrained model's own ChatML template: the assistant's tokens (and its end of turn)
    are what rendering up to a reply adds to rendering the turns before it."""
    import copy

    from llama2rlhf.recipe.sft import assistant_masked, trl_masks_assistant

    tok = copy.deepcopy(tokenizer)
    assert trl_masks_assistant(tok)  # the Llama 2 template carries the markers
    tok.chat_template = CHATML
    assert not trl_masks_assistant(tok)
    user = [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "The answer is 7."},
            {"role": "user", "content": "And 2 + 2?"}]
    rows = [{"messages": user + [{"role": "assistant", "content": "It is 4."}]},
            {"prompt": user, "completion": [{"role": "assistant", "content": "It is 4."}]}]
    lm, pc = assistant_masked(rows, tok)
    assert lm["input_ids"] == pc["input_ids"] == tok(tok.apply_chat_template(rows[0]["messages"], tokenize=False),
                                                     add_special_tokens=False)["input_ids"]

    def trained(row):
        return tok.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"], strict=True) if m])

    assert trained(lm) == "The answer is 7.<|im_end|>\nIt is 4.<|im_end|>\n"
    assert trained(pc) == "It is 4.<|im_end|>\n"  # prompt-completion: the completion only (GAtt)
    # a template that renders a reply differently once more turns follow cannot be read this way
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}{{ m['content'] + '!' }}{% else %}"
                         "{{ m['content'] }}{% endif %}{% endfor %}")
    with pytest.raises(ValueError, match=r"sft.assistant_only_loss: .* does not render SFT row 1 prefix by prefix"):
        assistant_masked(rows[:1], tok)
