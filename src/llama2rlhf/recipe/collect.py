"""The ``collect`` stage: fresh comparisons from the newest policy (paper 3.2.1).

Each RLHF round, Llama 2's annotators compared two responses sampled from the latest
models, so the reward model keeps up with the policy's distribution. Here: one response
per temperature of ``collect.temperatures`` for each of ``collect.n_prompts`` new prompts,
labelled by the configured annotator (``annotator=toy``, ``annotator=file`` for people, or
``annotator=reward_model`` for a judge model's AI feedback).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any, Mapping

from llama2rlhf import plugins
from llama2rlhf.data.errors import ConfigError
from llama2rlhf.data.jsonl import read_jsonl, write_jsonl
from llama2rlhf.data.round_prompts import round_prompts
from llama2rlhf.data.strength import STRENGTHS
from llama2rlhf.recipe.annotation import AwaitingLabels, PairToLabel
from llama2rlhf.reward.combined import is_safety_prompt
from llama2rlhf.runtime import artifacts, distributed
from llama2rlhf.runtime.seeding import item_seeds
from llama2rlhf.sampling import load_sampler


def _sample_pairs(ctx, prompts, temperatures) -> list[PairToLabel]:
    """Two replies per prompt, one per temperature, each from its own seed per prompt; the
    prompts are shared out among the processes (``shard_size`` per unit of work)."""
    cfg, k = ctx.cfg, ctx.round
    sampler = load_sampler(cfg, ctx.artifact(artifacts.POLICY))
    seeds = [item_seeds(ctx.seed(f"reply {j}"), [p.id for p in prompts]) for j in range(len(temperatures))]

    def replies(chunk: list[tuple]) -> list[tuple[str, str]]:
        messages = [p.messages for p, *_ in chunk]
        a, b = (sampler.sample(messages, 1, t, cfg.collect.max_new_tokens, desc=f"collecting (T={t:g})",
                               seeds=[row[1 + j] for row in chunk]) for j, t in enumerate(temperatures))
        return [(x[0].text, y[0].text) for x, y in zip(a, b, strict=True)]

    texts = distributed.shard(replies, list(zip(prompts, *seeds, strict=True)), cfg.shard_size)
    # identical responses tell an annotator nothing (chat templates strip the white space around them)
    return [PairToLabel(f"r{k}-{i}", p.messages, x, y, p.meta)
            for i, (p, (x, y)) in enumerate(zip(prompts, texts, strict=True)) if x.strip() != y.strip()]


def collect_stage(ctx) -> dict[str, Any]:
    cfg, k = ctx.cfg, ctx.round
    temperatures = list(cfg.collect.temperatures)
    if len(temperatures) != 2 or min(temperatures) <= 0:
        raise ConfigError("collect.temperatures", "must hold two temperatures above 0, one per reply of a pair, e.g. "
                                                  "[0.7,1.2]", temperatures)
    # the annotator first, on the main process, which labels: a bad annotator setting stops
    # the stage before the sampling, not after
    annotator = distributed.on_main_process(load_annotator, ctx)
    prompts = round_prompts(ctx, f"collect:{k}", cfg.collect.n_prompts)
    pairs_path = ctx.stage_dir("collect") / "pairs.jsonl"
    # a resumed round labels the pairs it already sampled, never a fresh draw: labels
    # collected in between (annotator=file) belong to these texts
    pairs = None if distributed.from_main(pairs_path.exists()) else _sample_pairs(ctx, prompts, temperatures)
    # labelling and writing on the main process alone; the others wait (llama2rlhf.runtime.distributed)
    return distributed.main_process_only(_label, ctx, annotator, prompts, pairs, pairs_path)


def _with_run_checkpoints(ctx):
    """The config with each annotator option ``run:<artifact>`` replaced by the path of that
    checkpoint of this run: ``annotator.name_or_path=run:reward`` has the newest reward model
    (the one trained on the comparisons so far) judge the new pairs."""
    from omegaconf import OmegaConf

    names = {key: value[len("run:"):] for key, value in ctx.cfg.annotator.items()
             if isinstance(value, str) and value.startswith("run:")}
    if not names:
        return ctx.cfg
    return OmegaConf.merge(ctx.cfg, {"annotator": {key: ctx.artifact(name) for key, name in names.items()}})


ROW_KEYS = ("id", "prompt", "chosen", "rejected", "strength")


def _labels_problem(rows: Any, pairs: list[PairToLabel], workdir: Any = None) -> str | None:
    if not isinstance(rows, list):
        return plugins.describe_value(rows)
    if len(rows) != len(pairs):
        return f"{len(rows)} rows for {len(pairs)} pairs"
    for i, (row, pair) in enumerate(zip(rows, pairs, strict=True)):
        if not isinstance(row, Mapping):
            return f"{plugins.describe_value(row)} as row {i}"
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            return f"a row without {', '.join(missing)} as row {i}"
        if row["id"] != pair.id:
            return f"row {i} with id {row['id']!r} for pair {pair.id!r}"
        if row["strength"] not in STRENGTHS:
            return f"row {i} with strength {row['strength']!r}"
    return None


# what an annotator factory makes, and what its annotate returns (hookspecs.register_annotators)
ANNOTATOR = plugins.Returns("an object with annotate(pairs, workdir)",
                            lambda made, cfg, world: None if callable(getattr(made, "annotate", None))
                            else plugins.describe_value(made))
LABELS = plugins.Returns(f"one preference row per pair, in the pairs' order, with {', '.join(ROW_KEYS)} (the pair's "
                         f"id; strength one of {', '.join(STRENGTHS)})", _labels_problem)


def load_annotator(ctx):
    """The selected annotator (``annotator=<name>``), made with the run's config and the toy
    world, its options as keyword arguments (``run:<artifact>`` values resolved); a
    third-party annotator that fails or returns something else than one row per pair is
    named in the error, except when it raises ``AwaitingLabels``, which stops the run as
    it means to."""
    cfg = _with_run_checkpoints(ctx)
    item = plugins.selected("annotators", cfg)
    annotator = item.check(ANNOTATOR, item.call(cfg, ctx.world), cfg, ctx.world)
    return item.wrap(annotator, "annotate", passthrough=(AwaitingLabels,), returns={"annotate": LABELS})


def _label(ctx, annotator, prompts, pairs: list[PairToLabel] | None, pairs_path) -> dict[str, Any]:
    k, out_dir = ctx.round, pairs_path.parent
    if pairs is None:
        pairs = [PairToLabel(**row) for _, row in read_jsonl(pairs_path)]
    else:
        write_jsonl(pairs_path, [asdict(p) for p in pairs])
    rows = annotator.annotate(pairs, out_dir)
    for pair, row in zip(pairs, rows, strict=True):
        # the prompt's safety label travels with its comparison: it picks the safety RM's data
        if "safety" not in row and ("safety" in pair.meta or "toy_prompt" in pair.meta):
            row["safety"] = is_safety_prompt(pair.meta)
    path = out_dir / "comparisons.jsonl"
    write_jsonl(path, rows)
    ctx.state.artifacts[artifacts.comparisons(k)] = str(path)
    return {
        "n_prompts": len(prompts),
        "n_pairs": len(rows),
        "n_identical_dropped": len(prompts) - len(pairs),
        "strengths": dict(Counter(r["strength"] for r in rows)),
    }
