"""Fixtures for the example plugin's tests: a plugin manager built fresh, a toy tokenizer,
and a run context on a temporary run directory."""

from __future__ import annotations

import pytest


@pytest.fixture
def fresh_plugins(monkeypatch):
    """A plugin manager built from scratch with entry points autoloaded (so this plugin too)."""
    from llama2rlhf import plugins

    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(plugins.TRACE_ENV, raising=False)
    plugins.reset()
    yield plugins
    plugins.reset()


@pytest.fixture(scope="session")
def toy_tokenizer_dir(tmp_path_factory):
    """The toy world's tokenizer, saved as a run saves it (the ``tokenizer`` artifact)."""
    from llama2rlhf.toyworld import ToyWorld
    from llama2rlhf.toyworld.tokenizer import build_tokenizer

    path = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(ToyWorld(), vocab_size=400, n_prompts=300).save_pretrained(path)
    return path


@pytest.fixture
def make_ctx(tmp_path):
    """``make_ctx(round, stage, **cfg)``: a real RunContext on ``tmp_path / "run"``."""
    from omegaconf import OmegaConf

    from llama2rlhf.runtime.run import RunContext

    def make(round: int = 1, stage: str = "rejection_sampling", **cfg):
        ctx = RunContext.open(OmegaConf.create({"seed": 0, "model": {"trust_remote_code": False},
                                                 "logger": {"name": "none"}, **cfg}),
                              tmp_path / "run")
        ctx.round, ctx.current_stage = round, stage
        return ctx

    return make
