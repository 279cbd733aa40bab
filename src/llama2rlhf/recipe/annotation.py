"""Pairs to label and the signal that labels are still being collected (paper 3.2.1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class PairToLabel:
    """Two responses to one prompt, sampled from the newest policy, waiting for a label.

    ``id`` is stable across re-runs (round, prompt and sample index), so a label collected
    after a restart lands on the same pair. ``meta`` carries what the prompt came with
    (for the toy world: the task, its answer, its constraints).
    """

    id: str
    prompt: Messages
    a: str
    b: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


class AwaitingLabels(Exception):
    """Raised by an annotator whose labels are not there yet; the run stops cleanly and
    continues from the same round when it is started again with the same run directory."""

    def __init__(self, to_label: Path, labelled: Path, n_pairs: int):
        self.to_label = to_label
        self.labelled = labelled
        self.n_pairs = n_pairs
        super().__init__(
            f"{n_pairs} pairs to label are in {to_label}. Write one JSON line per pair to {labelled} "
            f'({{"id": ..., "preferred": "a" or "b", "strength": "significantly_better" | "better" | '
            f'"slightly_better" | "negligibly_better"}}) and run the same command again to continue.'
        )

    def __reduce__(self):
        # rebuilt from its fields: under accelerate launch every process stops with it
        return type(self), (self.to_label, self.labelled, self.n_pairs)
