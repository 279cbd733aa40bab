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
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return None
    if any(t != "full_attention" for t in (getattr(text, "layer_types", None) or [])):
        return None
    supports = getattr(base, "_supports_default_dynamic_cache", None)
    if supports is not None and not supports():
        return None
    params = forward_params(base)
    if "position_ids" not in params:
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)
