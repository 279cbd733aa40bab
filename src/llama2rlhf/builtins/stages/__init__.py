"""Built-in pipeline stages."""

from __future__ import annotations

from ... import hookimpl


@hookimpl(trylast=True)
def register_stages(register):
    # imported lazily by the stage functions themselves: these modules import no torch
    from .collect import collect_stage
    from .evaluate import evaluate_stage
    from .ppo import grpo_stage, ppo_stage, rloo_stage
    from .rejection_sampling import rejection_sampling_stage
    from .reward import reward_stage
    from .sft import sft_stage

    register("sft", sft_stage)
    register("reward", reward_stage)
    register("collect", collect_stage)
    register("rejection_sampling", rejection_sampling_stage)
    register("evaluate", evaluate_stage)
    register("ppo", ppo_stage)
    register("rloo", rloo_stage)
    register("grpo", grpo_stage)
