"""The keys and values of the prompts a sampler prefilled, kept for the same dialogues one turn on.

Ghost Attention (paper 3.3) samples its dialogues turn by turn, and its evaluation runs 20
turns: each turn's prompt is the whole dialogue so far, so prefilling it again at every
turn costs the square of the dialogue's length. Inside ``HFSampler.keep_prefixes()`` the
``hf`` sampler stores what it prefilled for each prompt here, and a later prompt that begins
with exactly those tokens (the next turn of that dialogue, or the same prompt drawn again)
runs only the tokens after them. Token ids, not text, decide: a chat template that renders
an earlier turn differently once a later one follows simply finds no prefix.

An entry lives while it is used: the store keeps what the latest two ``sample`` calls stored
or read (a dialogue's next turn, with a second draw for some prompts in between), and
stores nothing past its byte budget, so a large model falls back to prefilling, no worse
than without the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass
class Prefix:
    keys: list[Any]  # per layer, (kv heads, tokens, head dim)
    values: list[Any]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class PrefixStore:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._entries: dict[tuple[int, ...], Prefix] = {}
        self._lengths: dict[int, int] = {}  # token count -> entries of that length
        self._used: set[tuple[int, ...]] = set()  # stored or read in the current call
        self._used_before: set[tuple[int, ...]] = set()  # ... in the call before
        self.nbytes = 0
        self.hits = self.hit_tokens = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, ids: Sequence[int]) -> tuple[int, Prefix | None]:
        """The longest stored prefix of ``ids`` (its length and entry), or (0, None)."""
        for n in sorted((n for n in self._lengths if n <= len(ids)), reverse=True):
            key = tuple(ids[:n])
            entry = self._entries.get(key)
            if entry is not None:
                self._used.add(key)
                self.hits += 1
                self.hit_tokens += n
                return n, entry
        self.misses += 1
        return 0, None

    def put(self, ids: Sequence[int], entry: Prefix) -> bool:
        """Store ``entry`` as the keys and values of ``ids``; False when over the budget."""
        key = tuple(ids)
        if key in self._entries:
            self._used.add(key)
            return True
        if self.nbytes + entry.nbytes > self.budget_bytes:
            return False
        self._entries[key] = entry
        self._lengths[len(key)] = self._lengths.get(len(key), 0) + 1
        self.nbytes += entry.nbytes
        self._used.add(key)
        return True

    def end_call(self) -> None:
        """Drop what neither this ``sample`` call nor the one before stored or read."""
        keep = self._used | self._used_before
        for key in [k for k in self._entries if k not in keep]:
            self.nbytes -= self._entries.pop(key).nbytes
            self._lengths[len(key)] -= 1
            if not self._lengths[len(key)]:
                del self._lengths[len(key)]
        self._used_before, self._used = self._used, set()
