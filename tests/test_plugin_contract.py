"""One plugin contract for every kind: the resolver (``plugins.selected``/``plugins.named``),
options as typed keyword arguments, one-line errors that name a failing third-party plugin,
the sampler protocol, ``Stage`` objects, and ``summary.json``'s record of what a run selected.

Each test registers a throwaway plugin module in the manager as if a fake distribution had
installed it, selects its thing through the config and runs the core's own code path that
calls it.
"""

from __future__ import annotations

import dataclasses
import json
import types
from typing import Any, Callable

import pytest
import torch
from omegaconf import OmegaConf

from llama2rlhf import RewardCombiner, RewardLoss, Stage, hookimpl
from llama2rlhf.config import (
    AnnotatorConfig,
    AugmenterConfig,
    CheckerConfig,
    Config,
    RewardConfig,
    RewardLossConfig,
    SamplerConfig,
    SelectorConfig,
)
from llama2rlhf.gatt.dialogue import Instruction
from llama2rlhf.recipe.annotation import PairToLabel
from llama2rlhf.sampling import Sample
from llama2rlhf.sampling.candidates import Candidate

PLUGIN, DIST = "throwaway", "fake-throwaway-dist"
PROMPT = [{"role": "user", "content": "What is 3 + 4?"}]


def throwaway(hook: str, name: str, thing: Any) -> types.ModuleType:
    """A plugin module whose ``hook`` registers ``thing`` as ``name``."""
    module = types.ModuleType(f"llama2rlhf_test_{PLUGIN}")

    def register_hook(register):
        register(name, thing)

    register_hook.__name__ = hook
    setattr(module, hook, hookimpl(register_hook))
    return module


# --- one case per kind: what the plugin registers, and the core's code path that calls it ---


@dataclasses.dataclass
class Case:
    hook: str
    label: str  # how errors call a thing of the kind
    base: type | None  # the group's base config class (None: stages, named by the pipeline lists)
    make: Callable[[Callable[[dict], None]], Any]  # the thing, calling act(options) where it runs
    run: Callable[..., Any]  # the core's code path: run(cfg, ctx, env)


def _loss(act):
    def loss(r_chosen, r_rejected, margin, **options):
        act(options)
        return torch.nn.functional.softplus(r_rejected - r_chosen).mean()

    return RewardLoss(loss)


def _run_loss(cfg, ctx, env):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from trl import RewardConfig as TRLRewardConfig

    from llama2rlhf import plugins
    from llama2rlhf.recipe.reward_model import _trainer_class

    tokenizer = env["tokenizer"]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    args = TRLRewardConfig(output_dir=str(ctx.run_dir / "rm"), per_device_train_batch_size=2, report_to=[],
                           use_cpu=True, dataset_num_proc=None, max_length=128)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in env["world"].seed_comparisons(2)]
    trainer = _trainer_class()(model=LlamaForSequenceClassification(config), args=args,
                               train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                               reward_loss=plugins.selected("reward_losses", cfg))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(trainer.model, dict(batch))


def _sampler(act):
    class Scripted:
        def __init__(self, options):
            self.options = options

        def sample(self, prompts, n, temperature, max_new_tokens, desc=None):
            act(self.options)
            return [[Sample("7", 1, True)] * n for _ in prompts]

    return lambda model_path, cfg, **options: Scripted(options)


def _run_sampler(cfg, ctx, env):
    from llama2rlhf.sampling import load_sampler

    assert load_sampler(cfg, str(ctx.run_dir / "policy")).sample([PROMPT], 2, 1.0, 4, desc="test") == [
        [Sample("7", 1, True)] * 2]


def _selector(act):
    def select(candidates, history, **options):
        act(options)
        return list(candidates)

    return select


def _run_selector(cfg, ctx, env):
    from llama2rlhf.recipe.rejection_sampling import select

    select(cfg, [Candidate("p1", PROMPT, "7", 1.0, 1)], [])


def _augmenter(act):
    def augment(rows, ctx, **options):
        act(options)
        return rows

    return augment


def _run_augmenter(cfg, ctx, env):
    from llama2rlhf.recipe.rejection_sampling import augment

    augment(ctx, [{"messages": [*PROMPT, {"role": "assistant", "content": "7"}]}])


def _checker(act):
    def make_check(cfg, **options):
        def check(instruction, reply):
            act(options)
            return True

        return check

    return make_check


def _run_checker(cfg, ctx, env):
    from llama2rlhf.gatt.augmenter import load_checker

    load_checker(cfg)(Instruction("Answer in French.", "Language: French.", ("language:French",)), "Oui.")


def _stage(act):
    def run(ctx):
        act({})
        return {"n": 1}

    return Stage(run)


def _run_stage(cfg, ctx, env):
    from llama2rlhf.recipe.pipeline import run_stage

    run_stage(ctx, "broken_stages")


def _combiner(act):
    def combine(scores, is_safety, **options):
        act(options)
        return scores["helpfulness"]

    return RewardCombiner(combine, needs=("helpfulness",))


def _run_combiner(cfg, ctx, env):
    from llama2rlhf.reward.combined import CombinedReward

    CombinedReward(cfg, {"helpfulness": env["reward_model"]}).score(
        [PROMPT], ["The answer is 7."], [False])


def _annotator(act):
    class Annotator:
        def __init__(self, options):
            self.options = options

        def annotate(self, pairs, workdir):
            act(self.options)
            return [{"id": p.id, "prompt": p.prompt, "strength": "better",
                     "chosen": [{"role": "assistant", "content": p.a}],
                     "rejected": [{"role": "assistant", "content": p.b}]} for p in pairs]

    return lambda cfg, world, **options: Annotator(options)


def _run_annotator(cfg, ctx, env):
    from llama2rlhf.recipe.collect import load_annotator

    load_annotator(ctx).annotate([PairToLabel("r1-0", PROMPT, "7", "8")], ctx.run_dir)


CASES = {
    "reward_losses": Case("register_reward_losses", "reward loss", RewardLossConfig, _loss, _run_loss),
    "samplers": Case("register_samplers", "sampler", SamplerConfig, _sampler, _run_sampler),
    "selectors": Case("register_selectors", "selector", SelectorConfig, _selector, _run_selector),
    "augmenters": Case("register_augmenters", "augmenter", AugmenterConfig, _augmenter, _run_augmenter),
    "checkers": Case("register_checkers", "checker", CheckerConfig, _checker, _run_checker),
    "stages": Case("register_stages", "stage", None, _stage, _run_stage),
    "reward_combiners": Case("register_reward_combiners", "reward combiner", RewardConfig, _combiner, _run_combiner),
    "annotators": Case("register_annotators", "annotator", AnnotatorConfig, _annotator, _run_annotator),
}
SELECTED = [kind for kind, case in CASES.items() if case.base is not None]


def test_every_kind_has_a_case():
    from llama2rlhf import plugins

    assert set(CASES) == set(plugins.KINDS)
    for kind, case in CASES.items():
        assert (case.hook, case.label) == (plugins.KINDS[kind].hook, plugins.KINDS[kind].label)


@pytest.fixture
def env(fresh, world, tokenizer, reward_model, tmp_path):
    """(cfg, ctx, what the code paths need): a structured config on the CPU and a run context."""
    from llama2rlhf.runtime.run import RunContext

    cfg = OmegaConf.merge(OmegaConf.structured(Config), {"device": "cpu", "model": {"dtype": "float32"}})
    ctx = RunContext.open(cfg, tmp_path / "run", world)
    ctx.round, ctx.current_stage = 1, "rejection_sampling"
    return cfg, ctx, {"world": world, "tokenizer": tokenizer, "reward_model": reward_model}


def select(cfg, kind: str, name: str, node: type | None = None) -> None:
    """Select ``name`` in ``kind``'s group, with the structured ``node`` when given."""
    from llama2rlhf import plugins

    group = plugins.KINDS[kind].group
    if group is not None and node is not None:
        cfg[group] = OmegaConf.structured(node)
    elif group is not None:
        cfg[group].name = name


@pytest.mark.parametrize("kind", list(CASES))
def test_a_failing_third_party_plugin_is_named_in_one_line(kind, env, fresh):
    cfg, ctx, needs = env
    case = CASES[kind]

    def act(options):
        raise ValueError("it broke\n  on the second line")

    name = f"broken_{kind}"
    fresh.register(throwaway(case.hook, name, case.make(act)), PLUGIN, distribution=DIST)
    select(cfg, kind, name)
    with pytest.raises(fresh.PluginError) as err:
        case.run(cfg, ctx, needs)
    assert str(err.value) == (f"{case.label} {name!r} of plugin {PLUGIN!r} (distribution {DIST}) failed: "
                              "ValueError: it broke on the second line")
    assert isinstance(err.value.__cause__, ValueError)  # the plugin's own error, with its traceback


@pytest.mark.parametrize("kind", ["selectors", "augmenters", "checkers", "annotators"])
def test_a_builtins_own_error_passes_through_unchanged(kind, env, fresh):
    """The same thing registered by a built-in plugin (distribution llama2rlhf) raises as it is."""
    cfg, ctx, needs = env
    case = CASES[kind]

    def act(options):
        raise ValueError("a built-in's own message")

    fresh.register(throwaway(case.hook, "builtin_like", case.make(act)), PLUGIN, distribution="llama2rlhf")
    select(cfg, kind, "builtin_like")
    with pytest.raises(ValueError, match="^a built-in's own message$"):
        case.run(cfg, ctx, needs)


@pytest.mark.parametrize("kind", SELECTED)
def test_options_arrive_as_typed_keyword_arguments(kind, env, fresh):
    """The extra fields of the selected structured node, typed by it; the keys the framework
    reads itself (``reward_loss.margin_scale``, ``reward.whiten``) are not passed."""
    cfg, ctx, needs = env
    case = CASES[kind]
    got = []
    name = f"typed_{kind}"
    fresh.register(throwaway(case.hook, name, case.make(got.append)), PLUGIN, distribution=DIST)
    node = dataclasses.make_dataclass(f"Typed_{kind}", [("name", str, name), ("scale", float, 1.0),
                                                        ("tags", list[str], dataclasses.field(default_factory=list))],
                                      bases=(case.base,))
    select(cfg, kind, name, node)
    group = fresh.KINDS[kind].group
    cfg[group].scale = "2.5"  # a command-line string, converted by the node's type
    cfg[group].tags = ["a", "b"]
    case.run(cfg, ctx, needs)
    inherited = {"batch_tokens": 65536} if kind == "samplers" else {}  # SamplerConfig's; the hf sampler reads it
    assert got and got[0] == {"scale": 2.5, "tags": ["a", "b"], **inherited}
    assert type(got[0]["scale"]) is float and type(got[0]["tags"]) is list
    selected = fresh.selected(kind, cfg)
    assert (selected.name, selected.plugin, selected.distribution) == (name, PLUGIN, DIST)
    assert selected.record() == {"name": name, "plugin": PLUGIN, "distribution": DIST, "version": None,
                                 "options": {"scale": 2.5, "tags": ["a", "b"], **inherited}}


def test_the_builtin_nodes_give_their_typed_options(fresh):
    cfg = OmegaConf.structured(Config)
    from llama2rlhf.recipe.annotators import RewardModelAnnotatorConfig
    from llama2rlhf.sampling.hf import HFSamplerConfig

    cfg.sampler = OmegaConf.structured(HFSamplerConfig)
    cfg.annotator = OmegaConf.structured(RewardModelAnnotatorConfig(name_or_path="judge"))
    cfg.reward_loss.name, cfg.reward_loss.margin_scale = "margin_small", 3.0
    assert fresh.selected("samplers", cfg).options == {"batch_tokens": 65536, "dialogue_cache_mb": 2048.0}
    assert fresh.selected("annotators", cfg).options == {"name_or_path": "judge", "safety_name_or_path": None,
                                                         "strength_quantiles": [0.25, 0.5, 0.75], "batch_size": 32}
    loss = fresh.selected("reward_losses", cfg)
    assert (loss.plugin, loss.distribution, loss.options) == ("reward_losses", "llama2rlhf", {})


def test_an_unknown_or_unset_name_is_a_clear_error(fresh):
    cfg = OmegaConf.structured(Config)
    with pytest.raises(fresh.PluginError, match=r"^selector.name is not set; choose one of: best_of_k, "):
        fresh.selected("selectors", cfg)
    cfg.selector.name = "nope"
    with pytest.raises(fresh.PluginError, match=r"^no selectors named 'nope'; available: best_of_k"):
        fresh.selected("selectors", cfg)
    with pytest.raises(KeyError, match="use plugins.named"):
        fresh.selected("stages", cfg)


# --- the sampler contract ------------------------------------------------------------------


def test_a_sampler_factory_that_returns_no_sampler_is_refused_with_its_name(env, fresh):
    from llama2rlhf.sampling import load_sampler

    cfg, ctx, _ = env
    fresh.register(throwaway("register_samplers", "not_a_sampler", lambda model_path, cfg, **o: object()), PLUGIN,
                   distribution=DIST)
    cfg.sampler.name = "not_a_sampler"
    with pytest.raises(fresh.PluginError, match=rf"^sampler 'not_a_sampler' of plugin '{PLUGIN}' \(distribution "
                                                rf"{DIST}\) returned an object \(<object object at .*>\); expected a "
                                                r"llama2rlhf.sampling.Sampler"):
        load_sampler(cfg, str(ctx.run_dir / "policy"))


def test_a_failing_sampler_factory_is_named(env, fresh):
    from llama2rlhf.sampling import load_sampler

    cfg, ctx, _ = env

    def factory(model_path, cfg, **options):
        raise OSError(f"no checkpoint in {model_path}")

    fresh.register(throwaway("register_samplers", "broken_factory", factory), PLUGIN, distribution=DIST)
    cfg.sampler.name = "broken_factory"
    with pytest.raises(fresh.PluginError, match=rf"^sampler 'broken_factory' of plugin '{PLUGIN}' \(distribution "
                                                rf"{DIST}\) failed: OSError: no checkpoint in /x$"):
        load_sampler(cfg, "/x")


def test_the_sampler_protocol():
    from llama2rlhf.sampling import KeepsPrefixes, Sampler
    from llama2rlhf.sampling.hf import HFSampler

    class Bare:
        def sample(self, prompts, n, temperature, max_new_tokens, desc=None):
            return []

    assert isinstance(Bare(), Sampler) and not isinstance(Bare(), KeepsPrefixes)
    assert not isinstance(object(), Sampler)
    assert issubclass(HFSampler, KeepsPrefixes)


def test_a_wrapped_samplers_prefix_cache_and_attributes_are_its_own(env, fresh):
    """A third-party sampler comes back wrapped; ``keep_prefixes`` and attribute writes reach it."""
    import contextlib

    from llama2rlhf.sampling import load_sampler

    cfg, ctx, _ = env
    made = []

    class WithPrefixes:
        show_progress = True

        def sample(self, prompts, n, temperature, max_new_tokens, desc=None, seeds=None):
            return [[Sample("x", 1, True)] * n for _ in prompts]

        @contextlib.contextmanager
        def keep_prefixes(self):
            yield "store"

    def factory(model_path, cfg, **options):
        made.append(WithPrefixes())
        return made[-1]

    fresh.register(throwaway("register_samplers", "prefixes", factory), PLUGIN, distribution=DIST)
    cfg.sampler.name = "prefixes"
    sampler = load_sampler(cfg, "/x")
    assert sampler.__wrapped__ is made[0]
    sampler.show_progress = False
    assert made[0].show_progress is False
    with sampler.keep_prefixes() as store:
        assert store == "store"


# --- stages ---------------------------------------------------------------------------------


def test_registering_something_that_is_not_a_stage_is_refused(fresh):
    fresh.register(throwaway("register_stages", "bare_function", lambda ctx: {}), PLUGIN, distribution=DIST)
    with pytest.raises(fresh.PluginError, match=rf"^plugin '{PLUGIN}' \({DIST}\) registered stage 'bare_function' "
                                                r"as a function, not a llama2rlhf.Stage"):
        fresh.named("stages", "bare_function")


@pytest.mark.parametrize(("stage", "key"), [(Stage(lambda ctx: {"n": 1}), "counted"),
                                             (Stage(lambda ctx: {"n": 1}, summary_key="elsewhere"), "elsewhere"),
                                             (Stage(lambda ctx: {"n": 1}, summary_key=None), None)])
def test_a_stages_metrics_go_under_its_summary_key(fresh, world, tmp_path, stage, key):
    from llama2rlhf.recipe.pipeline import run_stage
    from llama2rlhf.runtime.run import RunContext

    fresh.register(throwaway("register_stages", "counted", stage), PLUGIN, distribution=DIST)
    assert fresh.named("stages", "counted").obj.summary_key == key  # the default is the registered name
    ctx = RunContext.open(OmegaConf.create({"logger": {"name": "none"}, "seed": 0}), tmp_path / "run", world)
    ctx.round = 1
    run_stage(ctx, "counted")
    entry = json.loads((tmp_path / "run" / "summary.json").read_text())["rounds"][0]
    assert entry == {"round": 1, **({"n": 1} if key is None else {key: {"n": 1}})}


def test_the_builtin_stages_are_stage_objects(fresh):
    keys = {name: item.obj.summary_key for name, item in fresh.registry("stages").items()
            if item.distribution == "llama2rlhf"}
    assert keys == {"sft": "sft", "reward": "reward", "collect": "collect", "rejection_sampling": "rs",
                    "evaluate": None, "ppo": "ppo", "rloo": "ppo", "grpo": "ppo"}


# --- logger plugins -------------------------------------------------------------------------


def test_trainers_get_every_logger_plugins_callbacks_and_integrations(fresh):
    from transformers import TrainerCallback

    from llama2rlhf.recipe.training_args import report_to, trainer_callbacks

    seen = []
    mine_callback = TrainerCallback()

    class Logger:
        @hookimpl
        def trainer_callbacks(self, cfg, stage):
            seen.append(stage)
            return [mine_callback] if cfg.logger.name == "mine" else []

        @hookimpl
        def trainer_report_to(self, cfg, stage):
            return ["tensorboard"] if cfg.logger.name == "mine" else []

    fresh.register(Logger(), "my_logger", distribution=DIST)
    mine = OmegaConf.create({"logger": {"name": "mine"}})
    assert trainer_callbacks(mine, "sft") == [mine_callback] and report_to(mine, "sft") == ["tensorboard"]
    assert seen == ["sft"]
    # the built-in wandb logger acts only when selected
    wandb = OmegaConf.create({"logger": {"name": "wandb"}})
    assert report_to(wandb, "reward") == ["wandb"] and trainer_callbacks(wandb, "reward") == []


def test_recipe_does_not_import_the_wandb_logger():
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "src" / "llama2rlhf" / "recipe"
    assert not [p.name for p in recipe.glob("*.py") if "runtime.loggers" in p.read_text(encoding="utf-8")]


# --- summary.json ---------------------------------------------------------------------------


def test_summary_records_the_selected_plugin_of_every_kind_when_the_run_starts(fresh, tmp_path):
    """A tiny pipeline in-process: a plugin stage reads summary.json while it runs, so the
    record is there before any stage (a run that fails later still has it)."""
    from hydra import compose, initialize_config_module

    from llama2rlhf.config import store_configs
    from llama2rlhf.recipe.pipeline import run

    seen = []

    def probe(ctx):
        seen.append(json.loads((ctx.run_dir / "summary.json").read_text())["plugins"])
        return {}

    fresh.register(throwaway("register_stages", "probe", Stage(probe, summary_key=None)), PLUGIN, distribution=DIST)
    store_configs()
    with initialize_config_module(config_module="llama2rlhf.config.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            "model.hidden_size=16", "model.intermediate_size=32", "model.num_layers=1", "model.num_heads=2",
            "model.vocab_size=400", "pipeline.stages=[probe]", "pipeline.rounds=0", "logger=none",
            "reward_loss=example_hinge", "reward_loss.width=0.5", "selector=best_of_k"])
    ctx = run(cfg, tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "summary.json").read_text())["plugins"]
    assert seen == [recorded] and ctx.summary["plugins"] == recorded
    assert list(recorded) == ["reward_loss", "sampler", "selector", "augmenter", "checker", "reward", "annotator",
                              "logger", "stages"]
    builtin = {"distribution": "llama2rlhf", "version": fresh.version_of("llama2rlhf")}
    assert recorded["reward_loss"] == {"name": "example_hinge", "plugin": "example", "distribution": "llama2rlhf-example",
                                       "version": fresh.version_of("llama2rlhf-example"), "options": {"width": 0.5}}
    assert recorded["sampler"] == {"name": "hf", "plugin": "samplers", **builtin,
                                   "options": {"batch_tokens": 65536, "dialogue_cache_mb": 2048.0}}
    assert recorded["selector"] == {"name": "best_of_k", "plugin": "selectors", **builtin, "options": {}}
    assert recorded["reward"] == {"name": "llama2", "plugin": "reward_combiners", **builtin,
                                  "options": {"safety_threshold": 0.15}}  # not whiten: the pipeline's
    assert {k: recorded[k]["name"] for k in ("augmenter", "checker", "annotator")} == {
        "augmenter": "gatt", "checker": "source", "annotator": "toy"}
    # logger=none is the core's own node (conf/logger/none.yaml)
    assert recorded["logger"] == {"name": "none", "plugin": None, **builtin, "options": {}}
    assert recorded["stages"] == {"probe": {"name": "probe", "plugin": PLUGIN, "distribution": DIST,
                                            "version": None, "options": {}, "summary_key": None}}


def test_summary_names_a_logger_plugin_by_its_config_node(fresh):
    from hydra import compose, initialize_config_module

    from llama2rlhf.config import store_configs
    from llama2rlhf.recipe.pipeline import selected_plugins

    store_configs()
    with initialize_config_module(config_module="llama2rlhf.config.conf", version_base="1.3"):
        cfg = compose("config", overrides=["pipeline.rounds=1", "pipeline.ppo_rounds=[1]"])
        events = compose("config", overrides=["logger=example_events", "logger.patience=3"])
    recorded = selected_plugins(cfg)
    assert recorded["logger"]["name"] == "wandb" and recorded["logger"]["plugin"] == "loggers"
    assert recorded["logger"]["options"]["project"] == "llama2rlhf"
    # the stages of the whole plan, each once, in the order they first run
    assert list(recorded["stages"]) == ["sft", "collect", "reward", "rejection_sampling", "ppo", "evaluate"]
    assert recorded["stages"]["rejection_sampling"]["summary_key"] == "rs"
    logger = selected_plugins(events)["logger"]
    assert (logger["plugin"], logger["distribution"], logger["options"]["patience"]) == (
        "example", "llama2rlhf-example", 3)


def test_a_sampler_without_seeds_gets_torchs_generator_seeded_per_call(env, fresh):
    import torch

    from llama2rlhf.sampling import SeedsThroughGenerator, load_sampler

    cfg, _, _ = env

    class Unseeded:
        def sample(self, prompts, n, temperature, max_new_tokens, desc=None):
            return [[Sample(str(torch.randint(0, 10**9, ()).item()), 1, True) for _ in range(n)] for _ in prompts]

    fresh.register(throwaway("register_samplers", "unseeded", lambda model_path, cfg, **o: Unseeded()), PLUGIN,
                   distribution=DIST)
    cfg.sampler.name = "unseeded"
    sampler = load_sampler(cfg, "/x")
    assert isinstance(sampler.__wrapped__, SeedsThroughGenerator)
    a = sampler.sample([[{"role": "user", "content": "hi"}]] * 2, 2, 1.0, 5, seeds=[7, 8])
    b = sampler.sample([[{"role": "user", "content": "hi"}]] * 2, 2, 1.0, 5, seeds=[7, 8])
    c = sampler.sample([[{"role": "user", "content": "hi"}]] * 2, 2, 1.0, 5, seeds=[9, 8])
    assert a == b and a != c  # reproducible from the call's first seed
