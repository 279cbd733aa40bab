"""Built-in reward combiners (paper 3.2.3, "PPO").

``llama2``: Llama 2's piecewise rule over a helpfulness and a safety reward model,

    R_c = R_s  if is_safety(prompt) or R_s < 0.15,  else R_h,

returned as LOGIT(R_c); the pipeline then whitens it (``reward.whiten``, see
``llama2rlhf.reward.combined``). ``single``: the helpfulness reward model alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama2rlhf import RewardCombiner, hookimpl
from llama2rlhf.config import RewardConfig


def llama2_combine(scores, is_safety, safety_threshold: float = 0.15):
    """LOGIT(R_c) from the two models' raw scores.

    R_h and R_s are the sigmoids of the raw scores, so LOGIT(R_c) is the chosen model's raw
    score itself; taking it directly rather than logit(sigmoid(x)) keeps large scores finite
    in float32 (sigmoid(20) rounds to 1 and its logit to inf).
    """
    import torch

    helpful, safe = scores["helpfulness"], scores["safety"]
    use_safety = torch.as_tensor(is_safety, device=safe.device).bool() | (torch.sigmoid(safe) < safety_threshold)
    return torch.where(use_safety, safe, helpful)


def single_combine(scores, is_safety):
    return scores["helpfulness"]


@dataclass
class Llama2RewardConfig(RewardConfig):
    name: str = "llama2"
    # below this safety probability a reply counts as unsafe on any prompt (paper: 0.15)
    safety_threshold: float = 0.15


@hookimpl(trylast=True)
def register_reward_combiners(register):
    register("llama2", RewardCombiner(llama2_combine, needs=("helpfulness", "safety")))
    register("single", RewardCombiner(single_combine))


@hookimpl(trylast=True)
def register_configs(config_store):
    config_store.store(group="reward", name="llama2", node=Llama2RewardConfig)
