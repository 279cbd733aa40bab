"""Built-in reward losses (paper 3.2.2, Table 27).

``bradley_terry``: -log sigmoid(r_c - r_r), the binary ranking loss of InstructGPT.
``margin_small`` / ``margin_large``: -log sigmoid(r_c - r_r - m(strength)) with Llama 2's
margins, which widen the gap the RM must put between clearly different replies.
"""

from __future__ import annotations

from llama2rlhf import RewardLoss, hookimpl
from llama2rlhf.data.strength import MARGINS_LARGE, MARGINS_SMALL


def pairwise_logsigmoid_loss(r_chosen, r_rejected, margin=None):
    """Mean of -log sigmoid(r_chosen - r_rejected - margin); ``margin`` None means 0."""
    import torch.nn.functional as F

    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


@hookimpl(trylast=True)
def register_reward_losses(register):
    register("bradley_terry", RewardLoss(lambda rc, rr, margin: pairwise_logsigmoid_loss(rc, rr, None)))
    register("margin_small", RewardLoss(pairwise_logsigmoid_loss, margins=MARGINS_SMALL))
    register("margin_large", RewardLoss(pairwise_logsigmoid_loss, margins=MARGINS_LARGE))
