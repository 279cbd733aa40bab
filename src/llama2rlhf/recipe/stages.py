"""Built-in pipeline stages."""

from __future__ import annotations

from llama2rlhf import hookimpl


@hookimpl(trylast=True)
def register_stages(register):
    # imported lazily by the stage functions themselves: these modules import no torch
    from llama2rlhf.recipe.collect import collect_stage
    from llama2rlhf.recipe.evaluate import evaluate_stage
    from llama2rlhf.recipe.ppo import grpo_stage, ppo_stage, rloo_stage
    from llama2rlhf.recipe.rejection_sampling import rejection_sampling_stage
    from llama2rlhf.recipe.reward_model import reward_stage
    from llama2rlhf.recipe.sft import sft_stage

    register("sft", sft_stage)
    register("reward", reward_stage)
    register("collect", collect_stage)
    register("rejection_sampling", rejection_sampling_stage)
    register("evaluate", evaluate_stage)
    register("ppo", ppo_stage)
    register("rloo", rloo_stage)
    register("grpo", grpo_stage)
