"""The one reward of the pipeline (paper 3.2.3): reward models -> combiner -> whitening.

Llama 2 trained a helpfulness and a safety reward model and fed PPO
``WHITEN(LOGIT(R_c))`` with ``R_c`` chosen piecewise between them. Here the selected
combiner (``reward=<name>``, see ``register_reward_combiners``) does the piecewise part and
this module the rest, for every consumer: rejection sampling, evaluation's reward-model
judge, and TRL's PPO/RLOO/GRPO trainers (``llama2rlhf.reward.trl_rewards``).

WHITEN uses fixed statistics, not the batch's: the mean and standard deviation of the
combined reward over both replies of every held-out comparison of the reward stage,
computed once after the reward models are trained (``fit_whitening``) and saved with them
as ``whitening.json``. So a reply's reward never depends on the batch it was scored in,
and rewards of different rounds' samples (``best_over_history``) stay comparable within a
round.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from llama2rlhf import plugins
from llama2rlhf.reward.scoring import Cuts, model_max_length, score_conversations, tokenize_conversations
from llama2rlhf.runtime import artifacts, distributed

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


def is_safety_prompt(meta: dict[str, Any] | None) -> bool:
    """A safety prompt (paper 3.2.1's adversarial prompts): the toy world's unsafe family, or a
    ``safety`` field that is true in the prompt's or comparison's row."""
    meta = meta or {}
    toy = meta.get("toy_prompt")
    if toy is not None:
        return toy.get("family") == "unsafe"
    return bool(meta.get("safety", False))


def own_reward_models(cfg: Any) -> dict[str, str]:
    """The reward models the config names itself (``reward_model.name_or_path``,
    ``reward_model.safety_name_or_path``), by name: the run's reward models from the start."""
    paths = {"helpfulness": cfg.reward_model.name_or_path, "safety": cfg.reward_model.safety_name_or_path}
    return {name: path for name, path in paths.items() if path}


def selected_combiner(cfg: Any, available: Sequence[str]) -> tuple[plugins.Selected, str | None]:
    """(combiner, fallback) for ``cfg.reward``: the selected combiner with its options, or
    ``single`` (no options) when the selected one needs a reward model the run does not have
    (``llama2`` without safety labels in the data), with ``fallback`` saying so (None
    otherwise)."""
    combiner = plugins.selected("reward_combiners", cfg)
    missing = [m for m in getattr(combiner.obj, "needs", ("helpfulness",)) if m not in available]
    if missing:
        fallback = (f"reward={combiner.name} needs the {', '.join(missing)} reward model(s), which this run does not "
                    "have (no safety labels in the data, and no reward_model.safety_name_or_path); using reward=single")
        log.warning("%s", fallback)
        return plugins.named("reward_combiners", "single"), fallback
    return combiner, None


def _combined_problem(combined: Any, scores: dict[str, Any], is_safety: Any) -> str | None:
    import torch

    if not isinstance(combined, torch.Tensor):
        return plugins.describe_value(combined)
    shape = next(iter(scores.values())).shape
    if combined.shape != shape or not combined.is_floating_point():
        return f"{plugins.describe_value(combined)} for scores of shape {tuple(shape)}"
    return None


# what a combiner returns (hookspecs.register_reward_combiners)
COMBINED = plugins.Returns("a float tensor of the scores' shape, one reward per score", _combined_problem)


def _same_tokenizer(a, b) -> bool:
    return (type(a) is type(b) and a.chat_template == b.chat_template and a.pad_token_id == b.pad_token_id
            and a.get_vocab() == b.get_vocab())


class CombinedReward:
    """Scores replies with every trained reward model and combines them into one reward."""

    def __init__(self, cfg: Any, model_paths: dict[str, str], whitening: dict[str, float] | None = None,
                 batch_size: int = 64):
        from llama2rlhf.runtime.distributed import device_for
        from llama2rlhf.runtime.models import load_reward_model, load_tokenizer

        if "helpfulness" not in model_paths:
            raise ValueError(f"a helpfulness reward model is required; got {', '.join(model_paths) or '(none)'}")
        self.cfg = cfg
        device = device_for(cfg)
        # each model renders conversations with its own tokenizer (saved with it), which need
        # not be the policy's; one without a chat template gets the plain one. Models whose
        # tokenizers agree share one object, so model_scores tokenizes once for them
        self.tokenizers, self.models = {}, {}
        for name, path in model_paths.items():
            tok = load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code, fallback_template="plain")
            self.tokenizers[name] = next((t for t in self.tokenizers.values() if _same_tokenizer(t, tok)), tok)
            self.models[name] = load_reward_model(path, cfg, self.tokenizers[name]).to(device).eval()
        self.tokenizer = self.tokenizers["helpfulness"]
        self.combiner, self.fallback = selected_combiner(cfg, list(self.models))
        self.combiner_name = self.combiner.name
        self.whitening = whitening if cfg.reward.whiten else None
        self.batch_size = batch_size
        self.cuts = Cuts()  # what scoring cut from conversations longer than a model reads
        self._record = None  # (name, value) -> None: where for_run notes the fallback and the cuts

    @classmethod
    def for_run(cls, ctx) -> "CombinedReward":
        """The newest reward models of a run and their whitening statistics; the combiner's
        fallback and what scoring cuts go into the running stage's summary (``reward_notes``)."""
        paths = {name: ctx.state.artifacts[a] for name, a in artifacts.REWARD_MODELS.items()
                 if a in ctx.state.artifacts}
        stats_path = ctx.state.artifacts.get(artifacts.REWARD_WHITENING)
        stats = json.loads(Path(stats_path).read_text(encoding="utf-8")) if stats_path else None
        reward = cls(ctx.cfg, paths, stats, batch_size=ctx.cfg.reward_model.eval_batch_size)
        key = ctx.stage_key(ctx.current_stage)
        reward._record = lambda name, value: ctx.summary.setdefault("reward_notes", {}).setdefault(key, {}).update(
            {name: value})
        if reward.fallback:
            reward._record("fallback", reward.fallback)
        return reward

    def model_scores(self, conversations: Sequence[Messages], desc: str | None = None,
                     shard_size: int | None = None) -> dict[str, Any]:
        """Each reward model's raw scores of full conversations, as float tensors; a
        conversation longer than a model reads is cut (``reward_scoring.fit_conversation``).
        With ``shard_size``, a collective call: the conversations are shared out among the
        processes in chunks of that many (``llama2rlhf.runtime.distributed.shard``), and
        every process gets every score and the count of every cut."""
        import torch

        if shard_size is None:
            scores = self._scores(conversations, desc)
        else:
            start = self.cuts

            def chunk(convs: list[Messages]) -> list[tuple[dict[str, float], Cuts | None]]:
                self.cuts = Cuts()
                part = self._scores(convs, desc)
                rows = [{name: float(s[i]) for name, s in part.items()} for i in range(len(convs))]
                return [(row, self.cuts if i == 0 else None) for i, row in enumerate(rows)]  # the chunk's cuts, once

            done = distributed.shard(chunk, list(conversations), shard_size)
            self.cuts = start
            for _, cuts in done:
                if cuts is not None:
                    self.cuts.add(cuts)
            scores = {name: torch.tensor([row[name] for row, _ in done], dtype=torch.float32) for name in self.models}
        if self._record is not None and self.cuts.conversations:
            self._record("truncated", self.cuts.as_dict())
        return scores

    def _scores(self, conversations: Sequence[Messages], desc: str | None) -> dict[str, Any]:
        import torch

        tokenized = {}  # once per tokenizer and length, for all the models that share them
        scores = {}
        for name, model in self.models.items():
            tokenizer = self.tokenizers[name]
            limit = model_max_length(model, tokenizer)
            key = (id(tokenizer), limit)
            if key not in tokenized:
                tokenized[key] = tokenize_conversations(tokenizer, conversations, limit)
                self.cuts.add(tokenized[key].cuts)
            scores[name] = torch.tensor(score_conversations(model, tokenizer, conversations, self.batch_size,
                                                            desc=f"{desc} ({name})" if desc else None,
                                                            tokenized=tokenized[key]))
        return scores

    def combine(self, scores: dict[str, Any], is_safety, whiten: bool = True):
        """The combiner's output for raw ``scores`` (tensors), whitened unless ``whiten`` is False."""
        combined = self.combiner.check(COMBINED, self.combiner.call(scores, is_safety), scores, is_safety)
        if whiten and self.whitening:
            combined = (combined - self.whitening["mean"]) / self.whitening["std"]
        return combined

    def score_conversations(self, conversations: Sequence[Messages], is_safety: Sequence[bool],
                            desc: str | None = None, shard_size: int | None = None) -> list[float]:
        """The combined reward of each full conversation; ``shard_size`` as :meth:`model_scores`."""
        import torch

        scores = self.model_scores(conversations, desc, shard_size)
        return self.combine(scores, torch.tensor(list(is_safety), dtype=torch.bool)).tolist()

    def score(self, prompts: Sequence[Messages], completions: Sequence[str], is_safety: Sequence[bool],
              desc: str | None = None, shard_size: int | None = None) -> list[float]:
        """The reward of each (prompt, completion), in input order; ``shard_size`` as
        :meth:`model_scores`."""
        conversations = [list(p) + [{"role": "assistant", "content": c}]
                         for p, c in zip(prompts, completions, strict=True)]
        return self.score_conversations(conversations, is_safety, desc, shard_size)

    def fit_whitening(self, scores: dict[str, Any], is_safety: Sequence[bool]) -> dict[str, float]:
        """Mean and standard deviation of the unwhitened reward, from raw ``scores``
        (:meth:`model_scores`) of the calibration conversations."""
        import torch

        raw = self.combine(scores, torch.tensor(list(is_safety), dtype=torch.bool), whiten=False).double()
        std = float(raw.std()) if raw.numel() > 1 else 1.0
        return {"mean": float(raw.mean()), "std": std if std > 1e-8 else 1.0, "n": int(raw.numel()),
                "combiner": self.combiner_name}
