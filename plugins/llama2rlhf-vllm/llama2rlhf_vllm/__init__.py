"""llama2rlhf-vllm: ``sampler=vllm``, llama2rlhf's sampler on vLLM's offline engine.

The core loads :mod:`llama2rlhf_vllm.plugin` through the ``llama2rlhf`` entry point; the
sampler is in :mod:`llama2rlhf_vllm.sampler`. vLLM is imported only when a run samples.
"""

__version__ = "0.1.0"
