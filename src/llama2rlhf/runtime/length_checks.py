"""Training lengths checked before any stage trains, with the tokenizer each stage uses.

An SFT ``max_length`` below every example leaves TRL nothing to train on: padding-free
batches drop the examples longer than it, and truncation drops those it leaves without a
reply token, and training stops on ``num_samples=0``. A reward model's ``max_length`` below
every comparison cuts every reply it compares (``llama2rlhf.reward.scoring`` keeps the replies
whole for as long as they fit). :func:`length_problems` finds both with the model's tokenizer
(no weights; the toy world's is built here, and only when a byte count cannot settle it).
PPO's ``max_prompt_length`` drops whole middle turns only, never a prompt, so it needs no check.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from llama2rlhf.data.errors import ConfigError, InputError
from llama2rlhf.runtime.model_checks import GGUF_KEY, config_value, source_problem
from llama2rlhf.runtime.models import load_tokenizer

# the most bytes the Llama 2 chat template adds around one message ("<s>[INST] <<SYS>>\n", ...)
TOY_TEMPLATE_BYTES = 32
CHUNK = 256  # examples rendered and tokenized per call


def length_problems(cfg: Any, run_dir: Path, stages: list[str]) -> list[InputError]:
    """``sft.max_length`` below every SFT example (TRL would train on none), and
    ``reward_model.max_length`` below every comparison with its replies whole, found with the
    tokenizer the stage uses. Skipped where the data or the model has a problem of its own
    (reported by their checks), and where the tokenizer is not cheap to get (a GGUF file's
    before the base stage converts it, a Hub model not in the cache)."""
    problems: list[InputError] = []
    tokenizers: dict[bool, Any] = {}  # built once for both stages (the toy one is trained)
    if "sft" in stages:
        problems.extend(_sft_length(cfg, run_dir, tokenizers))
    if "reward" in stages:
        problems.extend(_reward_length(cfg, run_dir, tokenizers))
    return problems


# what one example needs: the most tokens of its parts, each (messages, with the generation
# prompt), plus a number of tokens more
Spans = tuple[list[tuple[list[dict], bool]], int]


def _sft_length(cfg: Any, run_dir: Path, tokenizers: dict) -> list[InputError]:
    stage = cfg.sft
    padding_free = bool(stage.padding_free)

    def spans(row: dict) -> Spans:
        if row.get("messages"):
            messages, first = list(row["messages"]), None
            if stage.assistant_only_loss:
                first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        else:  # prompt-completion: TRL trains on the completion only
            messages, first = list(row["prompt"]) + list(row["completion"]), len(row["prompt"])
        if padding_free:
            return [(messages, False)], 0
        if first is None:
            return [], 1  # every token is trained on: truncation leaves some
        return [(messages[:first], True)], 1  # the prompt, then one reply token at least

    found = _shortest(cfg, run_dir, "sft", spans, int(stage.max_length), tokenizers)
    if found is None:
        return []
    shortest, source = found
    what = ("sft.padding_free drops every example longer than it" if padding_free else
            "its prompt up to the first reply token: TRL drops every example truncation leaves with no reply token")
    return [ConfigError("sft.max_length", f"shorter than every example of {source}: the shortest needs {shortest} "
                                          f"tokens ({what}), so SFT would train on none (TRL: num_samples=0); set "
                                          f"sft.max_length to {shortest} or more", stage.max_length)]


def _reward_length(cfg: Any, run_dir: Path, tokenizers: dict) -> list[InputError]:
    def spans(row: dict) -> Spans:
        # what the reward stage keeps of a long conversation: a system message, the last user
        # message cut to nothing at most, and the reply whole (llama2rlhf.reward.scoring)
        out = []
        for side in ("chosen", "rejected"):
            messages = list(row.get("prompt") or []) + list(row[side])
            head = messages[:1] if messages[0]["role"] == "system" else []
            out.append((head + [{"role": "user", "content": ""}, messages[-1]], False))
        return out, 0

    found = _shortest(cfg, run_dir, "reward", spans, int(cfg.reward_model.max_length), tokenizers)
    if found is None:
        return []
    shortest, source = found
    return [ConfigError("reward_model.max_length", f"shorter than every comparison of {source}: the shortest needs "
                                                   f"{shortest} tokens to keep its two replies whole, so the reward "
                                                   "model would compare cut replies only; set reward_model.max_length "
                                                   f"to {shortest} or more", cfg.reward_model.max_length)]


def _rows(cfg: Any, stage: str) -> tuple[Iterable[list[dict]], str]:
    """The rows ``stage`` trains on, as it draws them, in batches of more and more of them (the
    last one all of them), and where they come from in words; no batch when they cannot be
    loaded (the data check says why)."""
    from llama2rlhf.data import formats
    from llama2rlhf.data.inputs import input_path, load_input

    if cfg.data.source == "toy":
        from llama2rlhf.toyworld import ToyWorld, WorldSpec

        try:
            world = ToyWorld(WorldSpec(**dict(cfg.toyworld)))
        except (TypeError, ValueError):  # a bad toyworld setting, which the config's own check names
            return [], ""
        if stage == "sft":
            return [world.sft_rows(cfg.data.n_sft)], f"the toy world's demonstrations (data.n_sft={cfg.data.n_sft})"
        n = cfg.data.n_pairs
        # the first comparisons of a smaller draw are the first of the stage's (one random
        # stream, in order): one of them that fits settles it without drawing them all
        batches = (world.seed_comparisons(m, "train") for m in dict.fromkeys((min(n, 32), n)))
        return batches, f"the toy world's comparisons (data.n_pairs={n})"
    key = "sft_path" if stage == "sft" else "preference_path"
    loader_log = logging.getLogger(formats.__name__)
    level = loader_log.level
    loader_log.setLevel(logging.ERROR)  # the data check has logged the rows it skipped once
    try:
        rows = formats.limited(load_input(cfg, key).to_list(), cfg, "sft" if stage == "sft" else "preferences")
    except InputError:
        return [], ""
    finally:
        loader_log.setLevel(level)
    if stage == "reward" and not input_path(cfg, "preference_eval_path"):
        rows = rows[max(1, int(len(rows) * cfg.data.eval_fraction)):]  # the held-out share, as the stage splits
    return [rows], f"data.{key}={input_path(cfg, key)}"


def _shortest(cfg: Any, run_dir: Path, stage: str, spans: Callable[[dict], Spans], limit: int,
              tokenizers: dict) -> Optional[tuple[int, str]]:
    """(the fewest tokens any row of ``stage`` needs (``spans``), where the rows come from) when
    every row needs more than ``limit``; None as soon as one fits, or when the rows or the
    tokenizer are not at hand."""
    own = stage == "reward" and bool(config_value(cfg, "reward_model.name_or_path"))

    def tokenizer() -> Any:
        if own not in tokenizers:
            tokenizers[own] = _tokenizer(cfg, run_dir, own)
        return tokenizers[own]

    # the toy tokenizer is byte-level BPE under the Llama 2 template, which adds fewer than
    # TOY_TEMPLATE_BYTES bytes around a message: a row has no more tokens than that bound, so
    # one that fits in it fits, and the tokenizer is trained only when none does
    bound = cfg.model.kind == "toy" and not own
    if not bound and tokenizer() is None:
        return None
    batches, source = _rows(cfg, stage)
    rows: list[dict] = []
    counts: list[int] = []
    for rows in batches:
        counts = []
        for start in range(0, len(rows), CHUNK):
            counts += _needs(tokenizer() if not bound else None, [spans(r) for r in rows[start:start + CHUNK]])
            if min(counts) <= limit:
                return None
    if not rows:
        return None
    if bound:
        if tokenizer() is None:
            return None
        # fewest bytes first: the row that fits, if one does, is likely among them
        order = sorted(range(len(rows)), key=counts.__getitem__)
        counts = []
        for start in range(0, len(order), CHUNK):
            counts += _needs(tokenizer(), [spans(rows[i]) for i in order[start:start + CHUNK]])
            if min(counts) <= limit:
                return None
    return min(counts), source


def _needs(tokenizer: Any, examples: list[Spans]) -> list[int]:
    """The tokens each example needs, with ``tokenizer`` (one call per chunk of examples), or
    the toy tokenizer's bound in bytes without one."""
    flat = [(i, messages, prompt) for i, (parts, _) in enumerate(examples) for messages, prompt in parts]
    lengths: dict[int, int] = {}
    for prompt in (False, True):
        batch = [(i, messages) for i, messages, p in flat if p == prompt]
        if not batch:
            continue
        if tokenizer is None:
            counts = [sum(len(m["content"].encode("utf-8")) + TOY_TEMPLATE_BYTES for m in messages) + TOY_TEMPLATE_BYTES
                      for _, messages in batch]
        else:
            ids = tokenizer.apply_chat_template([messages for _, messages in batch], add_generation_prompt=prompt,
                                                tokenize=True, return_dict=True)["input_ids"]
            counts = [len(x) for x in ids]
        for (i, _), n in zip(batch, counts, strict=True):
            lengths[i] = max(lengths.get(i, 0), n)
    return [lengths.get(i, 0) + extra for i, (_, extra) in enumerate(examples)]


def _tokenizer(cfg: Any, run_dir: Path, own_reward_model: bool) -> Any:
    """The tokenizer the stage renders with (a reward model of its own has its own), or None
    where getting it is not cheap or the model has a problem of its own."""
    trust = bool(getattr(cfg.model, "trust_remote_code", False))
    own = config_value(cfg, "reward_model.name_or_path") if own_reward_model else None
    if own:
        if source_problem("reward_model.name_or_path", own, hub=False) or not _local_or_cached(own):
            return None
        return load_tokenizer(own, trust, fallback_template="plain")
    if cfg.model.kind == "toy":
        from omegaconf import OmegaConf

        # trained on the world build_base trains it on (runtime.models.build_base)
        spec = OmegaConf.to_container(cfg.toyworld) if cfg.data.source == "toy" else {"seed": cfg.toyworld.seed}
        return _toy_tokenizer(json.dumps(spec, sort_keys=True), int(cfg.model.vocab_size))
    path = config_value(cfg, "model.name_or_path")
    if path is None:
        return None
    if config_value(cfg, GGUF_KEY):
        converted = run_dir / "base" / "tokenizer"  # the base stage's conversion, in a resumed run
        return load_tokenizer(str(converted), trust) if (converted / "tokenizer_config.json").is_file() else None
    if source_problem("model.name_or_path", path, hub=False) or not _local_or_cached(path):
        return None
    return load_tokenizer(path, trust)


@functools.lru_cache(maxsize=2)
def _toy_tokenizer(spec: str, vocab_size: int) -> Any:
    """The toy tokenizer of the world ``spec`` (JSON: the ``toyworld`` node, or its seed alone),
    trained once per process: validating again costs nothing."""
    from llama2rlhf.toyworld import ToyWorld, WorldSpec
    from llama2rlhf.toyworld.tokenizer import build_tokenizer

    fields = json.loads(spec)
    world = ToyWorld(seed=fields["seed"]) if list(fields) == ["seed"] else ToyWorld(WorldSpec(**fields))
    return build_tokenizer(world, vocab_size=vocab_size)


def _local_or_cached(value: str) -> bool:
    if Path(value).expanduser().is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(value, "tokenizer_config.json"), str)
