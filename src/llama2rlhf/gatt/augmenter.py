"""Built-in augmenters: ``gatt`` (Ghost Attention, paper 3.3) and ``none``.

``gatt`` adds multi-turn dialogues to rejection sampling's fine-tuning data from round
``gatt.start_round`` on (Llama 2 began after RLHF-V3): an instruction is put in front
of every user turn while the newest policy answers, then kept only as the system prompt
of the training example, whose loss falls on the last reply alone. See
:mod:`llama2rlhf.gatt.dialogue` for the steps.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from llama2rlhf import hookimpl
from llama2rlhf.data.errors import ConfigError, InputError
from llama2rlhf.data.jsonl import read_jsonl, write_json, write_jsonl
from llama2rlhf.runtime import artifacts, distributed
from llama2rlhf.runtime.seeding import item_seeds

log = logging.getLogger(__name__)


def constraint_source(cfg: Any):
    from llama2rlhf.gatt.dialogue import ListConstraints, ToyConstraints

    g = cfg.gatt
    if g.constraints == "toy":
        return ToyConstraints(g.max_constraints, list(g.toy_kinds))
    if g.constraints == "list":
        return ListConstraints(list(g.figures), list(g.languages), list(g.hobbies), g.max_constraints)
    raise ConfigError("gatt.constraints", "must be toy or list", g.constraints)


def token_fitter(tokenizer, max_length: int):
    """``fit(messages)`` for :func:`ghost_attention.converse`: the dialogue, shortened to fit."""
    from llama2rlhf.gatt.dialogue import fit_dialogue

    def n_tokens(messages):
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=messages[-1]["role"] == "user",
                                                 tokenize=True, return_dict=True)["input_ids"])

    return lambda messages: fit_dialogue(messages, n_tokens, max_length)


def _verdict_problem(verdict: Any, instruction: Any = None, reply: Any = None) -> str | None:
    from llama2rlhf.plugins import describe_value

    numpy_bool = type(verdict).__module__ == "numpy" and type(verdict).__name__ in ("bool", "bool_")
    return None if verdict is None or isinstance(verdict, bool) or numpy_bool else describe_value(verdict)


def load_checker(cfg: Any):
    """The selected checker (``checker=<name>``, made with its options) as
    ``check(instruction, reply)``; a third-party checker that fails, or returns something
    else than a check or a verdict (True, False or None), is named in the error."""
    from llama2rlhf import plugins

    item = plugins.selected("checkers", cfg)
    made = plugins.Returns("a check(instruction, reply) callable",
                           lambda check, cfg: None if callable(check) else plugins.describe_value(check))
    verdict = plugins.Returns("True (the reply follows the instruction), False (it breaks it) or None (cannot tell)",
                              _verdict_problem)
    return item.wrap(item.check(made, item.call(cfg), cfg), returns=verdict)


def user_turns(ctx, n: int) -> list[tuple[str, bool]]:
    """``n`` user messages from the round's prompt pool, for dialogues, each with whether it
    is a safety prompt."""
    from llama2rlhf.data.round_prompts import round_prompts
    from llama2rlhf.reward.combined import is_safety_prompt

    pool = [(p.messages[-1]["content"], is_safety_prompt(p.meta)) for p in round_prompts(ctx, f"gatt:{ctx.round}", n)]
    if not pool:
        raise InputError("GAtt needs user turns, and the round's prompt pool is empty: data.prompt_path has no prompt "
                         "that data.eval_fraction leaves for training")
    return [pool[i % len(pool)] for i in range(n)]  # a small pool repeats across dialogues


def best_last_replies(ctx, shown: list[list[str]], safety: list[list[bool]], replies: list[list[str]],
                      candidates: dict[int, list[str]]) -> int:
    """Replace the last reply of each dialogue in ``candidates`` by the one of its
    candidates (the samples that follow the instruction) that the round's reward scores
    best, for the last user turn as the model saw it; returns how many changed.

    The last reply is the one a GAtt example teaches (paper 3.3), and following the
    instruction says nothing of being right: the first sample in style can be a wrong
    answer, which the fine-tuning would then teach. This is rejection sampling (paper 3.2.3) within the
    dialogue. Without a reward model yet, the first candidate stays."""
    from llama2rlhf.reward.combined import CombinedReward

    if not candidates or not any(a in ctx.state.artifacts for a in artifacts.REWARD_MODELS.values()):
        return 0
    reward = CombinedReward.for_run(ctx)
    flat = [(d, text) for d, texts in sorted(candidates.items()) for text in texts]
    scores = reward.score([[{"role": "user", "content": shown[d][len(replies[d]) - 1]}] for d, _ in flat],
                          [text for _, text in flat], [safety[d][len(replies[d]) - 1] for d, _ in flat],
                          desc=f"GAtt last replies (round {ctx.round})", shard_size=ctx.cfg.shard_size)
    best: dict[int, tuple[float, str]] = {}
    for (d, text), score in zip(flat, scores, strict=True):
        if d not in best or score > best[d][0]:
            best[d] = (score, text)
    changed = 0
    for d, (_, text) in best.items():
        changed += replies[d][-1] != text
        replies[d][-1] = text
    return changed


def gatt(rows: list[dict], ctx) -> list[dict]:
    from llama2rlhf.gatt.dialogue import converse, training_example, user_message
    from llama2rlhf.runtime.models import load_tokenizer
    from llama2rlhf.sampling import load_sampler

    g = ctx.cfg.gatt
    if ctx.round < g.start_round:
        return rows
    earlier = ctx.run_dir / ctx.stage_key("rejection_sampling") / "gatt" / "examples.jsonl"
    if g.once_per_round and ctx.current_stage != "rejection_sampling" and earlier.exists():
        examples = [row for _, row in read_jsonl(earlier)]
        log.info("GAtt round %d: %d examples sampled earlier in the round (gatt.once_per_round)",
                 ctx.round, len(examples))
        return rows + examples
    if not 1 <= g.min_turns <= g.max_turns:
        raise ConfigError("gatt.max_turns", f"need 1 <= gatt.min_turns <= gatt.max_turns; gatt.min_turns is {g.min_turns}",
                          g.max_turns)
    policy = ctx.artifact(artifacts.POLICY)
    # the model GAtt started from: evaluation reports adherence before and after it
    ctx.state.artifacts.setdefault(artifacts.GATT_BASELINE, policy)
    rng = random.Random(f"{ctx.cfg.seed}:gatt:{ctx.round}")
    source = constraint_source(ctx.cfg)
    instructions = [source.sample(rng) for _ in range(g.n_dialogues)]
    lengths = [rng.randint(g.min_turns, g.max_turns) for _ in instructions]
    pool = user_turns(ctx, sum(lengths))
    turns, safety, start = [], [], 0
    for n in lengths:
        turns.append([text for text, _ in pool[start:start + n]])
        safety.append([flag for _, flag in pool[start:start + n]])
        start += n

    check = load_checker(ctx.cfg) if g.filter else None
    last_turn: dict[int, list[str]] = {}  # dialogue -> its last turn's samples that follow the instruction

    def follows(d: int, text: str) -> bool:
        return check is None or check(instructions[d], text) is not False

    def pick(d: int, t: int, texts: list[str]) -> str | None:
        # the first sample that does not break the instruction; none: the dialogue ends. At
        # the last turn every such sample is kept for best_last_replies to rank; before it
        # the checker (maybe a judge model) stops at the first
        if g.rank_last_turn and t == len(turns[d]):
            ok = [x for x in texts if follows(d, x)]
            if ok:
                last_turn[d] = ok
            return ok[0] if ok else None
        return next((x for x in texts if follows(d, x)), None)

    sampler = load_sampler(ctx.cfg, policy)
    tokenizer = load_tokenizer(policy, trust_remote_code=ctx.cfg.model.trust_remote_code)
    fit = token_fitter(tokenizer, g.max_length)
    # a training row must fit the fine-tuning length too: TRL cuts from the right, which
    # would cut the only reply that teaches
    fit_row = token_fitter(tokenizer, min(g.max_length, ctx.cfg.rs.train.max_length))
    shown = [[user_message(i, u) for u in us] for i, us in zip(instructions, turns, strict=True)]
    dialogue_seeds = item_seeds(ctx.seed(f"gatt dialogues {ctx.round}"), range(len(instructions)))

    def chunk(ds: list[int]) -> list[tuple[list[str], list[str] | None]]:
        got = converse(sampler, [[] for _ in ds], [shown[d] for d in ds], g.temperature, g.max_new_tokens, fit,
                       n=g.samples_per_turn if g.filter else 1, pick=lambda i, t, texts: pick(ds[i], t, texts),
                       desc=f"GAtt dialogues (round {ctx.round})", first_draw=g.first_draw if g.filter else 0,
                       seeds=[dialogue_seeds[d] for d in ds])
        return [(r, last_turn.get(d)) for d, r in zip(ds, got, strict=True)]

    # dialogues shared out among the processes, each chunk held together from turn to turn
    done = distributed.shard(chunk, list(range(len(instructions))), ctx.cfg.shard_size)
    replies = [r for r, _ in done]
    last_turn = {d: ok for d, (_, ok) in enumerate(done) if ok is not None}
    reranked = best_last_replies(ctx, shown, safety, replies, last_turn)
    examples, dropped = [], 0
    broken = sum(len(rs) < len(us) for us, rs in zip(turns, replies, strict=True))
    for ins, us, rs in zip(instructions, turns, replies, strict=True):
        if rs:
            system = ins.short if rng.random() < g.shorten else ins.text
            ex = training_example(system, list(zip(us, rs, strict=False)))
            msgs, n = fit_row(ex["prompt"] + ex["completion"])
            dropped += n
            examples.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    if dropped:
        log.info("GAtt round %d: dropped %d middle turns from training dialogues to fit %d tokens (system prompt kept)",
                 ctx.round, dropped, min(g.max_length, ctx.cfg.rs.train.max_length))
    out_dir = ctx.stage_dir() / "gatt"
    turns_kept = [(len(ex["prompt"]) - 1) // 2 + 1 for ex in examples]
    stats = {"round": ctx.round, "n_dialogues": len(instructions), "n_examples": len(examples),
             "ended_by_filter": broken, "last_reply_reranked": reranked, "middle_turns_dropped": dropped,
             "mean_turns": sum(turns_kept) / max(1, len(turns_kept)),
             "baseline_model": ctx.state.artifacts[artifacts.GATT_BASELINE]}
    if distributed.is_main_process():
        write_jsonl(out_dir / "examples.jsonl", examples)
        write_json(out_dir / "stats.json", stats)
    log.info("GAtt round %d: %d examples from %d dialogues (%d ended where no sample followed the instruction), "
             "%.1f turns on average",
             ctx.round, len(examples), len(instructions), broken, stats["mean_turns"])
    return rows + examples


def none(rows: list[dict], ctx) -> list[dict]:
    return rows


@hookimpl(trylast=True)
def register_augmenters(register):
    register("gatt", gatt)
    register("none", none)


@hookimpl
def register_configs(config_store):
    """The ``gatt`` node: Ghost Attention's settings (:mod:`llama2rlhf.gatt.config`)."""
    from llama2rlhf.gatt.config import store_config

    store_config(config_store)
