"""The ``ppo`` stage (paper 3.2.3, "PPO"), and ``rloo`` / ``grpo`` in its place.

Llama 2 ran PPO on top of the rejection-sampled model in the last round: policy and
reference start from the RS model, the value model from the reward model, and the reward
is the combined one (``reward=llama2``: WHITEN(LOGIT(R_c))) minus ``ppo.kl_coef`` times the
KL to the reference. ``ppo`` wraps ``trl.experimental.ppo.PPOTrainer`` (TRL 1.12; TRL 1.13
removed it), fed by ``llama2rlhf.reward.trl_rewards.CombinedRewardModel``. ``rloo`` and ``grpo``
wrap TRL's maintained ``RLOOTrainer`` and ``GRPOTrainer`` with the same reward as a reward
function, for when TRL moves on.

Guards: a callback watches every logged iteration; when the KL passes ``ppo.max_kl`` or a
reward or loss is NaN it stops training, the stage keeps the last good checkpoint (saved
every ``ppo.checkpoint_steps`` iterations; the starting model if none yet), records why in
``state.json`` and ``summary.json``, and the pipeline carries on from that model.
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from llama2rlhf.data.round_prompts import round_prompts
from llama2rlhf.recipe.training_args import build_args, trainer_callbacks
from llama2rlhf.reward.combined import CombinedReward, is_safety_prompt
from llama2rlhf.runtime import artifacts, distributed
from llama2rlhf.runtime.models import load_causal_lm, load_reward_model, load_tokenizer, peft_config, save_trained_model
from llama2rlhf.runtime.seeding import item_seeds, seed_everything
from llama2rlhf.runtime.trainer_metrics import TRAINER_METRICS

log = logging.getLogger(__name__)

# PPOStageConfig fields that are ours, or another trainer's
_NOT_PPO = {"n_prompts", "max_new_tokens", "num_generations", "max_kl", "checkpoint_steps", "eval_samples",
            "max_prompt_length"}


class GuardTripped(RuntimeError):
    def __init__(self, reason: str, step: int):
        super().__init__(reason)
        self.reason, self.step = reason, step


def _guard_callback(kind: str, max_kl: float, checkpoint_steps: int, save_good):
    from transformers import TrainerCallback

    kl_key, reward_key, loss_keys = TRAINER_METRICS[kind]

    class Guard(TrainerCallback):
        """Stops training on runaway KL or NaN; saves the policy every ``checkpoint_steps`` healthy steps."""

        def __init__(self):
            self.history: list[dict[str, float]] = []
            self.good_step = 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            watched = {k: logs[k] for k in (kl_key, reward_key, *loss_keys) if k in logs}
            if not watched:
                return
            self.history.append({"step": state.global_step, **watched})
            bad = [k for k, v in watched.items() if isinstance(v, float) and math.isnan(v)]
            if bad:
                raise GuardTripped(f"NaN in {', '.join(bad)} at step {state.global_step}", state.global_step)
            if kl_key in watched and watched[kl_key] > max_kl:
                raise GuardTripped(f"KL {watched[kl_key]:.3f} passed ppo.max_kl={max_kl:g} at step "
                                   f"{state.global_step}", state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if checkpoint_steps > 0 and state.global_step % checkpoint_steps == 0:
                save_good(state.global_step)
                self.good_step = state.global_step

    return Guard()


def _eval_prompts(ctx) -> list:
    """Held-out prompts as (messages, is_safety, toy prompt or None)."""
    if ctx.world is not None:
        from llama2rlhf.evaluation.heldout import heldout_prompts

        return [(p.messages(), p.unsafe, p) for p in heldout_prompts(ctx)]
    items = round_prompts(ctx, "eval", ctx.cfg.data.n_eval_prompts, heldout=True)
    return [(p.messages, is_safety_prompt(p.meta), None) for p in items]


def evaluate_policy(ctx, reward: CombinedReward, model_path: str, prompts: list) -> dict[str, Any]:
    """The policy on the held-out prompts, read two ways.

    ``sampled``: ``ppo.eval_samples`` replies per prompt at ``ppo.temperature``, the
    distribution PPO trains (TRL's PPO samples its rollouts at that temperature and scores
    their log-probabilities with the logits divided by it), so their mean reward is the
    objective PPO raises, measured on prompts it never saw. From the same seed before and
    after (the stage's ``eval`` stream), so both models draw with the same random numbers.
    ``greedy``: one greedy reply per prompt, as every round's evaluation reads a model.

    Each holds the mean combined reward and, in the toy world, the gold reward, task accuracy
    and accuracy per family."""
    from llama2rlhf.evaluation.policy import gold_metrics, greedy_replies
    from llama2rlhf.sampling import load_sampler

    cfg, pcfg = ctx.cfg, ctx.cfg.ppo
    messages, flags = [m for m, _, _ in prompts], [f for _, f, _ in prompts]
    sampler = load_sampler(cfg, model_path)
    greedy = greedy_replies(sampler, messages, cfg.eval.max_new_tokens, cfg.shard_size)

    def chunk(rows: list[tuple]) -> list[list[str]]:
        samples = sampler.sample([m for m, _ in rows], n=pcfg.eval_samples, temperature=pcfg.temperature,
                                 max_new_tokens=pcfg.max_new_tokens, desc=f"evaluating (T={pcfg.temperature:g})",
                                 seeds=[seed for _, seed in rows])
        return [[s.text for s in ss] for ss in samples]

    seeds = item_seeds(ctx.seed("eval"), range(len(messages)))
    sampled = distributed.shard(chunk, list(zip(messages, seeds, strict=True)), cfg.shard_size)
    out: dict[str, Any] = {}
    for name, replies, repeat in (("greedy", greedy, 1), ("sampled", [t for ts in sampled for t in ts],
                                                           pcfg.eval_samples)):
        expand = lambda xs, n=repeat: [x for x in xs for _ in range(n)]  # noqa: E731 - a prompt per reply
        scores = reward.score(expand(messages), replies, expand(flags), shard_size=cfg.shard_size * repeat)
        out[name] = {"reward": sum(scores) / len(scores)}
        if ctx.world is not None:
            gold = gold_metrics(ctx.world, expand([p for _, _, p in prompts]), replies)
            out[name].update({k: gold[k] for k in ("gold_reward", "task_accuracy", "accuracy_by_family")})
    return out


def sampled_kl(cfg, policy_path: str, reference_path: str, prompts: list, max_new_tokens: int, seed: int) -> float:
    """KL(policy || reference) per reply, in nats: over replies sampled from the policy
    (temperature 1, a seed per prompt from ``seed``), the sum over their tokens of the exact
    KL between the two models' next-token distributions, averaged over replies. Exact per
    token rather than the sampled log-ratio, so it is never negative and one reply per
    prompt is enough. The prompts are shared out among the processes."""
    import torch

    from llama2rlhf.sampling import load_sampler

    tokenizer = load_tokenizer(policy_path)
    sampler = load_sampler(cfg, policy_path)
    policy, reference = load_causal_lm(policy_path, cfg).eval(), load_causal_lm(reference_path, cfg).eval()

    def chunk(rows: list[tuple]) -> list[float]:
        samples = sampler.sample([m for m, _ in rows], n=1, temperature=1.0, max_new_tokens=max_new_tokens,
                                 desc="sampling for KL", seeds=[seed for _, seed in rows])
        kls = []
        for (messages, _), s in zip(rows, samples, strict=True):
            # the chat template's tokens of the reply, as in training and reward scoring
            query = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"]
            full = tokenizer.apply_chat_template(list(messages) + [{"role": "assistant", "content": s[0].text}],
                                                 tokenize=True, return_dict=True)["input_ids"]
            ids = torch.tensor([full])
            with torch.inference_mode():
                logp, logq = (torch.log_softmax(m(input_ids=ids).logits[0, len(query) - 1 : -1].float(), -1)
                              for m in (policy, reference))
            kls.append(float((logp.exp() * (logp - logq)).sum()))
        return kls

    rows = list(zip([m for m, _, _ in prompts], item_seeds(seed, range(len(prompts))), strict=True))
    return sum(distributed.shard(chunk, rows, cfg.shard_size)) / len(prompts)


def value_model_in_reward_units(value, whitening: dict[str, float] | None):
    """``value`` (the helpfulness reward model, paper 3.2.3) with its head rescaled to predict
    the whitened reward PPO is fed: ``(score - mean) / std`` with the reward's whitening
    statistics, which is the combined reward itself wherever the combiner passes the
    helpfulness score through (``llama2`` on a safe reply). The raw head's scores sat
    several standard deviations from the returns, and the critic spent PPO's first
    iterations unlearning that (toy run: value loss 7.5 falling to 0.25 over 32 iterations)
    while the policy followed advantages from a miscalibrated baseline. Without whitening
    the head is left as it is."""
    import torch

    if not whitening:
        return value
    head, mean, std = value.score, float(whitening["mean"]), float(whitening["std"])
    rescaled = torch.nn.Linear(head.in_features, head.out_features, bias=True,
                               dtype=head.weight.dtype, device=head.weight.device)
    with torch.no_grad():
        rescaled.weight.copy_(head.weight / std)
        bias = head.bias if head.bias is not None else torch.zeros_like(rescaled.bias)
        rescaled.bias.copy_((bias - mean) / std)
    value.score = rescaled
    return value


def _trainer(kind: str, ctx, start: str, tokenizer, reward: CombinedReward, prompts, out_dir: Path, callback):
    from datasets import Dataset

    cfg, pcfg = ctx.cfg, ctx.cfg.ppo
    if kind == "ppo":
        import os

        # we pin TRL 1.12 for its PPO on purpose (README); its warning would repeat that
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        from llama2rlhf.reward.trl_rewards import combined_reward_model, reads_policy_tokens

        # TRL's PPO appends each response right after the padded query tensor: pad on the left
        tokenizer.padding_side = "left"
        queries = [tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"] for p in prompts]
        flags = [is_safety_prompt(p.meta) for p in prompts]
        dataset = Dataset.from_dict({"input_ids": queries})
        args = build_args(PPOConfig, pcfg, cfg, out_dir / "trainer", exclude=_NOT_PPO,
                          response_length=pcfg.max_new_tokens, stop_token="eos", num_sample_generations=0,
                          whiten_rewards=False, stage=kind, seed=ctx.seed())
        policy = load_causal_lm(start, cfg)
        lora = peft_config(cfg, "CAUSAL_LM", policy)
        # with LoRA the reference is the policy with its adapter switched off (TRL's way)
        reference = None if lora else load_causal_lm(start, cfg)
        # the critic reads the policy's tokens: it starts as the helpfulness RM where that RM
        # reads them too, else as the policy with a new head (TRL's default)
        same = reads_policy_tokens(reward, tokenizer)
        value = value_model_in_reward_units(load_reward_model(ctx.artifact(artifacts.REWARD) if same else start, cfg,
                                                              tokenizer), reward.whitening)
        adapter = combined_reward_model(reward, queries, flags) if same else \
            combined_reward_model(reward, queries, flags, [p.messages for p in prompts], tokenizer)
        return PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=reference,
                          reward_model=adapter, train_dataset=dataset,
                          value_model=value, eval_dataset=dataset.select(range(min(8, len(dataset)))),
                          peft_config=lora, callbacks=[callback, *trainer_callbacks(cfg, kind)])
    from llama2rlhf.reward.trl_rewards import reward_function

    dataset = Dataset.from_dict({"prompt": [p.messages for p in prompts],
                                 "safety": [is_safety_prompt(p.meta) for p in prompts]})
    common = dict(exclude=_NOT_PPO | {"num_mini_batches", "num_ppo_epochs", "kl_coef", "cliprange", "vf_coef"},
                  max_completion_length=pcfg.max_new_tokens, num_generations=pcfg.num_generations,
                  beta=pcfg.kl_coef, epsilon=pcfg.cliprange, logging_steps=1)
    if kind == "rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    args = build_args(Config, pcfg, cfg, out_dir / "trainer", stage=kind, seed=ctx.seed(), **common)
    policy = load_causal_lm(start, cfg)
    return Trainer(model=policy, reward_funcs=[reward_function(reward)], args=args,
                   train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config(cfg, "CAUSAL_LM", policy),
                   callbacks=[callback, *trainer_callbacks(cfg, kind)])


def _fit_prompts(prompts: list, tokenizer, max_length: int) -> tuple[list, int]:
    """``prompts`` whose whole middle turns are dropped, oldest first, to fit ``max_length``
    tokens (``ppo.max_prompt_length``): every rollout is trained on with its prompt, whose
    activations would otherwise dominate a step's memory; and how many were cut."""
    from llama2rlhf.data.round_prompts import RoundPrompt
    from llama2rlhf.gatt.augmenter import token_fitter

    fit = token_fitter(tokenizer, max_length)
    out, n_cut = [], 0
    for p in prompts:
        messages, dropped = fit(p.messages)
        n_cut += dropped > 0
        out.append(RoundPrompt(p.id, messages, p.meta) if dropped else p)
    return out, n_cut


def _online_rl_stage(kind: str):
    def stage(ctx) -> dict[str, Any]:
        cfg, pcfg = ctx.cfg, ctx.cfg.ppo
        out_dir = ctx.stage_dir()
        start = ctx.artifact(artifacts.POLICY)  # the rejection-sampled model of this round
        tokenizer = load_tokenizer(start, trust_remote_code=cfg.model.trust_remote_code)
        reward = CombinedReward.for_run(ctx)
        eval_prompts = _eval_prompts(ctx)
        # the evaluation and the KL shared out among the processes (llama2rlhf.runtime.distributed)
        before = evaluate_policy(ctx, reward, start, eval_prompts)
        # training starts from generators of its own, whatever the evaluation drew
        seed_everything(ctx.seed("train"))
        prompts, n_cut = _fit_prompts(round_prompts(ctx, "ppo", pcfg.n_prompts), tokenizer, pcfg.max_prompt_length)
        good_dir = out_dir / "last_good"
        if distributed.is_main_process():
            shutil.rmtree(good_dir, ignore_errors=True)  # a killed attempt's checkpoint is not this one's
        distributed.wait_for_everyone()  # before any process asks whether it exists
        holder: dict[str, Any] = {}

        def save_policy(target: Path, hand_over: bool = False) -> None:
            # swapped in whole (save_trained_model): a kill mid-save keeps the last good checkpoint;
            # LoRA: merged weights are saved, training goes on with the adapter
            save_trained_model(holder["trainer"], target, lambda: load_causal_lm(start, cfg), keep_training=True,
                               hand_over=hand_over)

        def save_good(step: int) -> None:
            save_policy(good_dir)

        guard = _guard_callback(kind, pcfg.max_kl, pcfg.checkpoint_steps, save_good)
        trainer = holder["trainer"] = _trainer(kind, ctx, start, tokenizer, reward, prompts, out_dir, guard)
        stopped = None
        try:
            trainer.train()
            save_policy(out_dir / "model", hand_over=True)  # the evaluation below samples it from memory
            policy_path = str(out_dir / "model")
        except GuardTripped as trip:
            kept = str(good_dir) if good_dir.exists() else start
            stopped = {"reason": trip.reason, "step": trip.step, "kept": kept, "last_good_step": guard.good_step}
            log.warning("%s stopped: %s; carrying on from %s", kind, trip.reason, kept)
            ctx.state.record(ctx.stage_key(ctx.current_stage), "stopped", **stopped)
            policy_path = kept
        # the trainer's models and optimizer states (accelerate keeps references to them) go
        # before the evaluation loads the policy again
        trainer.accelerator.free_memory()
        trainer = holder["trainer"] = None
        gc.collect()
        after = evaluate_policy(ctx, reward, policy_path, eval_prompts)
        kl = sampled_kl(cfg, policy_path, start, eval_prompts, pcfg.max_new_tokens, ctx.seed("kl"))
        ctx.state.artifacts[artifacts.POLICY] = policy_path
        metrics: dict[str, Any] = {
            "trainer": kind,
            "kl": kl,
            "steps": guard.history[-1]["step"] if guard.history else 0,
            "train_kl_last": guard.history[-1].get(TRAINER_METRICS[kind][0]) if guard.history else None,
            # the unprefixed numbers are the sampled ones (evaluate_policy), what PPO optimises
            "eval_temperature": pcfg.temperature,
            "eval_samples": pcfg.eval_samples,
            "prompts_cut": n_cut,
        }
        for name, prefix in (("sampled", ""), ("greedy", "greedy_")):
            for key in before[name]:
                metrics[f"{prefix}{key}_before"] = before[name][key]
                metrics[f"{prefix}{key}_after"] = after[name][key]
        metrics["history"] = guard.history
        if stopped:
            metrics["stopped"] = stopped
        return metrics

    stage.__name__ = f"{kind}_stage"
    return stage


ppo_stage = _online_rl_stage("ppo")
rloo_stage = _online_rl_stage("rloo")
grpo_stage = _online_rl_stage("grpo")
