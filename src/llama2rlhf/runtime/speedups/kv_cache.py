"""Whether a model's KV cache can serve the K replies of one prompt, and under which name.

Rejection sampling (paper 3.2.3) samples K replies per prompt and scores each with the
reward model; the ``hf`` sampler and the reward scorer both run a prompt once and reuse its
keys and values for all K. That needs a decoder whose every layer keeps the full context
(a sliding window drops cached tokens that left padding shifted) and whose forward takes
explicit position ids, so left-padded prefixes and their continuations line up.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping


def forward_params(model: Any) -> Mapping[str, inspect.Parameter]:
    """The parameters of the model's forward (through a PEFT wrapper, which passes kwargs on)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return {}


def cache_kwarg(model: Any) -> str | None:
    """The name ``forward`` and ``generate`` take the cache under, or None where it cannot be shared.

    transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name is deprecated), so
    the name is read from the forward signature.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None:
        return None
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(config, "is_encoder_decoder", False) or getattr(text, "is_encoder_decoder", False):
        return None
    # any non-full layer (sliding, linear, chunked) has cache semantics these paths were not checked against
    if not full_attention_only(config):
        return None
    supports = getattr(base, "_supports_default_dynamic_cache", None)
    if supports is not None and not supports():
        return None
    params = forward_params(base)
    if "position_ids" not in params:
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def full_attention_only(config: Any) -> bool:
    """Whether every attention layer of the model sees its whole context: no sliding window,
    no linear, chunked or other layer types."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False
    return all(t == "full_attention" for t in (getattr(text, "layer_types", None) or []))


def reserved_cache(reserve: int):
    """A ``DynamicCache`` whose layers keep ``reserve`` free token slots after their keys
    and values, so decoding writes each new token in place instead of concatenating.

    transformers' ``DynamicLayer`` grows by ``torch.cat`` at every step, copying the whole
    cache: for GAtt's dialogues (up to a thousand tokens of context, paper 3.3) and K
    samples per prompt that copy was a third of sampling time on the CPU. ``StaticCache``
    preallocates, but for one fixed batch and without ``batch_repeat_interleave``, which
    the shared prefill needs (``llama2rlhf.sampling.hf``). Here a layer's keys and
    values stay a view of the front of a buffer; the buffer is reallocated, with
    ``reserve`` slots to spare, only when a write does not fit or another operation
    (repeat, select, reorder) replaced the tensors. The values are those of
    ``DynamicLayer``; only the copies are fewer.
    """
    from transformers.cache_utils import DynamicCache, DynamicLayer

    class ReservedLayer(DynamicLayer):
        def __init__(self):
            super().__init__()
            self._buffers = None

        def _owns_keys(self) -> bool:
            if self._buffers is None or self.keys is None or self.keys.numel() == 0:
                return False
            kb = self._buffers[0]
            return (self.keys.data_ptr() == kb.data_ptr() and self.keys.shape[:2] == kb.shape[:2]
                    and self.keys.stride() == kb.stride())

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = self.get_seq_length()
            end = n + key_states.shape[-2]
            if not self._owns_keys() or end > self._buffers[0].shape[-2]:
                buffers = []
                for old, new in ((self.keys, key_states), (self.values, value_states)):
                    b, h, _, d = new.shape
                    buf = new.new_empty((b, h, end + reserve, d))
                    if n:
                        buf[..., :n, :] = old
                    buffers.append(buf)
                self._buffers = tuple(buffers)
            kb, vb = self._buffers
            kb[..., n:end, :] = key_states
            vb[..., n:end, :] = value_states
            self.keys, self.values = kb[..., :end, :], vb[..., :end, :]
            return self.keys, self.values

    cache = DynamicCache()
    cache.layer_class_to_replicate = ReservedLayer
    return cache
