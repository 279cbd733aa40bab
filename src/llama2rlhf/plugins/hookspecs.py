"""Hook specifications: the plugin author's manual.

Every hook here is implemented by the built-in plugins (modules of this package that register themselves, listed in ``llama2rlhf.plugins.BUILTIN_PLUGINS``) and may be
implemented by any installed package that declares an entry point in the ``llama2rlhf``
group::

    [project.entry-points.llama2rlhf]
    my_plugin = "my_package.plugin"

and marks its functions with ``llama2rlhf.hookimpl``. The ``register_*`` hooks follow one
pattern (borrowed from simonw/llm): the hook receives a ``register`` callable and calls
``register(name, thing)`` once per thing it provides. ``name`` is what the matching Hydra
config group selects (``reward_loss=<name>``, ``sampler=<name>`` ...); two plugins
registering the same name in the same kind is an error that names both.

Options arrive one way. Every registered callable is called with its kind's positional
inputs, then the extra keys of its selected config node as keyword arguments
(``**options``): a plugin gives its options a structured node (:func:`register_configs`),
so Hydra type-checks them and they arrive typed. Keys of a group's base config class that
the framework reads itself (``reward_loss.margin_scale``, ``reward.whiten``; each base
class in ``llama2rlhf.config`` says which) are not passed. Before a run starts the options
of what it selects are checked (``llama2rlhf --validate``): against the node's dataclass,
or, for a plain node, against the callable's signature as its kind calls it.

A third-party plugin that raises is named in a one-line ``PluginError`` (``<kind> 'name'
of plugin 'p' (distribution d) failed: ...``; ``hook <hook> of plugin ...`` for the hooks
that register nothing), and so is one that returns something else than its hook below
says (``... returned <what>; expected <what>``: types and shapes are checked where the
result comes back). ``summary.json``'s ``plugins`` records what a run selected of every kind.

Keep module-level imports of torch, transformers and trl out of plugin modules: the CLI
imports every plugin to build its config groups, and should start in well under a second.
Import heavy libraries inside the functions you register.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from hydra.core.config_store import ConfigStore

    from llama2rlhf.runtime.run import RunContext

hookspec = pluggy.HookspecMarker("llama2rlhf")

Register = Callable[[str, Any], None]


@hookspec
def register_reward_losses(register: Register) -> None:
    """Register pairwise reward-model losses (paper 3.2.2).

    Call ``register(name, loss)`` where ``loss`` is either

    * a callable ``loss(r_chosen, r_rejected, margin, **options) -> Tensor`` returning a
      scalar; ``r_chosen`` and ``r_rejected`` are float tensors of shape ``(batch,)`` and
      ``margin`` is a tensor of the same shape or ``None`` when the data carries no
      preference strength; or
    * a :class:`llama2rlhf.RewardLoss`, which wraps such a callable together with a
      ``margins`` table (strength label -> margin) that the reward stage uses to turn each
      pair's annotated strength into its ``margin`` (paper Table 27).

    Every ``reward_loss`` node has ``margin_scale`` (default 1), which the reward stage
    multiplies the ``margins`` table by; it is not passed to the loss. ``options`` are the
    other extra keys of the selected ``reward_loss`` config node: a loss with parameters
    registers its own structured config in :func:`register_configs` under group
    ``reward_loss``. Selected with ``reward_loss=<name>``.
    """


@hookspec
def register_samplers(register: Register) -> None:
    """Register generation back ends used for rejection sampling and data collection.

    Call ``register(name, factory)``; ``factory(model_path, cfg, **options)`` gets the
    folder of a saved policy (weights and tokenizer), loads it as it needs (an HF-based
    sampler through ``llama2rlhf.sampling.load_policy(model_path, cfg)``, which returns the
    model on the run's device and its tokenizer; another engine from the folder itself),
    and returns a :class:`llama2rlhf.sampling.Sampler`:
    ``sample(prompts, n, temperature, max_new_tokens, desc=None, seeds=None) ->
    list[list[Sample]]``, for each prompt (a message list, in order) ``n`` completions with
    their token counts; temperature 0 is greedy; ``desc`` is a label for progress output.
    ``seeds`` holds one seed per prompt: draw prompt ``i``'s samples from ``seeds[i]`` alone
    (the ``hf`` sampler keys each sample's draws by it and the sample's index; vLLM takes a
    seed per request), so that they do not depend on the prompts that share the call. Under
    ``accelerate launch`` every process samples its own share of the prompts, and this is
    what makes their samples those of one process. A ``sample`` without the parameter
    still works: torch's generator is seeded from each call's first seed, and the samples
    then depend on how the prompts were shared out. ``options`` are the
    extra keys of the ``sampler`` node (``batch_tokens`` is every node's; the ``hf``
    sampler reads it). ``load_sampler`` refuses an object without ``sample`` with an error
    that names the plugin. Selected with ``sampler=<name>``.

    Optionally the object has ``keep_prefixes()``, a context manager: Ghost Attention
    samples its dialogues turn by turn inside it (each prompt the one before plus a reply
    and a user turn), so a sampler can keep what it computed for a prompt and run only
    the new tokens of the next (the ``hf`` sampler does). It yields an object with
    ``hits`` and ``hit_tokens`` counts, or None.
    """


@hookspec
def register_selectors(register: Register) -> None:
    """Register selection strategies for rejection sampling (paper 3.2.3).

    Call ``register(name, select)`` with
    ``select(candidates: list[Candidate], history: list[Candidate]) -> list[Candidate]``.
    ``candidates`` are this round's samples, ``history`` the samples kept in earlier
    rounds; both are :class:`llama2rlhf.sampling.candidates.Candidate` (prompt id, prompt messages,
    completion, ``score`` from the newest reward model, ``round`` and the prompt's ``meta``).
    Return the candidates that become fine-tuning data: at most one per prompt for the
    built-ins ``best_of_k`` and ``best_over_history``, but a selector may keep several, or
    none for a prompt (a threshold, a diversity rule). It is called as
    ``select(candidates, history, **options)``, ``options`` being the extra keys of the
    selected ``selector`` config node (give them a node in :func:`register_configs`, group
    ``selector``). Selected with ``selector=<name>``.
    """


@hookspec
def register_augmenters(register: Register) -> None:
    """Register transforms of rejection sampling's fine-tuning data (Ghost Attention, paper 3.3).

    Call ``register(name, augment)`` with ``augment(rows: list[dict], ctx: RunContext,
    **options) -> list[dict]``; ``options`` are the extra keys of the ``augmenter`` node.
    ``rows`` are this round's fine-tuning examples (the kept samples) in a TRL
    conversational format: ``{"messages": [...]}`` or ``{"prompt": [...], "completion":
    [...]}``; return the rows to fine-tune on, the given ones included unless you mean to
    drop them. Prompt-completion rows train on the completion only (TRL masks the prompt),
    which is how the built-in ``gatt`` teaches only the last turn of a dialogue; rows of
    both formats may be mixed. ``ctx`` gives the config (``ctx.cfg``), ``ctx.round``, the
    policy to sample from (``ctx.artifact("policy")``, e.g. through
    ``llama2rlhf.sampling.load_sampler``), the toy world (``ctx.world``, ``None`` on real
    data) and ``ctx.stage_dir()`` for files.
    Called once per rejection-sampling fine-tune; return ``rows`` unchanged in rounds you
    skip. Selected with ``augmenter=<name>`` (``gatt`` by default, ``none`` to switch off).

    Under ``accelerate launch`` it runs on every process, so that its sampling can be shared
    out among them: sample through ``llama2rlhf.runtime.distributed.shard`` with seeds
    from ``ctx.seed(...)`` (see ``gatt``), write files from the main process only
    (``distributed.is_main_process()``). Every process trains on the main process's rows.
    """


@hookspec
def register_checkers(register: Register) -> None:
    """Register checkers of Ghost Attention's instructions (paper 3.3).

    Call ``register(name, make_check)`` with ``make_check(cfg, **options) -> check``
    (``options``: the extra keys of the ``checker`` node) and
    ``check(instruction, reply: str) -> bool | None``: True where the reply follows the
    instruction, False where it breaks it, None where it cannot tell (the reply is kept).
    ``instruction`` is a ``llama2rlhf.gatt.dialogue.Instruction``: ``text`` as the user
    or system prompt states it, ``short`` the paper's short form, ``keys`` its parts as
    ``"kind:value"`` strings (``"language:capitals"``, ``"persona:Napoleon"``,
    ``"hobby:chess"``). With ``gatt.filter`` the ``gatt`` augmenter keeps, at each turn, the
    first of ``gatt.samples_per_turn`` replies the checker does not reject, and ends the
    dialogue where it rejects them all. Selected with ``checker=<name>``; the built-in
    ``source`` asks the constraint source (the toy world checks its constraints;
    ``gatt.constraints=list`` cannot check free text, so every reply is kept): a checker
    plugin is how real-data instructions get filtered, by rules or by a judge model.
    """


@hookspec
def register_stages(register: Register) -> None:
    """Register pipeline stages (sft, reward, rejection_sampling, ppo, ...).

    Call ``register(name, Stage(run, summary_key=..., uses=...))`` with a
    :class:`llama2rlhf.Stage` (anything else is an error that names the plugin); ``uses``
    names the kinds the stage calls (``("samplers", "reward_combiners")``, the keys of
    ``llama2rlhf.plugins.KINDS``), whose options a run checks before it starts (all kinds
    when not given). ``run(ctx: RunContext) -> dict``
    runs one stage of the pipeline: it reads its inputs from ``ctx`` (config, run
    directory, the paths of earlier stages' outputs), writes its outputs under
    ``ctx.stage_dir()`` (its own folder in this round, named as the stage runs: a stage
    that runs twice in a round runs the second time as ``<name>_after_<previous stage>``)
    and returns the metrics that go into ``summary.json``, under ``summary_key``: the
    registered name by default, another key when given, or merged into the round's entry
    with ``None``. ``ctx.round`` is 0 before the RLHF rounds and k in round k. A stage
    that finished is recorded in ``state.json`` and skipped when the run is resumed;
    ``ctx.state.artifacts`` maps names (``policy``, ``reward``, ``sft``...; the built-in ones
    are constants of ``llama2rlhf.runtime.artifacts``) to the paths a stage produced for
    later ones; ``Stage(run, needs=(...), makes=(...))`` declares those it reads and those
    it writes, and a run that lists it before a stage that makes what it reads is refused
    before it starts. ``pipeline.stages`` lists the stages run once, in
    order, ``pipeline.round_stages`` those run in every round, and ``pipeline.ppo_stages``
    those run after rejection sampling in ``pipeline.ppo_rounds`` (built-ins: ``ppo``,
    ``rloo``, ``grpo``).

    Under ``accelerate launch`` every process calls the stage with the same ``ctx``: train
    with a transformers or TRL trainer on all of them (save with
    ``llama2rlhf.runtime.models.save_trained_model``); share sampling and scoring out with
    ``llama2rlhf.runtime.distributed.shard(fn, items, ctx.cfg.shard_size)`` (every process
    calls it with the same items and gets every result; pass the sampler one seed per
    prompt, from ``llama2rlhf.runtime.seeding.item_seeds(ctx.seed(...), ids)``); and put
    what must happen once (labelling, file writes) in
    ``llama2rlhf.runtime.distributed.main_process_only(fn, ...)``, which runs ``fn`` on the
    main process and returns its result on every process. Afterwards every process takes
    the main process's metrics, ``ctx.state`` and ``ctx.summary``. The built-in stages
    sample and score on every process, and select, annotate and write on the main one.
    """


@hookspec
def register_reward_combiners(register: Register) -> None:
    """Register rules that turn several reward models' scores into one reward.

    Call ``register(name, combiner)`` with a :class:`llama2rlhf.RewardCombiner`:
    ``RewardCombiner(fn, needs=("helpfulness", "safety"))`` where
    ``fn(scores: dict[str, Tensor], is_safety: Tensor, **options) -> Tensor``. ``scores``
    maps each reward model the run trained (``"helpfulness"``; ``"safety"`` when the data
    has safety labels) to its raw scores, all of one shape (``(batch,)`` when scoring
    replies, ``(batch, tokens)`` inside TRL's PPO, where every position is scored);
    ``is_safety`` is a bool tensor that broadcasts against them, True for safety prompts.
    Return a float tensor of the scores' shape, higher is better; keep it elementwise, so
    the reward of one reply never depends on the others in its batch. The pipeline then
    whitens it with fixed statistics (``reward.whiten``).

    The selected combiner is the one reward used everywhere: rejection-sampling scores,
    PPO/RLOO/GRPO rewards and the reward-model judge of evaluation. ``options`` are the
    extra keys of the ``reward`` config node but ``whiten``, which the pipeline reads (give
    them a node in :func:`register_configs`, group ``reward``). Llama 2's piecewise rule is
    the built-in ``llama2`` (paper 3.2.3, "PPO"), the default; ``single`` reads the
    helpfulness model only. Selected with ``reward=<name>``.
    """


@hookspec
def register_annotators(register: Register) -> None:
    """Register preference annotators: who labels a pair of responses (paper 3.2.1).

    Call ``register(name, factory)``; ``factory(cfg, world, **options)`` returns an object
    with ``annotate(pairs: list[PairToLabel], workdir: Path) -> list[dict]``; ``options``
    are the extra keys of the ``annotator`` node, where a value ``run:<artifact>`` is
    already the path of that checkpoint of the run (``run:reward``: the newest reward
    model). Each returned row is a comparison in TRL's explicit-prompt preference format
    (``prompt``, ``chosen``, ``rejected`` as message lists) plus ``id`` (the pair's) and
    ``strength`` (one of ``llama2rlhf.data.strength.STRENGTHS``), in the order of
    ``pairs``. ``workdir`` is this round's folder, for annotators that exchange files. An
    annotator whose labels are not ready raises
    :class:`llama2rlhf.recipe.annotation.AwaitingLabels` (passed on as it is, not as a
    failure): the run stops with its message and continues the round when started again.
    ``world`` is the toy world, or ``None`` with real data. Selected with
    ``annotator=<name>``.
    """


@hookspec
def register_configs(config_store: "ConfigStore") -> None:
    """Store a plugin's structured config nodes in Hydra's ConfigStore.

    Use it to give a registered thing its own typed options, for example::

        @dataclass
        class HingeConfig(RewardLossConfig):
            name: str = "hinge"
            width: float = 1.0

        @hookimpl
        def register_configs(config_store):
            config_store.store(group="reward_loss", name="hinge", node=HingeConfig)

    ``reward_loss=hinge reward_loss.width=2`` then type-checks ``width``. A registered name
    without a node of its own gets a plain node (just ``name``) automatically.
    """


@hookspec
def trainer_report_to(cfg: Any, stage: str) -> list[str]:
    """Names of transformers' reporting integrations for a trainer of ``stage`` (its
    ``TrainingArguments.report_to``): a logger plugin returns the ones it wants when its
    logger is selected (``cfg.logger.name``), else ``[]``. Every implementation's names
    are joined. ``stage`` names the stage that trains (``sft``, ``reward``,
    ``rejection_sampling``, ``ppo``, ``rloo``, ``grpo``, or a plugin stage that builds its
    trainer with ``llama2rlhf.recipe.training_args.build_args``); the built-in ``wandb``
    logger returns ``["wandb"]``. Under ``accelerate launch`` every process calls it (each
    builds its trainer), as it does :func:`trainer_callbacks`."""


@hookspec
def trainer_callbacks(cfg: Any, stage: str) -> list[Any]:
    """``transformers.TrainerCallback`` objects for a trainer of ``stage`` (as in
    :func:`trainer_report_to`): a logger plugin returns its callbacks when its logger is
    selected, else ``[]``; every implementation's callbacks are joined. The built-in
    ``wandb`` logger adds one that logs the trainer's curves under the stage's key when one
    W&B run spans the pipeline (a sweep). Import transformers inside the function."""


@hookspec
def on_stage_start(ctx: "RunContext", stage: str, round: int) -> None:
    """Called before a stage runs (observers: loggers, progress reports); under
    ``accelerate launch`` on the main process only, as are the two hooks below. A logger is
    an observer that acts when ``ctx.cfg.logger.name`` is its name (a node in group
    ``logger`` from :func:`register_configs` makes the name selectable)."""


@hookspec
def on_stage_end(ctx: "RunContext", stage: str, round: int, metrics: dict[str, Any]) -> None:
    """Called after a stage finished, with the metrics it returned."""


@hookspec
def on_round_end(ctx: "RunContext", round: int, summary: dict[str, Any]) -> None:
    """Called after each RLHF round with that round's summary entry."""


@hookspec
def on_run_end(ctx: "RunContext", summary: dict[str, Any]) -> None:
    """Called once at the end of a pipeline run, after its last stage and round (also when a
    resumed run had nothing left to do), with the whole ``summary.json`` content.
    ``summary["final"]`` holds the end-of-run numbers under names that do not depend on the
    number of rounds (``rm_accuracy``, ``gold_reward``, ``task_accuracy``,
    ``win_rate_vs_sft``, ``round``; see ``llama2rlhf.evaluation.final``), for loggers and
    sweeps. Not called when a stage raised."""
