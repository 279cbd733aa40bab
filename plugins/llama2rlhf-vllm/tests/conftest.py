"""Fixtures for the vLLM plugin's tests.

The plugin is optional and not installed by default (``make setup`` installs only the
example plugin), so when it is not importable its folder goes on ``sys.path``: its
pure-Python tests then run in the repository's suite too. Its entry point is not
installed that way, so tests that need it in the registry register the module by hand
(as its distribution would).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("llama2rlhf_vllm") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture
def vllm_plugins(monkeypatch):
    """A fresh plugin manager with this plugin registered (installed or not)."""
    from llama2rlhf import plugins
    from llama2rlhf_vllm import plugin

    monkeypatch.delenv(plugins.TRACE_ENV, raising=False)
    plugins.reset()
    if plugins.get_plugin_manager().get_plugin("vllm") is None:
        plugins.register(plugin, "vllm", distribution="llama2rlhf-vllm")
    yield plugins
    plugins.reset()


@pytest.fixture(scope="session")
def toy_tokenizer():
    from llama2rlhf.toyworld import ToyWorld
    from llama2rlhf.toyworld.tokenizer import build_tokenizer

    return build_tokenizer(ToyWorld(), vocab_size=400, n_prompts=300)
