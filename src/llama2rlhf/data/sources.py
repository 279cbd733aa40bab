"""Where a loader's rows come from: a JSON Lines file, a data set saved on disk, or the Hub.

``data.sft_path``, ``data.preference_path``, ``data.prompt_path`` and
``data.preference_eval_path`` each name one of:

* a JSON Lines file (``.jsonl``): read line by line, errors say ``file:line``;
* a JSON file holding one array of objects (``.json``, as LLaMA-Factory's data sets are):
  errors say the line where the bad object starts;
* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* anything ``datasets.load_dataset`` takes: a folder of data files, or a Hub data set name
  such as ``Anthropic/hh-rlhf`` (with ``data.subset`` / ``data.data_dir`` where the data
  set has them). Hub data sets are read from the local cache when offline.

Rows of a data set are numbered from 1 like lines, so a bad row's error reads
``Anthropic/hh-rlhf[train]:1207: field 'chosen': ...``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from llama2rlhf.data.errors import DataError
from llama2rlhf.data.jsonl import PathLike, is_json_array, read_json_array, read_jsonl

Rows = Iterator[tuple[int, dict[str, Any]]]


def _split_of(loaded: Any, label: str, split: str) -> Any:
    from datasets import DatasetDict

    if not isinstance(loaded, DatasetDict):
        return loaded
    if split not in loaded:
        raise DataError(label, None, None, f"has no split {split!r}; it has {', '.join(sorted(loaded))} (set data.split)")
    return loaded[split]


def _dataset_rows(dataset: Any) -> Rows:
    for number, row in enumerate(dataset, start=1):
        yield number, dict(row)


def open_rows(location: PathLike, *, split: str = "train", subset: Optional[str] = None,
              data_dir: Optional[str] = None) -> tuple[str, Rows]:
    """``(label for errors, (row number, row) pairs)`` of ``location`` (see the module doc).

    ``split``, ``subset`` and ``data_dir`` apply to data sets only; a JSONL file is one split.
    """
    text = os.fspath(location)
    path = Path(text)
    if path.is_file():
        return text, (read_json_array(text) if is_json_array(text) else read_jsonl(text))
    label = f"{text}[{split}]"
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        from datasets import load_from_disk

        return label, _dataset_rows(_split_of(load_from_disk(text), label, split))
    if not path.exists() and (text.endswith((".jsonl", ".json")) or path.is_absolute() or text.startswith(".")):
        raise DataError(text, None, None, "no such file or folder")
    from datasets import load_dataset

    try:
        loaded = load_dataset(text, name=subset, data_dir=data_dir, split=split)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        # datasets' own message says whether the name, the subset, the split or the network failed
        raise DataError(label, None, None, f"cannot load it with datasets.load_dataset: {err}") from err
    return label, _dataset_rows(loaded)


def where(data_cfg: Any, *, evaluation: bool = False) -> dict[str, Any]:
    """``open_rows`` keywords from the ``data`` config: the held-out preference pairs come
    from ``data.eval_split`` (e.g. hh-rlhf's ``test``), everything else from ``data.split``."""
    split = data_cfg.eval_split if evaluation and data_cfg.eval_split else data_cfg.split
    return {"split": split, "subset": data_cfg.subset, "data_dir": data_cfg.data_dir}
