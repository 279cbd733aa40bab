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
from typing import Any

from llama2rlhf import plugins
from llama2rlhf.data.jsonl import read_jsonl, write_jsonl
from llama2rlhf.data.round_prompts import round_prompts
from llama2rlhf.recipe.annotation import AwaitingLabels, PairToLabel
from llama2rlhf.reward.combined import is_safety_prompt
from llama2rlhf.runtime import artifacts, distributed
from llama2rlhf.sampling import load_sampler


def _sample_pairs(ctx, prompts, temperatures) -> list[PairToLabel]:
    cfg, k = ctx.cfg, ctx.round
    sampler = load_sampler(cfg, ctx.artifact(artifacts.POLICY))
    messages = [p.messages for p in prompts]
    a, b = (sampler.sample(messages, 1, t, cfg.collect.max_new_tokens, desc=f"collecting (T={t:g})")
            for t in temperatures)
    # identical responses tell an annotator nothing
    return [PairToLabel(f"r{k}-{i}", p.messages, x[0].text, y[0].text, p.meta)
            for i, (p, x, y) in enumerate(zip(prompts, a, b, strict=True)) if x[0].text != y[0].text]


def collect_stage(ctx) -> dict[str, Any]:
    # sampling and labelling on the main process alone; the others wait (llama2rlhf.runtime.distributed)
    return distributed.main_process_only(_collect, ctx)


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


def load_annotator(ctx):
    """The selected annotator (``annotator=<name>``), made with the run's config and the toy
    world, its options as keyword arguments (``run:<artifact>`` values resolved); a
    third-party annotator that fails is named in the error, except when it raises
    ``AwaitingLabels``, which stops the run as it means to."""
    cfg = _with_run_checkpoints(ctx)
    item = plugins.selected("annotators", cfg)
    return item.wrap(item.call(cfg, ctx.world), "annotate", passthrough=(AwaitingLabels,))


def _collect(ctx) -> dict[str, Any]:
    cfg, k = ctx.cfg, ctx.round
    out_dir = ctx.stage_dir("collect")
    temperatures = list(cfg.collect.temperatures)
    if len(temperatures) != 2:
        raise ValueError(f"collect.temperatures must hold two temperatures (one per response), got {temperatures}")
    # the annotator first: a bad annotator setting stops the stage before the sampling, not after
    annotator = load_annotator(ctx)
    prompts = round_prompts(ctx, f"collect:{k}", cfg.collect.n_prompts)
    pairs_path = out_dir / "pairs.jsonl"
    if pairs_path.exists():
        # a resumed round labels the pairs it already sampled, never a fresh draw: labels
        # collected in between (annotator=file) belong to these texts
        pairs = [PairToLabel(**row) for _, row in read_jsonl(pairs_path)]
    else:
        pairs = _sample_pairs(ctx, prompts, temperatures)
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
