"""Scored candidate completions: what rejection sampling hands to a selector."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Candidate:
    """One sampled completion of one prompt, scored by the newest reward model.

    ``round`` is the RLHF round that sampled it; a candidate kept in an earlier round and
    re-scored by this round's reward model keeps its original round.
    """

    prompt_id: str
    prompt: Messages
    completion: str
    score: float
    round: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def rescored(self, score: float) -> "Candidate":
        return Candidate(self.prompt_id, self.prompt, self.completion, score, self.round, self.meta)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "prompt": self.prompt, "completion": self.completion,
                "score": self.score, "round": self.round, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        return cls(d["prompt_id"], d["prompt"], d["completion"], float(d["score"]), int(d["round"]),
                   d.get("meta") or {})
