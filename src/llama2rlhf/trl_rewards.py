"""The combined reward in the two shapes TRL's online trainers read it.

* ``CombinedRewardModel``: TRL's PPO (``trl.experimental.ppo``) scores rollouts with
  ``trl.experimental.utils.get_reward``, which runs ``getattr(model,
  model.base_model_prefix)`` on token ids and applies ``model.score`` to the last hidden
  state at the last non-pad token. The adapter's backbone runs every reward model, combines
  their per-position scores with the selected combiner and whitens them, and hands that back
  as a one-channel "hidden state" that ``score`` passes through, so any combiner, a
  third-party one included, feeds PPO unchanged.
* ``reward_function``: GRPO and RLOO take plain reward functions of (prompts, completions).

PPO sees token ids only, so which rollouts answer a safety prompt is looked up from the
queries of the PPO data set (``SafetyLookup``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

from .combined_reward import CombinedReward


class SafetyLookup:
    """Token ids of a query (no padding) -> whether it is a safety prompt.

    A trie of the queries' tokens: each rollout row is walked once from its first real
    token, and the longest query it starts with decides, however many prompt lengths the
    data set has (it runs on every PPO rollout batch)."""

    _END = -1  # key of a node's flag: no token id is negative

    def __init__(self, queries: Sequence[Sequence[int]], flags: Sequence[bool]):
        self.root: dict = {}
        for query, flag in zip(queries, flags, strict=True):
            node = self.root
            for token in query:
                node = node.setdefault(token, {})
            node[self._END] = bool(flag)

    def __call__(self, input_ids, attention_mask):
        """A bool tensor (batch,): True where a row starts with a known safety query."""
        import torch

        flags = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.bool().tolist(), strict=True):
            node, found = self.root, False
            for token in (t for t, m in zip(ids, mask, strict=True) if m):
                node = node.get(token)
                if node is None:
                    break
                found = node.get(self._END, found)
            flags.append(found)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


def _module_class():
    import torch

    class _Backbone(torch.nn.Module):
        def __init__(self, reward: CombinedReward, safety: SafetyLookup):
            super().__init__()
            self.reward = reward
            self.safety = safety
            # registered as submodules so that .to(device) and dropout switches reach them
            self.models = torch.nn.ModuleDict(reward.models)

        def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
            scores = {}
            for name, model in self.models.items():
                out = getattr(model, model.base_model_prefix)(input_ids=input_ids, attention_mask=attention_mask,
                                                              position_ids=position_ids, use_cache=False)
                scores[name] = model.score(out.last_hidden_state).squeeze(-1).float()
            is_safety = self.safety(input_ids, attention_mask)[:, None]
            combined = self.reward.combine(scores, is_safety)
            return SimpleNamespace(hidden_states=(combined.unsqueeze(-1),), last_hidden_state=combined.unsqueeze(-1))

    class CombinedRewardModel(torch.nn.Module):
        """A stand-in for a sequence classifier whose score is the pipeline's combined reward."""

        base_model_prefix = "backbone"

        def __init__(self, reward: CombinedReward, safety: SafetyLookup):
            super().__init__()
            self.backbone = _Backbone(reward, safety)
            self.score = torch.nn.Identity()
            self.config = getattr(next(iter(reward.models.values())), "config", None)

        def forward(self, input_ids, attention_mask=None, **kwargs):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).hidden_states[-1]
            last = attention_mask.long().cumsum(-1).argmax(-1) if attention_mask is not None else \
                torch.full((input_ids.shape[0],), input_ids.shape[1] - 1)
            return SimpleNamespace(logits=hidden[torch.arange(hidden.shape[0]), last])

    return CombinedRewardModel


def combined_reward_model(reward: CombinedReward, queries: Sequence[Sequence[int]], flags: Sequence[bool]):
    """The adapter for TRL's PPO; ``queries`` are the PPO data set's prompt token ids."""
    return _module_class()(reward, SafetyLookup(queries, flags))


def reward_function(reward: CombinedReward):
    """A TRL reward function (GRPO, RLOO): conversational prompts and completions in, rewards out.

    Reads each row's ``safety`` column when the data set has one (TRL passes extra columns
    as keyword lists)."""

    def combined_reward(prompts, completions, safety: list[bool] | None = None, **kwargs: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        msgs = [p if isinstance(p, list) else [{"role": "user", "content": p}] for p in prompts]
        flags = list(safety) if safety is not None else [False] * len(texts)
        return reward.score(msgs, texts, flags)

    combined_reward.__name__ = f"reward_{reward.combiner_name}"
    return combined_reward
