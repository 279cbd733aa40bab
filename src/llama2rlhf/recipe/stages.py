"""Built-in pipeline stages, registered with where their metrics go in ``summary.json``."""

from __future__ import annotations

from llama2rlhf import Stage, hookimpl


@hookimpl(trylast=True)
def register_stages(register):
    # imported lazily by the stage functions themselves: these modules import no torch
    from llama2rlhf.recipe.collect import collect_stage
    from llama2rlhf.recipe.evaluate import evaluate_stage
    from llama2rlhf.recipe.ppo import grpo_stage, ppo_stage, rloo_stage
    from llama2rlhf.recipe.rejection_sampling import rejection_sampling_stage
    from llama2rlhf.recipe.reward_model import reward_stage
    from llama2rlhf.recipe.sft import sft_stage

    register("sft", Stage(sft_stage))
    register("reward", Stage(reward_stage))
    register("collect", Stage(collect_stage))
    register("rejection_sampling", Stage(rejection_sampling_stage, summary_key="rs"))
    # its numbers go straight into the round's entry (rounds[i])
    register("evaluate", Stage(evaluate_stage, summary_key=None))
    # the online RL trainers are alternatives for one step of the round: one key for all
    register("ppo", Stage(ppo_stage, summary_key="ppo"))
    register("rloo", Stage(rloo_stage, summary_key="ppo"))
    register("grpo", Stage(grpo_stage, summary_key="ppo"))
