"""``reward_loss=example_hinge``: a hinge pairwise loss with one typed option, ``width``.

The reward-loss contract (:func:`llama2rlhf.plugins.hookspecs.register_reward_losses`): a callable
``loss(r_chosen, r_rejected, margin, **options) -> scalar tensor``, optionally wrapped in
:class:`llama2rlhf.RewardLoss` with a strength -> margin table (paper Table 27).
"""

from __future__ import annotations

from dataclasses import dataclass

from llama2rlhf.config import RewardLossConfig

NAME = "example_hinge"


def hinge_loss(r_chosen, r_rejected, margin=None, *, width: float = 1.0):
    """Hinge pairwise loss: ``mean(relu(width + margin - (r_chosen - r_rejected)))``.

    The reward model pays nothing once the chosen reply out-scores the rejected one by at
    least ``width + margin``, and a linear penalty below that. ``margin`` is the per-pair
    margin from the strength label (``None``, read as 0, when the data has no strength).

    ``r_chosen`` and ``r_rejected`` are float tensors of shape ``(batch,)``, ``margin`` a
    tensor of that shape or ``None``, and every extra field of the selected
    ``reward_loss`` config node (here ``width``) arrives as a keyword argument. Return a
    scalar tensor.
    """
    import torch  # lazily: importing the plugin must stay cheap

    gap = width - (r_chosen - r_rejected)
    if margin is not None:
        gap = gap + margin
    return torch.relu(gap).mean()


@dataclass
class ExampleHingeConfig(RewardLossConfig):
    """The ``reward_loss`` node for ``example_hinge``.

    Subclass :class:`llama2rlhf.config.RewardLossConfig` and set ``name`` to the registered
    name; every other field is an option of your loss, typed by its annotation
    (``reward_loss.width=abc`` is rejected because ``width`` is a float).
    """

    name: str = NAME
    width: float = 1.0
