"""Shared fixtures: a toy world, its tokenizer and tiny models, built once per session."""

from __future__ import annotations

import pytest


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
