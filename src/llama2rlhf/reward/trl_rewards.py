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
queries of the PPO data set (``SafetyLookup``). When a reward model reads text through
another tokenizer or chat template than the policy's (``reward_model.name_or_path``), the
adapter decodes each rollout's reply, finds its prompt the same way, and scores the
conversation as every other path does (``CombinedReward.score``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

from llama2rlhf.reward.combined import CombinedReward


class SafetyLookup:
    """Token ids of a query (no padding) -> whether it is a safety prompt, and which query it is.

    A trie of the queries' tokens: each rollout row is walked once from its first real
    token, and the longest query it starts with decides, however many prompt lengths the
    data set has (it runs on every PPO rollout batch)."""

    _END = -1  # key of a node's query index: no token id is negative

    def __init__(self, queries: Sequence[Sequence[int]], flags: Sequence[bool]):
        self.root: dict = {}
        self.flags = [bool(f) for f in flags]
        for index, (query, _) in enumerate(zip(queries, self.flags, strict=True)):
            node = self.root
            for token in query:
                node = node.setdefault(token, {})
            node[self._END] = index

    def match(self, ids: Sequence[int]) -> tuple[int | None, int]:
        """(index of the longest query ``ids`` (real tokens only) starts with, its length)."""
        node, found, length = self.root, None, 0
        for depth, token in enumerate(ids, start=1):
            node = node.get(token)
            if node is None:
                break
            if self._END in node:
                found, length = node[self._END], depth
        return found, length

    def __call__(self, input_ids, attention_mask):
        """A bool tensor (batch,): True where a row starts with a known safety query."""
        import torch

        flags = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.bool().tolist(), strict=True):
            index, _ = self.match([t for t, m in zip(ids, mask, strict=True) if m])
            flags.append(index is not None and self.flags[index])
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


def reads_policy_tokens(reward: CombinedReward, tokenizer) -> bool:
    """Whether every reward model reads the policy's token ids as they are: the same
    vocabulary and chat template (a reward model trained from the policy does)."""
    vocab = tokenizer.get_vocab()
    return all(t.get_vocab() == vocab and t.chat_template == tokenizer.chat_template
               for t in reward.tokenizers.values())


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

    class _TextBackbone(torch.nn.Module):
        """The same stand-in for reward models with a tokenizer of their own: each row's reply
        is decoded with the policy's tokenizer and scored with its prompt as text."""

        def __init__(self, reward: CombinedReward, safety: SafetyLookup, prompts, tokenizer):
            super().__init__()
            self.reward, self.safety, self.prompts, self.tokenizer = reward, safety, prompts, tokenizer
            self.models = torch.nn.ModuleDict(reward.models)

        def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            conversations, flags = [], []
            for ids, keep in zip(input_ids.tolist(), mask.bool().tolist(), strict=True):
                real = [t for t, m in zip(ids, keep, strict=True) if m]
                index, length = self.safety.match(real)
                if index is None:
                    raise ValueError("a PPO rollout starts with none of the PPO data set's queries")
                reply = self.tokenizer.decode(real[length:], skip_special_tokens=True).strip()
                conversations.append(list(self.prompts[index]) + [{"role": "assistant", "content": reply}])
                flags.append(self.safety.flags[index])
            scores = torch.tensor(self.reward.score_conversations(conversations, flags), device=input_ids.device)
            # every position carries its row's reward: TRL reads the one at the last real token
            hidden = scores[:, None, None].expand(-1, input_ids.shape[1], 1)
            return SimpleNamespace(hidden_states=(hidden,), last_hidden_state=hidden)

    class CombinedRewardModel(torch.nn.Module):
        """A stand-in for a sequence classifier whose score is the pipeline's combined reward."""

        base_model_prefix = "backbone"

        def __init__(self, reward: CombinedReward, safety: SafetyLookup, prompts=None, tokenizer=None):
            super().__init__()
            self.backbone = _Backbone(reward, safety) if prompts is None else \
                _TextBackbone(reward, safety, prompts, tokenizer)
            self.score = torch.nn.Identity()
            self.config = getattr(next(iter(reward.models.values())), "config", None)

        def forward(self, input_ids, attention_mask=None, **kwargs):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).hidden_states[-1]
            last = attention_mask.long().cumsum(-1).argmax(-1) if attention_mask is not None else \
                torch.full((input_ids.shape[0],), input_ids.shape[1] - 1)
            return SimpleNamespace(logits=hidden[torch.arange(hidden.shape[0]), last])

    return CombinedRewardModel


def combined_reward_model(reward: CombinedReward, queries: Sequence[Sequence[int]], flags: Sequence[bool],
                          prompts: Sequence[Any] | None = None, tokenizer=None):
    """The adapter for TRL's PPO; ``queries`` are the PPO data set's prompt token ids. Give
    the queries' ``prompts`` (messages) and the policy's ``tokenizer`` when the reward models
    do not read the policy's tokens (:func:`reads_policy_tokens`): rollouts are then scored
    as text."""
    if prompts is not None and tokenizer is None:
        raise ValueError("scoring PPO rollouts as text needs the policy's tokenizer")
    return _module_class()(reward, SafetyLookup(queries, flags), prompts, tokenizer)


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
