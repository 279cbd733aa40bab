"""GGUF checkpoints (``model.gguf_file``, llama2rlhf.gguf_checkpoint).

A tiny Llama written here to a GGUF file with the ``gguf`` package goes through ``build_base``
as any GGUF from a folder would. Nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package is missing: make setup installs it")

TEXT = "[INST] Act as Napoleon. Hello there, 42 times! [/INST] Très bien."


def hf_config(name_or_path, gguf_file):
    from omegaconf import OmegaConf

    from llama2rlhf.config import Config

    cfg = OmegaConf.structured(Config)
    cfg.model.kind = "hf"
    cfg.model.name_or_path = str(name_or_path)
    cfg.model.gguf_file = gguf_file
    return cfg


def write_gguf(model, tokenizer, path: Path) -> None:
    """``model`` (a LlamaForCausalLM with tied embeddings) and its byte-level BPE ``tokenizer``
    as llama.cpp's converter writes them: float32 tensors under GGUF names, the query and key
    projections permuted to llama.cpp's rotary layout, the vocabulary as metadata."""
    import numpy as np

    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    special = set(tokenizer.all_special_ids)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                            for i in range(len(tokenizer))])
    saved = path.with_suffix(".tokenizer")
    tokenizer.save_pretrained(saved)
    gguf.SpecialVocab(saved, load_merges=True).add_to_gguf(writer, quiet=True)  # merges, special ids, template

    def permute(w, heads):
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: llama.cpp writes no output.weight
        stem, suffix = name.rsplit(".", 1)
        w = tensor.numpy()
        if stem.endswith("q_proj"):
            w = permute(w, c.num_attention_heads)
        elif stem.endswith("k_proj"):
            w = permute(w, c.num_key_value_heads)
        writer.add_tensor(f"{names.get_name(stem)}.{suffix}", np.ascontiguousarray(w, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tokenizer):
    """(folder, file name, the Llama it holds, its tokenizer)."""
    from llama2rlhf.toyworld.model import build_tiny_llama

    model = build_tiny_llama(tokenizer, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, seed=3)
    folder = tmp_path_factory.mktemp("gguf_repo")
    write_gguf(model, tokenizer, folder / "tiny.F32.gguf")
    return folder, "tiny.F32.gguf", model.eval(), tokenizer


def test_gguf_file_becomes_a_plain_checkpoint_with_the_same_logits(tiny_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama2rlhf.models import build_base, load_causal_lm

    folder, name, source, source_tok = tiny_gguf
    cfg = hf_config(folder, name)
    artifacts = build_base(cfg, None, tmp_path / "base")
    base = Path(artifacts["base"])
    assert base.parent == tmp_path / "base" and not list(base.glob("*.gguf"))
    assert "quantization_config" not in (base / "config.json").read_text()

    plain = load_causal_lm(str(base), cfg).eval()  # what every later stage does
    assert plain.dtype == torch.float32
    from_gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    ids = torch.tensor([source_tok(TEXT).input_ids])
    with torch.no_grad():
        logits = plain(ids).logits
        assert torch.equal(logits, from_gguf(ids).logits)
        # and the file holds the model it was written from
        torch.testing.assert_close(logits, source(ids).logits, rtol=0, atol=1e-6)

    # the tokenizer: the one the file describes, saved plainly, and the run's tokenizer artifact
    for tok in (AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(artifacts["tokenizer"])):
        encoded = tok(TEXT).input_ids
        assert encoded == source_tok(TEXT).input_ids
        assert tok.decode(encoded) == TEXT
        assert tok.chat_template == source_tok.chat_template
        assert (tok.bos_token, tok.eos_token) == (source_tok.bos_token, source_tok.eos_token)


def test_a_missing_gguf_file_names_the_key_and_the_path(tiny_gguf, tmp_path):
    from llama2rlhf.models import build_base

    folder, _, _, _ = tiny_gguf
    with pytest.raises(FileNotFoundError) as err:
        build_base(hf_config(folder, "nope.Q4_K_M.gguf"), None, tmp_path / "base")
    assert str(err.value) == f"model.gguf_file: no GGUF file {folder / 'nope.Q4_K_M.gguf'}"
    with pytest.raises(FileNotFoundError, match="model.gguf_file: no GGUF file /no/such/folder/x.gguf"):
        build_base(hf_config("/no/such/folder", "x.gguf"), None, tmp_path / "base")
    assert not (tmp_path / "base").exists()


def test_without_the_gguf_package_the_error_says_what_to_install(tiny_gguf, tmp_path, monkeypatch):
    from llama2rlhf.models import build_base

    folder, name, _, _ = tiny_gguf
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    with pytest.raises(ImportError) as err:
        build_base(hf_config(folder, name), None, tmp_path / "base")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"model.gguf_file={folder}/{name}:")
    assert "pip install gguf" in message and "make setup" in message


def test_the_run_report_names_the_gguf_file():
    from llama2rlhf.evaluation.report import _config_section

    model = {"kind": "hf", "name_or_path": "/models/smol", "gguf_file": "smol.Q4_1.gguf", "peft": None}
    assert "- model: `smol.Q4_1.gguf` in `/models/smol` (hf)" in _config_section({"model": model}, [])
    model["gguf_file"] = None
    assert "- model: `/models/smol` (hf)" in _config_section({"model": model}, [])
