"""A byte-level BPE tokenizer trained offline on the toy world's text.

Byte-level, like Llama's tokenizer family, so any string round-trips; trained in a second
on text the world generates itself, so nothing is downloaded. It carries the Llama 2 chat
template, so every later stage formats prompts exactly as for a real Llama 2 model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama2rlhf.data.templates import llama2_chat_template
from llama2rlhf.toyworld.constraints import FIGURES, HOBBIES, STYLES, apply_all, sample_constraints, system_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from llama2rlhf.toyworld.world import ToyWorld

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def _corpus(world: "ToyWorld", n_prompts: int) -> list[str]:
    rng = world.rng("tokenizer")
    lines = ["[INST] <<SYS>>\n\n<</SYS>>\n\n [/INST]"]
    lines += [f"Act as {f}. {f} here." for f in FIGURES] + [f"You love {h}. I love {h}." for h in HOBBIES]
    lines += [f"Answer in {s}." for s in STYLES]
    for split in ("train", "heldout"):
        for p in world.prompts(split, n_prompts // 2, purpose="tokenizer"):
            cs = sample_constraints(rng)
            lines.append(f"[INST] <<SYS>>\n{system_prompt(cs)}\n<</SYS>>\n\n{p.text} [/INST]")
            for reply in world.candidates(p, rng):
                lines.append(" " + reply)
                lines.append(" " + apply_all(reply, cs))
    return lines


def build_tokenizer(world: "ToyWorld", vocab_size: int = 1024, n_prompts: int = 4000) -> "PreTrainedTokenizerFast":
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(world, n_prompts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=2048,
    )
    fast.chat_template = llama2_chat_template()
    return fast
