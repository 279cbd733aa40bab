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
    from llama2rlhf.runtime.artifacts import POLICY, REWARD, REWARD_SAFETY, REWARD_WHITENING, SFT

    # uses: the plugin kinds each one calls, whose options a run checks before it starts;
    # needs and makes: the artifacts it reads and writes, whose order a run checks
    register("sft", Stage(sft_stage, uses=("samplers",), makes=(SFT, POLICY)))  # greedy held-out replies (toy)
    # the safety reward model only where the data labels safety prompts
    register("reward", Stage(reward_stage, uses=("reward_losses", "reward_combiners"),
                             makes=(REWARD, REWARD_SAFETY, REWARD_WHITENING)))
    register("collect", Stage(collect_stage, uses=("samplers", "annotators"), needs=(POLICY,)))
    register("rejection_sampling", Stage(rejection_sampling_stage, summary_key="rs",
                                         uses=("samplers", "reward_combiners", "selectors", "augmenters",
                                               "checkers"),
                                         needs=(POLICY, REWARD), makes=(POLICY,)))
    # its numbers go straight into the round's entry (rounds[i])
    register("evaluate", Stage(evaluate_stage, summary_key=None, uses=("samplers", "reward_combiners", "checkers"),
                               needs=(POLICY, SFT, REWARD)))
    # the online RL trainers are alternatives for one step of the round: one key for all
    for name, run in (("ppo", ppo_stage), ("rloo", rloo_stage), ("grpo", grpo_stage)):
        register(name, Stage(run, summary_key="ppo", uses=("samplers", "reward_combiners"), needs=(POLICY, REWARD),
                             makes=(POLICY,)))
