"""Built-in annotators: the toy world's simulated rater, a file exchange for people, and a
judge reward model.

All return comparisons in TRL's explicit-prompt preference format plus the four-point
``strength`` label of Llama 2's annotation protocol (paper 3.2.1).

Llama 2's comparisons were labelled by human annotators (paper 3.2.1); ``annotator=file``
is that protocol on real data. ``annotator=reward_model`` replaces the people with AI
feedback (RLAIF-style): a judge reward model scores both replies of each pair, the reply
it scores higher is ``chosen``, and the score gap, ranked among the gaps of the pairs
labelled with it, gives the strength label. RLHF rounds then run on real data without
anyone labelling; the policy is trained towards the judge's preferences, with its flaws.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

from llama2rlhf import hookimpl
from llama2rlhf.config import AnnotatorConfig
from llama2rlhf.data.errors import ConfigError, DataError, InputError
from llama2rlhf.data.jsonl import read_jsonl, write_jsonl
from llama2rlhf.data.strength import STRENGTHS
from llama2rlhf.recipe.annotation import AwaitingLabels, PairToLabel


class ToyAnnotator:
    """The toy world's simulated annotator: gold difference seen through rater noise."""

    def __init__(self, world: Any, seed: int = 0):
        if world is None:
            raise ConfigError("annotator", "labels with the toy world's oracle: it needs data.source=toy; on real "
                                           "data use annotator=reward_model or annotator=file", "toy")
        self.world = world
        self.seed = seed

    def annotate(self, pairs: Sequence[PairToLabel], workdir: Path) -> list[dict]:
        from llama2rlhf.toyworld.tasks import Prompt

        rows = []
        for pair in pairs:
            # one generator per pair: the label of a pair does not depend on what else is
            # labelled with it, so a resumed round relabels identically
            rng = random.Random(f"{self.seed}:annotate:{pair.id}")
            row = self.world.compare(Prompt.from_dict(pair.meta["toy_prompt"]), pair.a, pair.b, rng)
            rows.append({"id": pair.id, **row})
        return rows


class FileExchangeAnnotator:
    """Human labelling through files: write the pairs, stop, read the labels next run."""

    TO_LABEL = "to_label.jsonl"
    LABELLED = "labelled.jsonl"

    def annotate(self, pairs: Sequence[PairToLabel], workdir: Path) -> list[dict]:
        to_label, labelled = workdir / self.TO_LABEL, workdir / self.LABELLED
        if not labelled.exists():
            if not to_label.exists():
                write_jsonl(to_label, [{"id": p.id, "prompt": p.prompt, "response_a": p.a, "response_b": p.b}
                                       for p in pairs])
            raise AwaitingLabels(to_label, labelled, len(pairs))
        return self.read_labels(pairs, labelled)

    @staticmethod
    def read_labels(pairs: Sequence[PairToLabel], labelled: Path) -> list[dict]:
        by_id = {p.id: p for p in pairs}
        seen: dict[str, dict] = {}
        file = str(labelled)
        for line, row in read_jsonl(labelled):
            pid = row.get("id")
            if not isinstance(pid, str) or pid not in by_id:
                raise DataError(file, line, "id", f"{pid!r} is not the id of a pair in {FileExchangeAnnotator.TO_LABEL}")
            if pid in seen:
                raise DataError(file, line, "id", f"{pid!r} is labelled twice")
            preferred = row.get("preferred")
            if preferred not in ("a", "b"):
                raise DataError(file, line, "preferred", f"must be \"a\" or \"b\", got {preferred!r}")
            strength = row.get("strength")
            if strength not in STRENGTHS:
                raise DataError(file, line, "strength", f"{strength!r} is not one of {', '.join(STRENGTHS)}")
            pair = by_id[pid]
            chosen, rejected = (pair.a, pair.b) if preferred == "a" else (pair.b, pair.a)
            seen[pid] = {"id": pid, "prompt": pair.prompt, "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}], "strength": strength}
        missing = [p.id for p in pairs if p.id not in seen]
        if missing:
            raise DataError(file, None, "id", f"{len(missing)} of {len(pairs)} pairs have no label yet "
                                              f"(first: {missing[0]!r})")
        return [seen[p.id] for p in pairs]


def label_problems(cfg: Any, run_dir: Path, stages: list[str]) -> list[InputError]:
    """The labels people wrote for ``annotator=file`` in a run waiting for them: each collect
    stage's ``labelled.jsonl`` read against its ``pairs.jsonl`` as the stage will read it
    (a check of ``llama2rlhf.recipe.validate``)."""
    if getattr(cfg.annotator, "name", None) != "file" or "collect" not in stages:
        return []
    problems: list[InputError] = []
    for folder in sorted({run_dir / "collect", *run_dir.glob("round_*/collect")}):
        labelled, pairs = folder / FileExchangeAnnotator.LABELLED, folder / "pairs.jsonl"
        if not (labelled.is_file() and pairs.is_file()) or (folder / "comparisons.jsonl").exists():
            continue  # nothing labelled yet, or the stage has read the labels already
        try:
            FileExchangeAnnotator.read_labels([PairToLabel(**row) for _, row in read_jsonl(pairs)], labelled)
        except InputError as err:
            problems.append(err)
    return problems


@dataclass
class RewardModelAnnotatorConfig(AnnotatorConfig):
    """``annotator=reward_model``: comparisons labelled by a judge reward model (AI feedback).

    Parameters:
        name_or_path (`str`, *required*):
            The judge: a Hub id or a local folder of a sequence classifier with one output
            (a reward model, e.g. the ``model`` folder of another run's reward stage), or
            ``run:reward`` for this run's newest reward model (``run:<artifact>`` names any
            checkpoint of the run, resolved by the collect stage). Its
            conversations are rendered with its own tokenizer and chat template, loaded
            from the same place, never the policy's. Loaded with ``model.dtype`` and
            ``model.trust_remote_code``, on ``device``.
        safety_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A second judge for the pairs whose prompt is a safety prompt
            (``llama2rlhf.reward.combined.is_safety_prompt`` of the pair's ``meta``), as
            Llama 2 kept safety and helpfulness reward models apart (paper 3.2.2). `None`:
            ``name_or_path`` judges every pair.
        strength_quantiles (`list[float]`, *optional*, defaults to `[0.25, 0.5, 0.75]`):
            Three increasing values in (0, 1): the quantiles of the score gaps
            ``|r_a - r_b|`` that separate the four strength labels. A gap above the third
            quantile's value is ``significantly_better``, above the second ``better``,
            above the first ``slightly_better``, else ``negligibly_better``. The quantiles
            are taken over the gaps of the pairs labelled together (one collect stage's
            pairs, one judge's), with linear interpolation (numpy's default).
        batch_size (`int`, *optional*, defaults to `32`):
            Conversations per forward pass of the judge.
    """

    name: str = "reward_model"
    name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "The judge: a Hub id or local folder of a sequence classifier with one output; required."},
    )
    safety_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "A second judge for the pairs of safety prompts; None: name_or_path judges every pair."},
    )
    strength_quantiles: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        metadata={"help": "Three increasing quantiles in (0, 1) of the round's score gaps that separate the "
                          "four strength labels."},
    )
    batch_size: int = field(default=32, metadata={"help": "Conversations per forward pass of the judge."})


def strength_thresholds(gaps: Sequence[float], quantiles: Sequence[float]) -> list[float]:
    """The value of each quantile of ``gaps``, linearly interpolated (numpy's default method)."""
    ranked = sorted(gaps)
    out = []
    for q in quantiles:
        pos = q * (len(ranked) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ranked) - 1)
        out.append(ranked[lo] + (ranked[hi] - ranked[lo]) * (pos - lo))
    return out


def strength_of_gap(gap: float, thresholds: Sequence[float]) -> str:
    """The strength label of a score gap: one step stronger for each threshold it exceeds.

    Strictly exceeds: a gap equal to a threshold stays in the weaker label, so a tie (gap 0)
    is ``negligibly_better`` and pairs whose gaps are all equal (or a single pair) get no
    stronger label than the data separates.
    """
    passed = sum(gap > t for t in thresholds)
    return STRENGTHS[len(STRENGTHS) - 1 - passed]


def check_quantiles(quantiles: Any) -> list[float]:
    """``annotator.strength_quantiles`` as floats, or a ``ValueError`` that names the key."""
    values = list(quantiles) if isinstance(quantiles, (list, tuple)) else [quantiles]
    ok = (isinstance(quantiles, (list, tuple)) and len(values) == len(STRENGTHS) - 1
          and all(isinstance(q, (int, float)) and not isinstance(q, bool) and 0 < q < 1 for q in values)
          and all(a < b for a, b in zip(values, values[1:], strict=False)))
    if not ok:
        raise ConfigError("annotator.strength_quantiles", f"must be {len(STRENGTHS) - 1} increasing values in (0, 1), "
                          f"one per boundary between the strength labels {', '.join(STRENGTHS)}", values)
    return [float(q) for q in values]


class RewardModelAnnotator:
    """AI feedback: a judge reward model labels each pair (see the module docstring).

    The label of a pair depends only on the judge's two scores and the strength
    thresholds; the thresholds are the ``strength_quantiles`` of the score gaps of the
    pairs being labelled together (this collect stage's, per judge: two judges' scores are
    on different scales). A resumed round labels the same pairs again (``pairs.jsonl``),
    so it gets the same thresholds.
    """

    def __init__(self, cfg: Any, options: RewardModelAnnotatorConfig):
        if not options.name_or_path:
            raise ConfigError("annotator.name_or_path", "is not set: annotator=reward_model needs its judge, a Hub id "
                                                        "or a local folder of a sequence classifier with one output "
                                                        "(a reward model), or run:reward")
        self.cfg = cfg
        self.options = options
        self.quantiles = check_quantiles(options.strength_quantiles)
        # before the collect stage samples anything: a missing judge, or a policy given as the
        # judge, stops the run now
        from llama2rlhf.runtime.model_checks import source_problem

        for key, judge in (("annotator.name_or_path", options.name_or_path),
                           ("annotator.safety_name_or_path", options.safety_name_or_path)):
            if judge:
                problem = source_problem(key, judge, hub=False)
                if problem is not None:
                    raise problem
                check_judge(judge, cfg)

    def judge_for(self, pair: PairToLabel) -> str:
        from llama2rlhf.reward.combined import is_safety_prompt

        if self.options.safety_name_or_path and is_safety_prompt(pair.meta):
            return self.options.safety_name_or_path
        return self.options.name_or_path

    def annotate(self, pairs: Sequence[PairToLabel], workdir: Path) -> list[dict]:
        by_judge: dict[str, list[int]] = {}
        for i, pair in enumerate(pairs):
            by_judge.setdefault(self.judge_for(pair), []).append(i)
        rows: list[dict] = [{} for _ in pairs]
        for judge, members in by_judge.items():
            group = [pairs[i] for i in members]
            # replies a, then replies b: one scoring call, each prompt's two replies share its prefix
            scores = self.score(judge, [[*p.prompt, {"role": "assistant", "content": p.a}] for p in group]
                                + [[*p.prompt, {"role": "assistant", "content": p.b}] for p in group])
            n = len(members)
            gaps = [abs(scores[j] - scores[n + j]) for j in range(n)]
            thresholds = strength_thresholds(gaps, self.quantiles)
            for j, i in enumerate(members):
                rows[i] = self.row(pairs[i], scores[j], scores[n + j], thresholds)
        return rows

    @staticmethod
    def row(pair: PairToLabel, r_a: float, r_b: float, thresholds: Sequence[float]) -> dict:
        # a tie keeps the order and is the weakest label
        a_wins = r_a >= r_b
        strength = strength_of_gap(abs(r_a - r_b), thresholds) if r_a != r_b else STRENGTHS[-1]
        (chosen, r_c), (rejected, r_r) = ((pair.a, r_a), (pair.b, r_b)) if a_wins else ((pair.b, r_b), (pair.a, r_a))
        # the judge's scores are kept for inspection; the reward stage reads prompt, chosen,
        # rejected and strength only
        return {"id": pair.id, "prompt": pair.prompt, "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}], "strength": strength,
                "judge_chosen": r_c, "judge_rejected": r_r}

    def score(self, judge: str, conversations: list[list[dict]]) -> list[float]:
        """The judge's score of each conversation, rendered with the judge's own tokenizer."""
        import torch

        from llama2rlhf.reward.scoring import score_conversations
        from llama2rlhf.runtime.distributed import device_for
        from llama2rlhf.runtime.models import load_reward_model, load_tokenizer

        tokenizer = load_tokenizer(judge, trust_remote_code=self.cfg.model.trust_remote_code)
        model = load_reward_model(judge, self.cfg, tokenizer).to(device_for(self.cfg))
        try:
            return score_conversations(model, tokenizer, conversations, batch_size=self.options.batch_size,
                                       desc=f"judging with {judge}")
        finally:
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def check_judge(path: str, cfg: Any) -> None:
    """Refuse a checkpoint that is not a one-output classifier: loading a causal LM as a
    sequence classifier gives it a new, random score head, which would label at random."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    archs = list(getattr(config, "architectures", None) or [])
    if archs and all(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        raise ValueError(f"annotator judge {path!r} is a language model ({', '.join(archs)}), not a reward model: "
                         "its score head would be new and random. Give a sequence classifier with one output "
                         "(annotator.name_or_path, annotator.safety_name_or_path)")
    if any("ForSequenceClassification" in a for a in archs) and getattr(config, "num_labels", 1) != 1:
        raise ValueError(f"annotator judge {path!r} has {config.num_labels} outputs; a reward model has one")


def make_reward_model_annotator(cfg: Any, world: Any, **options: Any) -> RewardModelAnnotator:
    """``annotator=reward_model``; ``options`` are the fields of :class:`RewardModelAnnotatorConfig`
    but ``name`` (its defaults for those not given)."""
    if cfg is None:
        raise ValueError("annotator=reward_model needs the run's config (annotator.name_or_path, device, model.dtype)")
    unknown = sorted(set(options) - {f.name for f in fields(RewardModelAnnotatorConfig)})
    if unknown:
        raise ValueError(f"annotator=reward_model has no option {', '.join('annotator.' + k for k in unknown)}")
    return RewardModelAnnotator(cfg, RewardModelAnnotatorConfig(**options))


def make_toy_annotator(cfg: Any, world: Any) -> ToyAnnotator:
    return ToyAnnotator(world, seed=cfg.seed if cfg is not None else 0)


def make_file_annotator(cfg: Any, world: Any) -> FileExchangeAnnotator:
    return FileExchangeAnnotator()


@hookimpl(trylast=True)
def register_annotators(register):
    register("toy", make_toy_annotator)
    register("file", make_file_annotator)
    register("reward_model", make_reward_model_annotator)


@hookimpl(trylast=True)
def register_configs(config_store):
    config_store.store(group="annotator", name="reward_model", node=RewardModelAnnotatorConfig)
