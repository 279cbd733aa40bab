"""A third-party plugin that misbehaves, as a user meets it: each case is one ``llama2rlhf: ``
line (exit code 2, no traceback) that names the plugin, its distribution, the registered
name or the hook, and says what went wrong: an exception inside any of its code, a result
of the wrong type or shape, options its callable cannot take, or a plugin that does not
load. Options are checked before the run (``llama2rlhf --validate``, and a real run before
SFT); the rest through the pipeline where a tiny run reaches it, else through the core's
own code path that calls the plugin.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import textwrap
import types
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, assert_bad
from llama2rlhf import RewardCombiner, RewardLoss, Stage, hookimpl
from llama2rlhf.config import Config, RewardLossConfig
from llama2rlhf.gatt.dialogue import Instruction
from llama2rlhf.recipe.annotation import PairToLabel
from llama2rlhf.sampling import Sample
from llama2rlhf.sampling.candidates import Candidate

PLUGIN, DIST = "misbehaving", "fake-misbehaving-dist"
PROMPT = [{"role": "user", "content": "What is 3 + 4?"}]
NAMES = (f"plugin '{PLUGIN}'", f"distribution {DIST}")  # in every line about the plugin

# one plugin stage, no rounds: the base model and the stage, nothing trains
ONLY = ["pipeline.rounds=0", "pipeline.ppo_rounds=[]"]


def plugin_module(**hooks: Any) -> types.ModuleType:
    """A plugin module with the given hook functions (marked as implementations)."""
    module = types.ModuleType(f"llama2rlhf_test_{PLUGIN}")
    for hook, fn in hooks.items():
        fn.__name__ = hook
        setattr(module, hook, hookimpl(fn))
    return module


def registering(hook: str, name: str, thing: Any) -> types.ModuleType:
    """A plugin module whose ``hook`` registers ``thing`` as ``name``."""
    return plugin_module(**{hook: lambda register: register(name, thing)})


@pytest.fixture
def install(fresh):
    """``install(module)``: the plugin, as if distribution DIST had installed it. The
    transformers progress bars are off, so that stderr holds the error line alone."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    yield lambda module: fresh.register(module, PLUGIN, distribution=DIST)
    if shown:
        hf_logging.enable_progress_bar()


def assert_stopped(result, *named: str) -> str:
    """A run that trains stopped on the plugin: exit code 2 and one ``llama2rlhf: `` line
    naming ``named``, among the trainer's own progress output (bars, logs), without the
    error's traceback."""
    assert result.code == 2, (result.code, result.err)
    lines = [m.group(0) for m in re.finditer(r"llama2rlhf: [^\r\n]*", result.err)]
    assert len(lines) == 1, result.err
    assert "PluginError" not in result.err
    for text in named:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def a_stage(metrics: Any = None) -> Stage:
    return Stage(lambda ctx: {"n": 1} if metrics is None else metrics)


# --- through the pipeline: stages, observer hooks, logger hooks, the reward loss -------------


def test_a_stage_that_returns_a_list_instead_of_metrics(cli, install, tmp_path):
    install(registering("register_stages", "listy", a_stage([0.5, 0.7])))
    line = assert_bad(cli(f"hydra.run.dir={tmp_path / 'run'}", *TINY, *ONLY, "pipeline.stages=[listy]"),
                      "stage 'listy'", *NAMES, "returned a list of 2 items", "expected a mapping of metric names",
                      "register_stages")
    assert "summary.json" not in line


def test_a_stage_that_raises(cli, install, tmp_path):
    def run(ctx):
        raise KeyError("no 'kept' artifact")

    install(registering("register_stages", "fragile", Stage(run)))
    assert_bad(cli(f"hydra.run.dir={tmp_path / 'run'}", *TINY, *ONLY, "pipeline.stages=[fragile]"),
               "stage 'fragile'", *NAMES, "failed: KeyError")


def _read_only(*args):
    raise RuntimeError("the event log is read-only\n  (second line)")


OBSERVERS = {
    "on_stage_start": lambda ctx, stage, round: _read_only(),
    "on_stage_end": lambda ctx, stage, round, metrics: _read_only(),
    "on_round_end": lambda ctx, round, summary: _read_only(),
    "on_run_end": lambda ctx, summary: _read_only(),
}


@pytest.mark.parametrize("hook", list(OBSERVERS))
def test_an_observer_hook_that_raises(cli, install, tmp_path, hook):
    install(plugin_module(**{hook: OBSERVERS[hook], "register_stages": lambda register: register("ok", a_stage())}))
    # one round that runs the plugin stage alone, so that every observer hook is reached
    result = cli(f"hydra.run.dir={tmp_path / 'run'}", *TINY, "pipeline.stages=[]", "pipeline.rounds=1",
                 "pipeline.ppo_rounds=[]", "pipeline.round_stages=[ok]")
    assert_bad(result, f"hook {hook}", *NAMES, "failed: RuntimeError: the event log is read-only (second line)")


def test_trainer_callbacks_that_are_not_callbacks(cli, install, tmp_path):
    def trainer_callbacks(cfg, stage):
        return "print_loss"  # a name, not a list of transformers.TrainerCallback

    install(plugin_module(trainer_callbacks=trainer_callbacks))
    run = tmp_path / "run"
    assert_bad(cli(f"hydra.run.dir={run}", *TINY, *ONLY, "pipeline.stages=[sft]"),
               "hook trainer_callbacks", *NAMES, "returned a str ('print_loss')",
               "expected a list of transformers.TrainerCallback")
    assert not (run / "sft" / "model").exists()


def test_trainer_report_to_that_names_no_integration(cli, install, tmp_path):
    def trainer_report_to(cfg, stage):
        return [None]

    install(plugin_module(trainer_report_to=trainer_report_to))
    assert_bad(cli(f"hydra.run.dir={tmp_path / 'run'}", *TINY, *ONLY, "pipeline.stages=[sft]"),
               "hook trainer_report_to", *NAMES, "returned None among its names", "integration names (str)")


def test_a_reward_loss_that_returns_a_float_inside_the_trainer(cli, install, tmp_path):
    """TRL's trainer calls the loss at every step of a real (tiny) reward stage."""
    def loss(r_chosen, r_rejected, margin):
        return torch.nn.functional.softplus(r_rejected - r_chosen).mean().item()

    install(registering("register_reward_losses", "floaty", RewardLoss(loss)))
    run = tmp_path / "run"
    result = cli(f"hydra.run.dir={run}", *TINY, *ONLY, "data.n_sft=16", "data.n_pairs=16", "data.n_eval_pairs=8",
                 "data.n_eval_prompts=4", "pipeline.stages=[sft,reward]", "reward_loss=floaty")
    assert_stopped(result, "reward loss 'floaty'", *NAMES, "returned a float (", "expected a scalar float tensor",
                   "register_reward_losses")
    assert not (run / "reward" / "model").exists()


# --- the reward loss in the trainer, the sampler, selector, augmenter, checker, annotator and
# combiner: the core's code path that calls each (a pipeline run would take minutes) ---------


@pytest.fixture
def env(fresh, world, tmp_path):
    from llama2rlhf.runtime.run import RunContext

    cfg = OmegaConf.merge(OmegaConf.structured(Config), {"device": "cpu", "model": {"dtype": "float32"}})
    ctx = RunContext.open(cfg, tmp_path / "run", world)
    ctx.round, ctx.current_stage = 1, "rejection_sampling"
    return cfg, ctx


def _loss_step(cfg, tokenizer, world, out_dir):
    """One reward-trainer step on two seed comparisons, through TRL's compute_loss."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from trl import RewardConfig as TRLRewardConfig

    from llama2rlhf import plugins
    from llama2rlhf.recipe.reward_model import _trainer_class

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    args = TRLRewardConfig(output_dir=str(out_dir), per_device_train_batch_size=2, report_to=[], use_cpu=True,
                           dataset_num_proc=None, max_length=128)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in world.seed_comparisons(2)]
    trainer = _trainer_class()(model=LlamaForSequenceClassification(config), args=args,
                               train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                               reward_loss=plugins.selected("reward_losses", cfg))
    trainer.compute_loss(trainer.model, dict(next(iter(trainer.get_train_dataloader()))))


LOSSES = {
    # per pair instead of the batch's mean
    "unreduced": (lambda rc, rr, m: torch.nn.functional.softplus(rr - rc), "returned a Tensor of shape (2,)"),
    # .item() cuts the graph: training would stop at backward() with an unrelated message
    "detached": (lambda rc, rr, m: torch.tensor(torch.nn.functional.softplus(rr - rc).mean().item()),
                 "returned a tensor cut off from the rewards' graph"),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_a_reward_loss_of_the_wrong_shape_or_cut_off(env, install, tokenizer, world, tmp_path, name):
    cfg, _ = env
    fn, said = LOSSES[name]
    install(registering("register_reward_losses", name, RewardLoss(fn)))
    cfg.reward_loss.name = name
    with pytest.raises(Exception) as err:
        _loss_step(cfg, tokenizer, world, tmp_path / "rm")
    line = str(err.value)
    for text in (f"reward loss {name!r}", *NAMES, said, "register_reward_losses"):
        assert text in line, (text, line)


class Scripted:
    """A sampler whose ``sample`` returns ``make(prompts, n)``."""

    def __init__(self, make):
        self.make = make

    def sample(self, prompts, n, temperature, max_new_tokens, desc=None):
        return self.make(prompts, n)


SAMPLERS = {
    # n samples for the first prompt only
    "short": (lambda prompts, n: [[Sample("7", 1, True)] * n], "returned 1 lists of samples for 2 prompts"),
    "one_each": (lambda prompts, n: [[Sample("7", 1, True)] for _ in prompts], "returned 1 samples for prompt 0 (n=3)"),
    "texts": (lambda prompts, n: [["7"] * n for _ in prompts], "returned a str ('7') among the samples of prompt 0"),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_sampler_that_returns_the_wrong_number_or_kind_of_samples(env, install, name):
    from llama2rlhf.sampling import load_sampler

    cfg, _ = env
    make, said = SAMPLERS[name]
    install(registering("register_samplers", name, lambda model_path, cfg, **options: Scripted(make)))
    cfg.sampler.name = name
    sampler = load_sampler(cfg, "/policy")
    with pytest.raises(Exception) as err:
        sampler.sample([PROMPT, PROMPT], 3, 1.0, 4)
    line = str(err.value)
    for text in (f"sampler {name!r}", *NAMES, said, "from sample()", "a list of n llama2rlhf.sampling.Sample",
                 "register_samplers"):
        assert text in line, (text, line)


def test_a_samplers_prefix_cache_that_fails_is_named_and_the_blocks_own_error_is_not():
    """``keep_prefixes()`` is entered and left under the plugin's name; an error raised in
    the ``with`` block itself (the core's) passes through it as it is."""
    import contextlib

    from llama2rlhf import plugins

    class Caching(Scripted):
        @contextlib.contextmanager
        def keep_prefixes(self):
            if self.make is None:
                raise MemoryError("prefix store full")
            yield None

    item = plugins.Selected("samplers", "caching", None, PLUGIN, DIST, None)
    with pytest.raises(plugins.PluginError, match=rf"^sampler 'caching' of plugin '{PLUGIN}' \(distribution {DIST}\) "
                                                  "failed: MemoryError: prefix store full$"):
        with item.wrap(Caching(None), "sample", "keep_prefixes").keep_prefixes():
            pass
    with pytest.raises(ValueError, match="^the core's own$"):
        with item.wrap(Caching(lambda p, n: []), "sample", "keep_prefixes").keep_prefixes():
            raise ValueError("the core's own")


SELECTORS = {
    "indices": (lambda candidates, history: [0], "returned an int (0) at position 0"),
    "by_prompt": (lambda candidates, history: {c.prompt_id: c for c in candidates}, "returned a dict with keys p1"),
}


@pytest.mark.parametrize("name", list(SELECTORS))
def test_a_selector_that_returns_indices_or_a_mapping(env, install, name):
    from llama2rlhf.recipe.rejection_sampling import select

    cfg, _ = env
    fn, said = SELECTORS[name]
    install(registering("register_selectors", name, fn))
    cfg.selector.name = name
    with pytest.raises(Exception) as err:
        select(cfg, [Candidate("p1", PROMPT, "7", 1.0, 1)], [])
    line = str(err.value)
    for text in (f"selector {name!r}", *NAMES, said, "expected a list of the llama2rlhf.sampling.candidates.Candidate",
                 "register_selectors"):
        assert text in line, (text, line)


def test_an_augmenter_that_returns_texts_instead_of_rows(env, install):
    from llama2rlhf.recipe.rejection_sampling import augment

    cfg, ctx = env
    install(registering("register_augmenters", "texts", lambda rows, ctx: [r["messages"][-1]["content"] for r in rows]))
    cfg.augmenter.name = "texts"
    with pytest.raises(Exception) as err:
        augment(ctx, [{"messages": [*PROMPT, {"role": "assistant", "content": "7"}]}])
    line = str(err.value)
    for text in ("augmenter 'texts'", *NAMES, "returned a str ('7') as row 0", "TRL conversational rows",
                 "register_augmenters"):
        assert text in line, (text, line)


CHECKERS = {
    "wordy": (lambda cfg: (lambda instruction, reply: "yes"), "returned a str ('yes')",
              "True (the reply follows the instruction), False"),
    "no_check": (lambda cfg: True, "returned a bool (True)", "a check(instruction, reply) callable"),
}


@pytest.mark.parametrize("name", list(CHECKERS))
def test_a_checker_that_returns_no_verdict_or_no_check(env, install, name):
    from llama2rlhf.gatt.augmenter import load_checker

    cfg, _ = env
    make, said, expected = CHECKERS[name]
    install(registering("register_checkers", name, make))
    cfg.checker.name = name
    with pytest.raises(Exception) as err:
        load_checker(cfg)(Instruction("Answer in French.", "Language: French.", ("language:French",)), "Oui.")
    line = str(err.value)
    for text in (f"checker {name!r}", *NAMES, said, expected, "register_checkers"):
        assert text in line, (text, line)


class Annotator:
    def __init__(self, rows):
        self.rows = rows

    def annotate(self, pairs, workdir):
        return self.rows(pairs)


def _row(pair, **changes):
    return {"id": pair.id, "prompt": pair.prompt, "strength": "better", "chosen": [{"role": "assistant",
            "content": pair.a}], "rejected": [{"role": "assistant", "content": pair.b}], **changes}


ANNOTATORS = {
    # a label per pair, not a preference row
    "labels": (lambda pairs: ["a" for _ in pairs], "returned a str ('a') as row 0"),
    "one_short": (lambda pairs: [_row(p) for p in pairs[1:]], "returned 1 rows for 2 pairs"),
    "no_strength": (lambda pairs: [{k: v for k, v in _row(p).items() if k != "strength"} for p in pairs],
                    "returned a row without strength as row 0"),
    "renamed": (lambda pairs: [_row(p, id=f"x{i}") for i, p in enumerate(pairs)],
                "returned row 0 with id 'x0' for pair 'r1-0'"),
}


@pytest.mark.parametrize("name", list(ANNOTATORS))
def test_an_annotator_that_returns_the_wrong_structure(env, install, name):
    from llama2rlhf.recipe.collect import load_annotator

    cfg, ctx = env
    rows, said = ANNOTATORS[name]
    install(registering("register_annotators", name, lambda cfg, world: Annotator(rows)))
    cfg.annotator.name = name
    pairs = [PairToLabel("r1-0", PROMPT, "7", "8"), PairToLabel("r1-1", PROMPT, "6", "7")]
    with pytest.raises(Exception) as err:
        load_annotator(ctx).annotate(pairs, ctx.run_dir)
    line = str(err.value)
    for text in (f"annotator {name!r}", *NAMES, said, "from annotate()", "one preference row per pair",
                 "register_annotators"):
        assert text in line, (text, line)


COMBINERS = {
    # the batch's mean: one number for every reply
    "pooled": (lambda scores, is_safety: scores["helpfulness"].mean(),
               "returned a Tensor of shape () (torch.float32) for scores of shape (2,)"),
    "listed": (lambda scores, is_safety: scores["helpfulness"].tolist(), "returned a list of 2 items"),
}


@pytest.mark.parametrize("name", list(COMBINERS))
def test_a_reward_combiner_that_returns_the_wrong_shape_or_type(env, install, reward_model, name):
    from llama2rlhf.reward.combined import CombinedReward

    cfg, _ = env
    fn, said = COMBINERS[name]
    install(registering("register_reward_combiners", name, RewardCombiner(fn)))
    cfg.reward.name = name
    with pytest.raises(Exception) as err:
        CombinedReward(cfg, {"helpfulness": reward_model}).score([PROMPT, PROMPT], ["7", "8"], [False, False])
    line = str(err.value)
    for text in (f"reward combiner {name!r}", *NAMES, said, "expected a float tensor of the scores' shape",
                 "register_reward_combiners"):
        assert text in line, (text, line)


# --- options, checked before the run ---------------------------------------------------------


def validate(cli, tmp_path, *overrides: str):
    run = tmp_path / "run"
    result = cli("--validate", f"hydra.run.dir={run}", "logger=none", *overrides)
    assert not run.exists()
    return result


def test_an_option_a_builtin_selector_does_not_take(cli, tmp_path, fresh):
    assert_bad(validate(cli, tmp_path, "+selector.alpha=1"), "selector.alpha: not an option of selector "
               "'best_over_history' (plugin 'selectors', distribution llama2rlhf); its options: (none)")


def test_a_misspelt_option_of_a_plugin_without_a_node(cli, install, tmp_path):
    def above(candidates, history, *, threshold: float = 0.0):
        return [c for c in candidates if c.score > threshold]

    install(registering("register_selectors", "above", above))
    assert_bad(validate(cli, tmp_path, "selector=above", "+selector.treshold=0.5"),
               "selector.treshold: not an option of selector 'above'", *NAMES, "its options: threshold")


def test_an_option_a_plugin_needs_and_nobody_set(cli, install, tmp_path):
    def above(candidates, history, *, threshold: float):
        return [c for c in candidates if c.score > threshold]

    install(registering("register_selectors", "above", above))
    assert_bad(validate(cli, tmp_path, "selector=above"),
               "selector.threshold: selector 'above'", *NAMES, "needs this option", "+selector.threshold=<value>")


def test_a_callable_that_cannot_take_its_kinds_inputs(cli, install, tmp_path):
    install(registering("register_augmenters", "rows_only", lambda rows: rows))  # no ctx
    assert_bad(validate(cli, tmp_path, "augmenter=rows_only"), "augmenter 'rows_only'", *NAMES,
               "cannot be called as augment(rows, ctx, **options)", "too many positional arguments")


@dataclasses.dataclass
class WideHingeConfig(RewardLossConfig):
    name: str = "wide_hinge"
    width: float = 1.0
    offset: float = 0.0

    def __post_init__(self):
        if self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")


def _hinge(r_chosen, r_rejected, margin, *, width: float = 1.0, offset: float = 0.0):
    return torch.relu(width + offset - (r_chosen - r_rejected)).mean()


def test_a_value_the_plugins_node_refuses(cli, install, tmp_path):
    install(plugin_module(
        register_reward_losses=lambda register: register("wide_hinge", RewardLoss(_hinge)),
        register_configs=lambda config_store: config_store.store(group="reward_loss", name="wide_hinge",
                                                                 node=WideHingeConfig)))
    # offset is fine; width alone is refused
    assert_bad(validate(cli, tmp_path, "reward_loss=wide_hinge", "reward_loss.width=-1", "reward_loss.offset=2"),
               "reward_loss.width=-1.0: refused by reward loss 'wide_hinge'", *NAMES,
               "ValueError: width must be > 0, got -1.0")


def test_a_real_run_with_a_bad_option_stops_before_sft(cli, tmp_path, fresh):
    run = tmp_path / "run"
    assert_bad(cli(f"hydra.run.dir={run}", *TINY, "pipeline.rounds=1", "+selector.alpha=1"),
               "selector.alpha: not an option of selector 'best_over_history'")
    assert not (run / "sft").exists()


def test_options_of_a_kind_no_planned_stage_uses_are_not_checked(cli, tmp_path, fresh):
    """SFT alone selects no selector: a selector option cannot stop it."""
    result = validate(cli, tmp_path, "pipeline.stages=[sft]", "pipeline.rounds=0", "+selector.alpha=1")
    assert result.code == 0, result.err


def test_an_unknown_stage_name(cli, tmp_path, fresh):
    assert_bad(validate(cli, tmp_path, "pipeline.round_stages=[collect,reward,rejection_sampling,evalute]"),
               "pipeline.round_stages=", "no stage is registered as 'evalute' (did you mean 'evaluate'?)")


def test_the_api_gives_the_same_lines_without_validation(fresh):
    """Code that skips ``validate`` (a plugin calling another through the resolver, a
    notebook) meets the same errors when the thing is selected or called."""
    cfg = OmegaConf.structured(Config)
    with pytest.raises(fresh.PluginError, match=r"^selector.alpha: not an option of selector 'best_of_k' "):
        fresh.named("selectors", "best_of_k", {"alpha": 1}).call([], [])
    fresh.register(plugin_module(
        register_reward_losses=lambda register: register("wide_hinge", RewardLoss(_hinge))), PLUGIN, distribution=DIST)
    cfg.reward_loss = OmegaConf.structured(WideHingeConfig)
    cfg.reward_loss.width = 0
    with pytest.raises(fresh.PluginError, match=r"^reward_loss.width=0.0: refused by reward loss 'wide_hinge' "):
        fresh.selected("reward_losses", cfg)


# --- plugins that do not load ----------------------------------------------------------------


@pytest.mark.parametrize("source,said", [
    ('raise ImportError("needs vllm, which is not installed")\n',
     "failed to import: ImportError: needs vllm, which is not installed"),
    # a misspelt hook name: pluggy refuses the module
    ("from llama2rlhf import hookimpl\n\n@hookimpl\ndef register_selector(register):\n    pass\n",
     "is not a valid llama2rlhf plugin: unknown hook 'register_selector'"),
])
def test_a_plugin_that_does_not_load(cli, fresh, tmp_path, monkeypatch, source, said):
    module = "llama2rlhf_test_unloadable_plugin"
    (tmp_path / f"{module}.py").write_text(source)
    dist_info = tmp_path / "fake_unloadable-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-unloadable\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [llama2rlhf]
        unloadable = {module}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert_bad(validate(cli, tmp_path), "plugin 'unloadable'", "distribution fake-unloadable",
                   f"entry point '{module}'", said)
    finally:
        sys.modules.pop(module, None)
