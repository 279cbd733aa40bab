"""The models a run starts from, checked before any stage trains, without loading a weight.

:func:`model_problems` checks every model the config names (:func:`models_read`): a local
folder has ``config.json``, weights whose headers read (a truncated ``*.safetensors`` fails
there), every shard its index names, and a tokenizer; a GGUF checkpoint is where
``model.gguf_file`` says; anything else must be a Hub id that is in the local Hugging Face
cache or, online, on the Hub. :func:`source_problem` is the same check for one model, which
the loaders in :mod:`llama2rlhf.runtime.models` run too (local checks only).
"""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterable, Optional

from llama2rlhf.data.errors import ConfigError, InputError, one_line

# the files from_pretrained reads weights from, in its order of preference
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# the files a tokenizer is saved as, in the forms AutoTokenizer reads (a sentencepiece model
# may have any name ending in .model); a tokenizer that needs no vocabulary has its config
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tekken.json")
HUB_TIMEOUT_S = 10.0
EXAMPLE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_KEY = "model.gguf_file"


def config_value(cfg: Any, key: str) -> Optional[str]:
    """``cfg``'s value at the dotted ``key`` as a string; None when unset, null or ``???``."""
    from omegaconf import OmegaConf

    node = cfg
    *parents, leaf = key.split(".")
    for part in parents:
        node = getattr(node, part, None)
        if node is None:
            return None
    if OmegaConf.is_config(node) and leaf in node and OmegaConf.is_missing(node, leaf):
        return None
    value = getattr(node, leaf, None)
    return None if value is None or str(value) == "" else str(value)


def models_read(cfg: Any, stages: Iterable[str]) -> list[tuple[str, Optional[str]]]:
    """(key, value) of every model the run starts from and reads: the policy (``model.kind=hf``),
    the reward models the config names itself, and the judges of ``annotator=reward_model`` when
    a collect stage runs (``run:<artifact>`` values are the run's own checkpoints, not read here).
    A value is None when the key is required and not set."""
    out: list[tuple[str, Optional[str]]] = []
    if config_value(cfg, "model.kind") == "hf":
        out.append(("model.name_or_path", config_value(cfg, "model.name_or_path")))
    for key in ("reward_model.name_or_path", "reward_model.safety_name_or_path"):
        if config_value(cfg, key):
            out.append((key, config_value(cfg, key)))
    if config_value(cfg, "annotator.name") == "reward_model" and "collect" in stages:
        for key in ("annotator.name_or_path", "annotator.safety_name_or_path"):
            value = config_value(cfg, key)
            if value and not value.startswith("run:"):
                out.append((key, value))
    return out


def key_of(path: str, cfg: Any) -> Optional[str]:
    """The config key that names ``path`` as a model (see :func:`models_read`), if one does:
    the loaders name it in their errors."""
    if cfg is None:
        return None
    for key in ("model.name_or_path", "reward_model.name_or_path", "reward_model.safety_name_or_path",
                "annotator.name_or_path", "annotator.safety_name_or_path"):
        try:
            if config_value(cfg, key) == str(path):
                return key
        except (AttributeError, KeyError, TypeError):  # a partial config (a test's namespace)
            continue
    return None


def model_problems(cfg: Any, run_dir: Path, stages: list[str]) -> list[InputError]:
    """Every model the run reads (:func:`models_read`), checked by :func:`source_problem`:
    the policy with its tokenizer (or its GGUF file), reward models and judges with theirs."""
    problems: list[InputError] = []
    gguf_file = config_value(cfg, GGUF_KEY) if config_value(cfg, "model.kind") == "hf" else None
    for key, value in models_read(cfg, stages):
        if value is None:
            problems.append(ConfigError(key, f"model.kind=hf needs it: a local folder or a Hub id such as "
                                             f"{EXAMPLE_ID}"))
            continue
        problem = source_problem(key, value, gguf_file=gguf_file if key == "model.name_or_path" else None)
        if problem is not None:
            problems.append(problem)
    return problems


# --- one model -------------------------------------------------------------------------


def source_problem(key: str, value: str, *, gguf_file: Optional[str] = None, config: bool = True,
                   weights: bool = True, tokenizer: bool = True, hub: bool = True) -> Optional[InputError]:
    """What stops ``value`` (of config ``key``) from loading, in one line naming both; None
    when nothing does. A local folder is checked for ``config``, ``weights`` (headers only)
    and a ``tokenizer``, or for ``gguf_file``; anything else must be a Hub id, in the local
    cache or (with ``hub``, and not offline) on the Hub."""
    path = Path(value).expanduser()
    if path.exists():
        if gguf_file:
            return _gguf_problem(key, value, path, gguf_file)
        return _folder_problem(key, value, path, config=config, weights=weights, tokenizer=tokenizer)
    if not is_repo_id(value):
        return InputError(f"{key}={value}: no such folder, and not a Hub id (namespace/name, such as {EXAMPLE_ID}): "
                          "give a local folder that save_pretrained wrote, or a Hub model id")
    if not hub:
        return None
    return _hub_problem(key, value, gguf_file)


def is_repo_id(value: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def _folder_problem(key: str, value: str, path: Path, *, config: bool, weights: bool,
                    tokenizer: bool) -> Optional[InputError]:
    def bad(reason: str) -> InputError:
        return InputError(f"{key}={value}: {reason}")

    if path.is_file():
        if path.suffix == ".gguf" and key == "model.name_or_path":
            return bad(f"a GGUF file; give its folder in {key} and its name in {GGUF_KEY} "
                       f"({key}={path.parent} {GGUF_KEY}={path.name})")
        return bad("a file, not a model folder; give the folder that save_pretrained wrote (config.json, the "
                   "weights and the tokenizer)")
    if (path / "adapter_config.json").is_file() and not (path / "config.json").exists():
        return None  # a PEFT adapter: transformers loads its base model through PEFT
    if config or weights:
        config_file = path / "config.json"
        if not config_file.is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if ggufs and key == "model.name_or_path":
                return bad(f"no config.json in the folder, which holds the GGUF checkpoint {ggufs[0]}: set "
                           f"{GGUF_KEY}={ggufs[0]}")
            return bad("no config.json in the folder; give the folder that save_pretrained wrote (config.json, the "
                       "weights and the tokenizer)")
        try:
            json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return bad(f"cannot read config.json: {one_line(exc)}")
    if weights:
        reason = weights_problem(path)
        if reason:
            return bad(reason)
    if tokenizer and not (any((path / name).is_file() for name in TOKENIZER_FILES) or any(path.glob("*.model"))):
        return bad(f"no tokenizer in the folder ({', '.join(TOKENIZER_FILES[:3])}, ...); save it with the model: "
                   "tokenizer.save_pretrained(folder)")
    return None


def weights_problem(folder: Path) -> Optional[str]:
    """Why the weights in ``folder`` cannot load, or None: the index's shards exist and every
    weights file's header reads (no tensor is loaded)."""
    for index_name in INDEXES:
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                return f"cannot read {index_name}'s weight_map: {one_line(exc)}"
            for shard in shards:
                if not (folder / shard).is_file():
                    return f"{index_name} names the shard {shard}, which is not in the folder: download or save it again"
                reason = unreadable(folder / shard)
                if reason:
                    return reason
            return None
    for name in WEIGHTS:
        if (folder / name).is_file():
            return unreadable(folder / name)
    return (f"no weights in the folder ({', '.join(WEIGHTS)}, or a sharded {INDEXES[0]}); give the folder "
            "save_pretrained wrote")


def unreadable(file: Path) -> Optional[str]:
    """Why the weights file ``file`` cannot be read, from its header alone; None if it can."""
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="numpy"):
                pass
        except (SafetensorError, OSError) as exc:
            return f"cannot read {file.name}: {one_line(exc)} (the file is cut short or not safetensors): download " \
                   "or save it again"
        return None
    # torch.save writes a zip archive, whose directory is at its end: a cut file has none.
    # transformers loads such a pickle checkpoint as it loads safetensors (torch.load with
    # weights_only=True); a file older than the zip format is a plain pickle
    try:
        with open(file, "rb") as handle:
            head = handle.read(2)
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                archive.namelist()
            return None
    except (OSError, zipfile.BadZipFile) as exc:
        return f"cannot read {file.name}: {one_line(exc)}"
    if head[:1] == b"\x80":  # a pickle's protocol marker
        return None
    return (f"cannot read {file.name}: not a torch checkpoint (the file is cut short or something else): download or "
            "save it again")


def _gguf_problem(key: str, value: str, path: Path, gguf_file: str) -> Optional[InputError]:
    if not path.is_dir():
        return InputError(f"{key}={value}: not a folder; with {GGUF_KEY} it is the folder (or Hub repo) that holds "
                          f"the GGUF file ({key}={path.parent} {GGUF_KEY}={path.name})")
    file = path / gguf_file
    if not file.is_file():
        found = sorted(p.name for p in path.glob("*.gguf"))
        holds = f"it holds {', '.join(found)}" if found else "it holds no .gguf file"
        return InputError(f"{GGUF_KEY}={gguf_file}: no such file in {key}={value} ({holds})")
    with open(file, "rb") as handle:
        if handle.read(4) != b"GGUF":
            return InputError(f"{GGUF_KEY}={gguf_file}: {file} is not a GGUF file (it does not start with 'GGUF')")
    if importlib.util.find_spec("gguf") is None:
        return InputError(f"{GGUF_KEY}={gguf_file}: reading GGUF files needs the gguf package: pip install gguf "
                          "(make setup installs it)")
    return None


def offline() -> bool:
    """Whether the Hugging Face Hub is not to be asked (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return constants.HF_HUB_OFFLINE or any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _hub_problem(key: str, repo: str, gguf_file: Optional[str]) -> Optional[InputError]:
    from huggingface_hub import try_to_load_from_cache

    filename = gguf_file or "config.json"
    named = f"{GGUF_KEY}={gguf_file} of {key}={repo}" if gguf_file else f"{key}={repo}"
    fix = f"download it where the Hub is reachable (hf download {repo}), or set {key} to a local folder"
    cached = try_to_load_from_cache(repo, filename)
    if isinstance(cached, str):
        return None
    if cached is not None:  # the cache knows the file is not in the repo
        return InputError(f"{named}: the Hub model has no {filename} (so says the local Hugging Face cache)")
    if offline():
        return InputError(f"{named}: no such folder, and not in the local Hugging Face cache while offline "
                          f"(HF_HUB_OFFLINE=1): {fix}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        info = HfApi().model_info(repo, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return InputError(f"{key}={repo}: a gated model: accept its terms on https://huggingface.co/{repo} and log "
                          f"in (hf auth login), or set {key} to a local folder")
    except RepositoryNotFoundError:
        return InputError(f"{key}={repo}: no such folder, and no such model on the Hugging Face Hub (a private one "
                          "needs hf auth login)")
    except Exception as exc:  # the network's errors, whichever HTTP client raises them
        return InputError(f"{named}: no such folder, not in the local Hugging Face cache, and the Hub cannot be "
                          f"reached ({type(exc).__name__}): {fix}")
    files = {s.rfilename for s in (info.siblings or [])}
    if info.siblings is not None and filename not in files:
        return InputError(f"{named}: the Hub model has no {filename}")
    return None
