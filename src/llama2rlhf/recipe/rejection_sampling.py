"""The ``rejection_sampling`` stage (paper 3.2.3, "Rejection Sampling").

K samples per prompt from the newest policy at the temperature a per-round search found
best (Figs. 7-8), scored by the newest reward models through the selected combiner
(``reward=<name>``); a selector (``selector=...``) keeps
the training data, by default the best sample per prompt over this and every earlier
round, all re-scored by the newest reward model ("from RLHF-V4 on"); then supervised
fine-tuning on what was kept, from the latest policy (``rs.init_from=previous``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from llama2rlhf import plugins
from llama2rlhf.data.errors import ConfigError
from llama2rlhf.data.formats import unify_sft_formats
from llama2rlhf.data.jsonl import read_jsonl, write_jsonl
from llama2rlhf.data.round_prompts import round_prompts
from llama2rlhf.recipe.sft import train_sft
from llama2rlhf.reward.combined import CombinedReward, is_safety_prompt
from llama2rlhf.runtime import artifacts, distributed
from llama2rlhf.runtime.seeding import item_seeds, seed_everything
from llama2rlhf.sampling import Sample, load_sampler
from llama2rlhf.sampling.candidates import Candidate
from llama2rlhf.sampling.temperature import search_temperature


def _history(ctx) -> list[Candidate]:
    """Samples kept in earlier rounds, once each (the same text kept twice is one sample)."""
    seen, out = set(), []
    for j in range(1, ctx.round):
        path = ctx.state.artifacts.get(artifacts.kept(j))
        for _, row in read_jsonl(path) if path else ():
            c = Candidate.from_dict(row)
            if (c.prompt_id, c.completion) not in seen:
                seen.add((c.prompt_id, c.completion))
                out.append(c)
    return out


def _gold(ctx, candidates: list[Candidate], kept: list[Candidate]) -> dict[str, float]:
    """Toy world only: how right the kept samples are, and whether the reward model can
    pick a right sample at all: its pick per prompt against a random sample
    (``sample_correct``) and against the best any selector could do (``any_correct``)."""
    if ctx.world is None or not kept:
        return {}
    from llama2rlhf.toyworld.tasks import Prompt

    def correct(c: Candidate) -> bool:
        return ctx.world.score(Prompt.from_dict(c.meta["toy_prompt"]), c.completion).correct

    by_prompt: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_prompt.setdefault(c.prompt_id, []).append(c)
    picks, means, anys = [], [], []
    family_picks: dict[str, list[bool]] = {}
    for group in by_prompt.values():
        right = [correct(c) for c in group]
        picks.append(right[max(range(len(group)), key=lambda i: group[i].score)])
        means.append(sum(right) / len(right))
        anys.append(any(right))
        family_picks.setdefault(group[0].meta["toy_prompt"]["family"], []).append(picks[-1])
    kept_scores = [ctx.world.score(Prompt.from_dict(c.meta["toy_prompt"]), c.completion) for c in kept]
    n = len(by_prompt)
    return {"kept_gold_reward": sum(s.reward for s in kept_scores) / len(kept_scores),
            "kept_correct": sum(s.correct for s in kept_scores) / len(kept_scores),
            "rm_pick_correct": sum(picks) / n, "sample_correct": sum(means) / n, "any_correct": sum(anys) / n,
            # where the RM can and cannot judge: RS helps a family only where its pick beats greedy
            "rm_pick_correct_by_family": {f: sum(v) / len(v) for f, v in sorted(family_picks.items())}}


def _listed(result: Any) -> Any:
    """An iterable result as a list (a generator is fine); anything else as it is, for the check."""
    if isinstance(result, (str, bytes, Mapping)) or not isinstance(result, Iterable):
        return result
    return list(result)


def _rows_problem(rows: Any, given: list[dict], ctx: Any) -> str | None:
    if not isinstance(rows, list):
        return plugins.describe_value(rows)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            return f"{plugins.describe_value(row)} as row {i}"
        if "messages" not in row and not ("prompt" in row and "completion" in row):
            return f"a row with keys {', '.join(sorted(map(str, row))) or '(none)'} as row {i}"
    return None


def _selection_problem(kept: Any, candidates: list[Candidate], history: list[Candidate]) -> str | None:
    if not isinstance(kept, list):
        return plugins.describe_value(kept)
    bad = next((i for i, c in enumerate(kept) if not isinstance(c, Candidate)), None)
    return None if bad is None else f"{plugins.describe_value(kept[bad])} at position {bad}"


# what an augmenter and a selector return (hookspecs.register_augmenters, register_selectors)
ROWS = plugins.Returns("a list of TRL conversational rows, each {'messages': [...]} or {'prompt': [...], "
                       "'completion': [...]}", _rows_problem)
SELECTION = plugins.Returns("a list of the llama2rlhf.sampling.candidates.Candidate objects to keep",
                            _selection_problem)


def augment(ctx, rows: list[dict]) -> list[dict]:
    """The selected augmenter (``augmenter=<name>``, Ghost Attention by default) over the
    fine-tuning rows, with its options; a third-party augmenter that fails or returns
    something else than rows is named in the error."""
    item = plugins.selected("augmenters", ctx.cfg)
    with item.blame():
        out = _listed(item.call(rows, ctx))
    return unify_sft_formats(item.check(ROWS, out, rows, ctx))


def select(cfg, candidates: list[Candidate], history: list[Candidate]) -> list[Candidate]:
    """The selected selector (``selector=<name>``) over this round's candidates and the history,
    with its options; a third-party selector that fails or returns something else than
    candidates is named in the error."""
    item = plugins.selected("selectors", cfg)
    with item.blame():
        kept = _listed(item.call(candidates, history))
    return item.check(SELECTION, kept, candidates, history)


def rejection_sampling_stage(ctx) -> dict[str, Any]:
    cfg, rs, k = ctx.cfg, ctx.cfg.rs, ctx.round
    # refused before any sampling: at 0 or below the sampler decodes greedily, and a start
    # the run does not have would stop the stage only after it
    if not rs.temperatures or min(rs.temperatures) <= 0:
        raise ConfigError("rs.temperatures", "must hold one temperature or more, each above 0 (at 0 or below the "
                                             "sampler decodes greedily), e.g. [0.8,1.0,1.2]", list(rs.temperatures))
    if rs.init_from != "previous" and rs.init_from not in ctx.state.artifacts:
        raise ConfigError("rs.init_from", f"the run has no artifact {rs.init_from!r} yet (it has "
                                          f"{', '.join(ctx.state.artifacts)}): 'previous' (the latest policy) or one "
                                          "of those", rs.init_from)
    # every process samples and scores its share of the prompts (llama2rlhf.runtime.distributed)
    rows, metrics = _sample_and_select(ctx)
    # fine-tuning starts from generators of its own, whatever the sampling drew (a LoRA
    # adapter's initial weights, say)
    seed_everything(ctx.seed("train"))
    init = ctx.artifact(artifacts.POLICY) if rs.init_from == "previous" else ctx.artifact(rs.init_from)
    out = train_sft(cfg, rs.train, init, ctx.artifact(artifacts.TOKENIZER), rows, ctx.stage_dir(),
                    stage="rejection_sampling", seed=ctx.seed())
    ctx.state.artifacts[artifacts.POLICY] = out["model_path"]
    ctx.state.artifacts[artifacts.kept(k)] = str(ctx.stage_dir() / "kept.jsonl")
    return {**metrics, "train_loss": out["train_loss"]}


def _sample_and_select(ctx) -> tuple[list[dict], dict[str, Any]]:
    """The fine-tuning rows (kept samples, then the augmenter's) and the stage's metrics but
    training's. Run by every process: the sampling and scoring are shared out among them,
    the selector runs on the main process, which alone writes."""
    cfg, rs, k = ctx.cfg, ctx.cfg.rs, ctx.round
    out_dir = ctx.stage_dir()  # rejection_sampling, or rejection_sampling_after_ppo
    prompts = round_prompts(ctx, "rs", rs.n_prompts)  # the same pool each round: history meets
    policy = ctx.artifact(artifacts.POLICY)
    sampler = load_sampler(cfg, policy)
    reward = CombinedReward.for_run(ctx)

    def sample_and_score(items, t: float, n: int, stream: str, desc: str):
        """K samples of each prompt from a seed per prompt (``stream``), and their rewards;
        both shared out among the processes, a prompt's K samples scored together."""
        seeds = item_seeds(ctx.seed(stream), [p.id for p in items])

        def chunk(rows: list[tuple]) -> list[list[Sample]]:
            return sampler.sample([p.messages for p, _ in rows], n, t, rs.max_new_tokens, desc=desc,
                                  seeds=[seed for _, seed in rows])

        samples = distributed.shard(chunk, list(zip(items, seeds, strict=True)), cfg.shard_size)
        flat = reward.score([p.messages for p in items for _ in range(n)], [s.text for ss in samples for s in ss],
                            [is_safety_prompt(p.meta) for p in items for _ in range(n)], shard_size=cfg.shard_size * n)
        return samples, [flat[i * n:(i + 1) * n] for i in range(len(items))]

    search = prompts[: rs.search_prompts]
    temperature, curves = search_temperature(
        lambda t, n: sample_and_score(search, t, n, f"search T={t:g}", f"temperature search (T={t:g})")[1],
        list(rs.temperatures), rs.k)

    samples, scores = sample_and_score(prompts, temperature, rs.k, "samples",
                                       f"rejection sampling (K={rs.k}, T={temperature:g})")
    candidates = [Candidate(p.id, p.messages, s.text, sc, k, p.meta)
                  for p, ss, scs in zip(prompts, samples, scores, strict=True) for s, sc in zip(ss, scs, strict=True)]
    history = _history(ctx)
    if history:
        rescored = reward.score([c.prompt for c in history], [c.completion for c in history],
                                [is_safety_prompt(c.meta) for c in history], desc="re-scoring history",
                                shard_size=cfg.shard_size)
        history = [c.rescored(s) for c, s in zip(history, rescored, strict=True)]
    kept = distributed.main_process_only(_select_and_write, ctx, candidates, history, out_dir)
    sampler = reward = None  # free the models before fine-tuning

    if not kept:
        raise RuntimeError(f"selector {cfg.selector.name!r} kept no samples in round {k}; nothing to fine-tune on")
    rows = [{"messages": c.prompt + [{"role": "assistant", "content": c.completion}]} for c in kept]
    n_kept_rows = len(rows)
    # every process augments (Ghost Attention shares its dialogues out among them); the main
    # process's rows are the ones every process trains on
    rows = distributed.from_main(augment(ctx, rows))
    return rows, {
        "temperature": temperature,
        "best_of_n": curves,
        "k": rs.k,
        "n_prompts": len(prompts),
        "n_kept": len(kept),
        "kept_from_earlier_rounds": sum(c.round < k for c in kept),
        "kept_mean_score": sum(c.score for c in kept) / len(kept),
        **_gold(ctx, candidates, kept),
        "n_augmented": len(rows) - n_kept_rows,
    }


def _select_and_write(ctx, candidates: list[Candidate], history: list[Candidate], out_dir) -> list[Candidate]:
    kept = select(ctx.cfg, candidates, history)
    write_jsonl(out_dir / "candidates.jsonl", [c.to_dict() for c in candidates])
    write_jsonl(out_dir / "kept.jsonl", [c.to_dict() for c in kept])
    return kept
