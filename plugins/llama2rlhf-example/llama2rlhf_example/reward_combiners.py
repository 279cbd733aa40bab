"""``reward=example_cautious``: a reply is worth its worse score, ``min(helpfulness, safety)``.

The reward-combiner contract (:func:`llama2rlhf.plugins.hookspecs.register_reward_combiners`):
:class:`llama2rlhf.RewardCombiner` around ``fn(scores, is_safety, **options) -> tensor``.
"""

from __future__ import annotations

NAME = "example_cautious"


def cautious_combine(scores, is_safety):
    """``min(helpfulness, safety)``, on every prompt.

    ``scores`` maps reward-model names to raw score tensors of one shape (``(batch,)`` when
    replies are scored, ``(batch, tokens)`` inside PPO), ``is_safety`` is a bool tensor that
    broadcasts against them. Stay elementwise; the pipeline whitens what you return.
    Llama 2's own rule (``reward=llama2``) trusts helpfulness unless the prompt is a safety
    prompt or the safety score is low; this one never lets helpfulness outvote safety.
    """
    import torch

    return torch.minimum(scores["helpfulness"], scores["safety"])
