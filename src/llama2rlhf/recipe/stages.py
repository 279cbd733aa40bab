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

    # uses: the plugin kinds each one calls, whose options a run checks before it starts
    register("sft", Stage(sft_stage, uses=("samplers",)))  # greedy replies to held-out prompts (toy world)
    register("reward", Stage(reward_stage, uses=("reward_losses", "reward_combiners")))
    register("collect", Stage(collect_stage, uses=("samplers", "annotators")))
    register("rejection_sampling", Stage(rejection_sampling_stage, summary_key="rs",
                                         uses=("samplers", "reward_combiners", "selectors", "augmenters",
                                               "checkers")))
    # its numbers go straight into the round's entry (rounds[i])
    register("evaluate", Stage(evaluate_stage, summary_key=None, uses=("samplers", "reward_combiners", "checkers")))
    # the online RL trainers are alternatives for one step of the round: one key for all
    online = ("samplers", "reward_combiners")
    register("ppo", Stage(ppo_stage, summary_key="ppo", uses=online))
    register("rloo", Stage(rloo_stage, summary_key="ppo", uses=online))
    register("grpo", Stage(grpo_stage, summary_key="ppo", uses=online))
