"""Built-in annotators: the toy world's simulated rater, and a file exchange for people.

Both return comparisons in TRL's explicit-prompt preference format plus the four-point
``strength`` label of Llama 2's annotation protocol (paper 3.2.1).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from .. import hookimpl
from ..annotation import AwaitingLabels, PairToLabel
from ..data.errors import DataError
from ..data.jsonl import read_jsonl, write_jsonl
from ..data.strength import STRENGTHS


class ToyAnnotator:
    """The toy world's simulated annotator: gold difference seen through rater noise."""

    def __init__(self, world: Any, seed: int = 0):
        if world is None:
            raise ValueError("annotator=toy labels with the toy world's oracle: it needs data.source=toy; "
                             "use annotator=file for real data")
        self.world = world
        self.seed = seed

    def annotate(self, pairs: Sequence[PairToLabel], workdir: Path) -> list[dict]:
        from ..toyworld.tasks import Prompt

        rows = []
        for pair in pairs:
            # one generator per pair: the label of a pair does not depend on what else is
            # labelled with it, so a resumed round relabels identically
            rng = random.Random(f"{self.seed}:annotate:{pair.id}")
            row = self.world.compare(Prompt.from_dict(pair.meta["toy_prompt"]), pair.a, pair.b, rng)
            rows.append({"id": pair.id, **row})
        return rows


class FileExchangeAnnotator:
    """Human labelling through files: write the pairs, stop, read the labels next run."""

    TO_LABEL = "to_label.jsonl"
    LABELLED = "labelled.jsonl"

    def annotate(self, pairs: Sequence[PairToLabel], workdir: Path) -> list[dict]:
        to_label, labelled = workdir / self.TO_LABEL, workdir / self.LABELLED
        if not labelled.exists():
            if not to_label.exists():
                write_jsonl(to_label, [{"id": p.id, "prompt": p.prompt, "response_a": p.a, "response_b": p.b}
                                       for p in pairs])
            raise AwaitingLabels(to_label, labelled, len(pairs))
        return self.read_labels(pairs, labelled)

    @staticmethod
    def read_labels(pairs: Sequence[PairToLabel], labelled: Path) -> list[dict]:
        by_id = {p.id: p for p in pairs}
        seen: dict[str, dict] = {}
        file = str(labelled)
        for line, row in read_jsonl(labelled):
            pid = row.get("id")
            if not isinstance(pid, str) or pid not in by_id:
                raise DataError(file, line, "id", f"{pid!r} is not the id of a pair in {FileExchangeAnnotator.TO_LABEL}")
            if pid in seen:
                raise DataError(file, line, "id", f"{pid!r} is labelled twice")
            preferred = row.get("preferred")
            if preferred not in ("a", "b"):
                raise DataError(file, line, "preferred", f"must be \"a\" or \"b\", got {preferred!r}")
            strength = row.get("strength")
            if strength not in STRENGTHS:
                raise DataError(file, line, "strength", f"{strength!r} is not one of {', '.join(STRENGTHS)}")
            pair = by_id[pid]
            chosen, rejected = (pair.a, pair.b) if preferred == "a" else (pair.b, pair.a)
            seen[pid] = {"id": pid, "prompt": pair.prompt, "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}], "strength": strength}
        missing = [p.id for p in pairs if p.id not in seen]
        if missing:
            raise DataError(file, None, "id", f"{len(missing)} of {len(pairs)} pairs have no label yet "
                                              f"(first: {missing[0]!r})")
        return [seen[p.id] for p in pairs]


def make_toy_annotator(cfg: Any, world: Any) -> ToyAnnotator:
    return ToyAnnotator(world, seed=cfg.seed if cfg is not None else 0)


def make_file_annotator(cfg: Any, world: Any) -> FileExchangeAnnotator:
    return FileExchangeAnnotator()


@hookimpl(trylast=True)
def register_annotators(register):
    register("toy", make_toy_annotator)
    register("file", make_file_annotator)
