"""The keys and values of the prompts a sampler prefilled, kept for the same dialogues one turn on.

Ghost Attention (paper 3.3) samples its dialogues turn by turn, and its evaluation runs 20
turns: each turn's prompt is the whole dialogue so far, so prefilling it again at every
turn costs the square of the dialogue's length. Inside ``HFSampler.keep_prefixes()`` the
``hf`` sampler stores what it prefilled for each prompt here, and a later prompt that begins
with exactly those tokens (the next turn of that dialogue, or the same prompt drawn again)
runs only the tokens after them. Token ids, not text, decide: a chat template that renders
an earlier turn differently once a later one follows simply finds no prefix.

An entry lives while it is used: the store keeps what the latest two ``sample`` calls stored
or read (a dialogue's next turn, with a second draw for some prompts in between). Entries
share their batch's keys and values, which go when the last of them does, and nothing is
stored past the byte budget, so a large model falls back to prefilling, no worse than
without the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass
class Batch:
    """The prefilled keys and values of one ``generate`` batch, per layer ``(rows, kv heads,
    tokens, head dim)``, padding slots included, shared by the entries of its rows."""

    keys: list[Any]
    values: list[Any]
    entries: int = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass
class Prefix:
    """One prompt's keys and values: ``spans`` of row ``row`` of ``batch``, in order."""

    batch: Batch
    row: int
    spans: tuple[tuple[int, int], ...]

    @property
    def length(self) -> int:
        return sum(b - a for a, b in self.spans)


def gather(prefixes: Sequence[tuple[int, Prefix | None]], width: int) -> tuple[list[Any], list[Any]] | None:
    """Per layer, the keys and values of ``prefixes`` (length, entry or None) as one batch
    ``(rows, kv heads, width, head dim)``, each right-aligned after zeros: one ``cat`` a
    layer, not a copy a row (a GPU runs thousands of small copies far slower than the
    prefill they save). None when no row has a prefix."""
    import torch

    like = next((e for _, e in prefixes if e is not None), None)
    if like is None:
        return None
    out: tuple[list[Any], list[Any]] = ([], [])
    for part, dest in (("keys", out[0]), ("values", out[1])):
        for layer in range(len(getattr(like.batch, part))):
            t = getattr(like.batch, part)[layer]
            zeros = t.new_zeros((t.shape[1], width, t.shape[3]))
            pieces = []
            for n, e in prefixes:
                if width > n:
                    pieces.append(zeros[:, : width - n])
                if e is not None:
                    src = getattr(e.batch, part)[layer][e.row]
                    pieces += [src[:, a:b] for a, b in e.spans]
            dest.append(torch.cat(pieces, dim=1).unflatten(1, (len(prefixes), width)).transpose(0, 1))
    return out


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

    def __contains__(self, ids: Sequence[int]) -> bool:
        return tuple(ids) in self._entries

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

    def put(self, batch: Batch, rows: Sequence[tuple[Sequence[int], int, tuple[tuple[int, int], ...]]]) -> bool:
        """Store, for each (ids, row, spans) of ``rows``, that row of ``batch`` as the keys
        and values of ``ids``; nothing, and False, when ``batch`` would pass the budget."""
        new = [(tuple(ids), row, spans) for ids, row, spans in rows if tuple(ids) not in self._entries]
        self._used.update(tuple(ids) for ids, _, _ in rows)
        if not new:
            return True
        if self.nbytes + batch.nbytes > self.budget_bytes:
            return False
        self.nbytes += batch.nbytes
        for key, row, spans in new:
            self._entries[key] = Prefix(batch, row, spans)
            self._lengths[len(key)] = self._lengths.get(len(key), 0) + 1
            batch.entries += 1
        return True

    def end_call(self) -> None:
        """Drop what neither this ``sample`` call nor the one before stored or read."""
        keep = self._used | self._used_before
        for key in [k for k in self._entries if k not in keep]:
            entry = self._entries.pop(key)
            entry.batch.entries -= 1
            if not entry.batch.entries:  # its batch's last entry: the memory goes
                self.nbytes -= entry.batch.nbytes
            self._lengths[len(key)] -= 1
            if not self._lengths[len(key)]:
                del self._lengths[len(key)]
        self._used_before, self._used = self._used, set()
