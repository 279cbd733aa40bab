"""The names under which TRL's online trainers log their KL, reward and losses."""

# trainer -> (KL, reward, losses): the PPO stage's guard reads the KL, the run report plots all three
TRAINER_METRICS = {
    "ppo": ("objective/kl", "objective/scores", ("loss/policy_avg", "loss/value_avg")),
    "rloo": ("kl", "reward", ("loss",)),
    "grpo": ("kl", "reward", ("loss",)),
}
