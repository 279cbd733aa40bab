"""The vLLM plugin's hooks: the ``vllm`` sampler and its typed config node (``sampler=vllm``)."""

from __future__ import annotations

from llama2rlhf import hookimpl

from .sampler import NAME, VLLMSamplerConfig, make_vllm_sampler


@hookimpl
def register_samplers(register):
    register(NAME, make_vllm_sampler)


@hookimpl
def register_configs(config_store):
    config_store.store(group="sampler", name=NAME, node=VLLMSamplerConfig)
