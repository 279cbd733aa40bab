"""GGUF checkpoints (``model.gguf_file``) as plain ``from_pretrained`` folders.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=...)``, with the ``gguf``
package) and dequantizes it, but will not ``save_pretrained`` the model it loaded that way.
``convert_gguf`` moves the weights into a model built from the same config and saves that,
with the tokenizer the file describes: a float32 safetensors checkpoint that every stage
loads like any other, so nothing past the base stage needs to know about GGUF.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from llama2rlhf.data.errors import InputError
from llama2rlhf.data.jsonl import replace_folder, staging_folder

log = logging.getLogger(__name__)

KEY = "model.gguf_file"


def gguf_path(name_or_path: str, gguf_file: str) -> Path:
    """The local path of ``gguf_file`` in ``name_or_path``: a folder, or a Hub repo it is
    downloaded from (into the Hugging Face cache). Errors name the config key and the path."""
    where = f"{name_or_path}/{gguf_file}"
    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"{KEY}={gguf_file}: reading GGUF files needs the gguf package: pip install gguf "
                         "(make setup installs it)")
    if Path(name_or_path).is_dir() or name_or_path.startswith(("/", "./", "../", "~")):
        path = Path(name_or_path).expanduser() / gguf_file
        if not path.is_file():
            raise InputError(f"{KEY}={gguf_file}: no such file in model.name_or_path={name_or_path} (no GGUF file {path})")
        return path
    from transformers.utils import cached_file

    try:
        return Path(cached_file(name_or_path, gguf_file))
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{KEY}={gguf_file}: cannot get {where} (not a local folder; from the Hub: {reason})") from exc


def convert_gguf(name_or_path: str, gguf_file: str, out_dir: Path) -> Path:
    """Dequantize ``gguf_file`` of ``name_or_path`` into a float32 checkpoint with its tokenizer
    in ``out_dir``; returns ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    path = gguf_path(name_or_path, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # dequantize=True: every weight unpacked into a plain tensor, even where transformers could
    # keep GGUF blocks (its kernels): training needs dense weights
    loaded = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved weights are plain float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    # written aside and swapped in whole: a kill mid-save leaves no half checkpoint at out_dir
    staging = staging_folder(out_dir)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    replace_folder(staging, out_dir)
    n = sum(p.numel() for p in model.parameters())
    log.info("converted %s (%.1fM parameters) to a float32 checkpoint in %s", path, n / 1e6, out_dir)
    return out_dir
