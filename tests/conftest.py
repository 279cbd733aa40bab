"""Shared fixtures: a toy world, its tokenizer and tiny models, built once per session."""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

# the tiniest run that keeps every kind of stage, for tests that run the pipeline
TINY = [
    "data.n_sft=160", "data.n_pairs=160", "data.n_eval_pairs=40", "data.n_eval_prompts=16",
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2",
    "model.vocab_size=400", "sft.num_train_epochs=1", "reward_model.num_train_epochs=1",
    "eval.max_new_tokens=12",
    # rounds (and the round-0 collect) at tiny size
    "collect.n_prompts=24", "collect.max_new_tokens=10", "rs.n_prompts=16", "rs.k=3", "rs.search_prompts=6",
    "rs.temperatures=[0.8,1.3]", "rs.train.num_train_epochs=1", "rs.max_new_tokens=10",
    # PPO: two iterations of 8 rollouts, a checkpoint after each
    "ppo.n_prompts=16", "ppo.per_device_train_batch_size=8", "ppo.gradient_accumulation_steps=1",
    "ppo.num_mini_batches=1", "ppo.max_new_tokens=10", "ppo.checkpoint_steps=1",
    # Ghost Attention: four dialogues of up to three turns,
    # unfiltered (a tiny model breaks every instruction), evaluated over three turns
    "gatt.n_dialogues=4", "gatt.max_turns=3", "gatt.max_new_tokens=10", "gatt.filter=false",
    "gatt.eval_dialogues=4", "gatt.eval_turns=3",
    # W&B is the default logger; the tests about it keep it, the others skip its start-up
    "logger=none",
]


@pytest.fixture(scope="session")
def world():
    from llama2rlhf.toyworld import ToyWorld

    return ToyWorld()


@pytest.fixture(scope="session")
def tokenizer(world):
    from llama2rlhf.toyworld.tokenizer import build_tokenizer

    return build_tokenizer(world, vocab_size=512, n_prompts=600)


@pytest.fixture()
def tiny_llama(tokenizer):
    from llama2rlhf.toyworld.model import build_tiny_llama

    return build_tiny_llama(tokenizer, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)


@pytest.fixture(scope="session")
def reward_model(tmp_path_factory, tokenizer):
    """A tiny saved reward model, for the combiner's code path (``CombinedReward``)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rm")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def fresh(monkeypatch):
    """A plugin manager rebuilt from scratch for this test, and forgotten after it."""
    from llama2rlhf import plugins

    for var in (plugins.DISABLE_AUTOLOAD_ENV, plugins.TRACE_ENV):
        monkeypatch.delenv(var, raising=False)
    plugins.reset()
    yield plugins
    plugins.reset()


@pytest.fixture
def register_one(fresh):
    """``register_one(hook, name, thing, plugin=...)``: a plugin whose ``hook`` registers
    ``thing`` as ``name``, added to the fresh plugin manager."""
    from llama2rlhf import hookimpl

    def add(hook: str, name: str, thing, plugin: str = "custom_plugin") -> None:
        impl = hookimpl(lambda self, register: register(name, thing))
        impl.__name__ = hook
        fresh.get_plugin_manager().register(type("Plugin", (), {hook: impl})(), name=plugin)

    return add


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): to show a failed command left a
    run directory as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class CliResult:
    code: int
    err: str
    out: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def assert_bad(result: CliResult, *named: str, alone: bool = True) -> str:
    """``result`` is bad input reported as promised: exit code 2, one line on stderr that
    starts ``llama2rlhf: `` and contains every text in ``named``, no traceback. ``alone``:
    that line is all of stderr (bad input found before the run starts); otherwise the run's
    own log lines may come before it. Returns the line."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err
    ours = [line for line in result.lines if line.startswith("llama2rlhf: ")]
    assert len(ours) == 1, result.err
    if alone:
        assert result.lines == ours, result.err
    line = ours[0]
    for text in named:
        assert text in line, (text, line)
    return line


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):
    """``cli(*args)``: ``llama2rlhf *args`` run in this process (as the console script runs
    it, Hydra included) from ``tmp_path``; returns its exit code, stderr and stdout."""
    from hydra.core.global_hydra import GlobalHydra

    from llama2rlhf.__main__ import main
    from llama2rlhf.recipe import validate

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLAMA2RLHF_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(validate, "VALIDATE_ONLY", False)

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["llama2rlhf", *args])
        GlobalHydra.instance().clear()
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # as the interpreter ends on an uncaught exception
            traceback.print_exc()
            code = 1
        finally:
            GlobalHydra.instance().clear()
            validate.VALIDATE_ONLY = False
        captured = capsys.readouterr()
        return CliResult(code, captured.err, captured.out)

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished tiny run (SFT, comparisons and the reward models, ``pipeline.rounds=0``),
    made once per session, for the commands that read a run directory (chat, generate,
    export); they only read it."""
    import subprocess

    tmp = tmp_path_factory.mktemp("tiny_run")
    cli = str(Path(sys.executable).with_name("llama2rlhf"))
    proc = subprocess.run([cli, f"hydra.run.dir={tmp / 'run'}", *TINY, "pipeline.rounds=0"], cwd=tmp,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"
