"""llama2rlhf: the Llama 2 chat RLHF recipe as a plugin framework on Hugging Face TRL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("llama2rlhf")


@dataclass(frozen=True)
class RewardLoss:
    """A pairwise reward loss plus the strength -> margin table it reads (paper Table 27).

    ``fn(r_chosen, r_rejected, margin, **options)`` returns a scalar loss; ``margin`` is
    ``None`` when neither the data nor ``margins`` give one.
    """

    fn: Callable[..., Any]
    margins: Mapping[str, float] | None = field(default=None)

    def __call__(self, r_chosen, r_rejected, margin=None, **options):
        return self.fn(r_chosen, r_rejected, margin, **options)


__all__ = ["RewardLoss", "hookimpl", "__version__"]
