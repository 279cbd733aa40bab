"""Loading and saving policies, reward models and tokenizers, toy or real.

``model.kind=toy`` builds the tokenizer and a tiny Llama from config; ``model.kind=hf``
loads ``model.name_or_path`` (a Hub id or a local folder) through the same code, with the
Llama 2 chat template applied when the tokenizer has none; with ``model.gguf_file`` the base
stage first converts that GGUF checkpoint into a plain one (``llama2rlhf.runtime.gguf``).

A model the config names (``model.name_or_path``, ``reward_model.name_or_path``, ...) that
cannot load, a missing folder, a truncated weights file or a Hub id that cannot be fetched,
raises an :class:`~llama2rlhf.data.errors.InputError` naming the key and the path, the line
``llama2rlhf --validate`` prints for it (``llama2rlhf.runtime.model_checks``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from llama2rlhf.data.errors import ConfigError, InputError, one_line
from llama2rlhf.data.jsonl import replace_folder, staging_folder
from llama2rlhf.data.templates import llama2_chat_template, plain_chat_template
from llama2rlhf.runtime import artifacts
from llama2rlhf.runtime.model_checks import key_of, source_problem

log = logging.getLogger(__name__)


def torch_dtype(name: str):
    import torch

    if name == "auto":
        return "auto"
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError("model.dtype", "must be auto, float32, bfloat16 or float16", name) from None


def build_base(cfg: Any, world: Any, out_dir: Path) -> dict[str, str]:
    """Create the starting checkpoint; returns artifacts ``base`` and ``tokenizer``."""
    m = cfg.model
    if m.kind == "toy":
        from llama2rlhf.toyworld.model import build_tiny_llama
        from llama2rlhf.toyworld.tokenizer import build_tokenizer

        if world is None:
            # real data with the toy model: the byte-level tokenizer still comes from the toy
            # world's text; it encodes any string, only less compactly
            from llama2rlhf.toyworld import ToyWorld

            world = ToyWorld(seed=cfg.toyworld.seed)
        tok = build_tokenizer(world, vocab_size=m.vocab_size)
        model = build_tiny_llama(
            tok,
            hidden_size=m.hidden_size,
            intermediate_size=m.intermediate_size,
            num_layers=m.num_layers,
            num_heads=m.num_heads,
            max_position_embeddings=m.max_position_embeddings,
            seed=cfg.seed,
        )
        # written aside and swapped in whole, as every model folder the run writes
        staging = staging_folder(out_dir)
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        replace_folder(staging, out_dir)
        n = sum(p.numel() for p in model.parameters())
        log.info("built a tiny Llama with %.2fM parameters and a %d-token BPE tokenizer", n / 1e6, len(tok))
        return {artifacts.BASE: str(out_dir), artifacts.TOKENIZER: str(out_dir)}
    if m.kind == "hf":
        if not m.name_or_path:
            raise ConfigError("model.name_or_path", "is not set: model.kind=hf loads the policy from it (a Hub id or "
                                                    "a local folder)")
        base = str(m.name_or_path)
        _require(base, "model.name_or_path", gguf_file=m.gguf_file, config=True, weights=True, tokenizer=True)
        if m.gguf_file:
            from llama2rlhf.runtime.gguf import convert_gguf

            # converted once, here: later stages load a plain checkpoint
            base = str(convert_gguf(base, m.gguf_file, out_dir / "model"))
        tok = load_tokenizer(base, trust_remote_code=m.trust_remote_code, key=None if m.gguf_file else "model.name_or_path")
        staging = staging_folder(out_dir / "tokenizer")
        tok.save_pretrained(staging)
        replace_folder(staging, out_dir / "tokenizer")
        return {artifacts.BASE: base, artifacts.TOKENIZER: str(out_dir / "tokenizer")}
    raise ConfigError("model.kind", "must be toy or hf", m.kind)


def _require(path: str, key: str | None, *, gguf_file: str | None = None, config: bool = False,
             weights: bool = False, tokenizer: bool = False) -> None:
    """Raise the problem :func:`~llama2rlhf.runtime.model_checks.source_problem` finds with the
    model ``key`` names (local checks only); nothing for a path no key names (the run's own)."""
    if key is None:
        return
    problem = source_problem(key, path, gguf_file=gguf_file, config=config, weights=weights, tokenizer=tokenizer,
                             hub=False)
    if problem is not None:
        raise problem


@contextmanager
def _named(path: str, key: str | None):
    """``from_pretrained``'s errors for a model ``key`` names as one line naming both (the
    Hub's, a missing file's): the user fixes the key."""
    try:
        yield
    except OSError as exc:
        if key is None:
            raise
        raise InputError(f"{key}={path}: {one_line(exc)}") from exc


def load_tokenizer(path: str, trust_remote_code: bool = False, *, fallback_template: str = "llama2",
                   key: str | None = None):
    """``path``'s tokenizer with a chat template and a pad token. One without a chat template
    gets ``fallback_template``: ``llama2`` (the policy's: Llama 2's ``[INST]`` format) or
    ``plain`` (a reward model's own tokenizer: ``User: ... Assistant: ...``, no BOS token
    needed, so encoder classifiers such as BERT and DeBERTa render conversations too).
    ``key``: the config key that names ``path``, for errors (:class:`InputError`)."""
    from transformers import AutoTokenizer

    _require(path, key, tokenizer=True)
    with _named(path, key):
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not tok.chat_template:
        templates = {"llama2": ("the Llama 2", llama2_chat_template), "plain": ("a plain", plain_chat_template)}
        name, template = templates[fallback_template]
        log.info("%s has no chat template; using %s chat template", path, name)
        tok.chat_template = template()
    if tok.pad_token is None:
        # Llama 2 ships without a pad token; padding positions are masked anyway
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def _init_kwargs(cfg: Any) -> dict[str, Any]:
    return {"dtype": torch_dtype(cfg.model.dtype), "trust_remote_code": cfg.model.trust_remote_code}


def load_causal_lm(path: str, cfg: Any):
    """The causal LM in ``path``; a model the config names that cannot load raises an
    :class:`InputError` naming its key."""
    from transformers import AutoModelForCausalLM

    key = key_of(path, cfg)
    _require(path, key, config=True, weights=True)
    with _named(path, key):
        return AutoModelForCausalLM.from_pretrained(path, **_init_kwargs(cfg))


def load_reward_model(path: str, cfg: Any, tokenizer=None):
    """A sequence classifier with one output: the reward (its head is new if ``path`` is a policy)."""
    from transformers import AutoModelForSequenceClassification

    from llama2rlhf.runtime.quiet import quiet_new_head

    key = key_of(path, cfg)
    _require(path, key, config=True, weights=True)
    with quiet_new_head(), _named(path, key):
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **_init_kwargs(cfg))
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


# The policy a stage saved last in this process, still in memory, by the folder it was
# saved to: the next sampler of that folder takes it from here (load_policy) instead of
# reading back what was just written. A trainer's start drops it (forget_handoff), so it
# never holds memory that training needs.
_handoff: dict[str, Any] = {}


def hand_off(out_dir: Path, model: Any) -> None:
    """Keep ``model``, just saved whole in ``out_dir``, for the next :func:`take_handoff`."""
    _handoff.clear()
    _handoff[str(Path(out_dir).resolve())] = model


def take_handoff(path: str) -> Any:
    """The model saved in ``path`` by this process, if still in memory (once), else None."""
    return _handoff.pop(str(Path(path).resolve()), None)


def forget_handoff() -> None:
    _handoff.clear()


def save_trained_model(trainer, out_dir: Path, load_base: Callable[[], Any], keep_training: bool = False,
                       hand_over: bool = False) -> None:
    """Save what ``trainer`` trained, with its tokenizer, as a plain checkpoint in ``out_dir``
    that later stages load with ``from_pretrained``; LoRA adapters are merged in.

    The checkpoint is written into a staging folder and then swapped in whole
    (``llama2rlhf.data.jsonl.replace_folder``): a run killed mid-save leaves the folder
    ``out_dir`` had before, or none, never a partial one, and nothing of a killed attempt's
    save survives into the next.

    Call it on every process: ``Trainer.save_model`` gathers the weights that FSDP or
    DeepSpeed ZeRO-3 sharded (collectives) and writes on the main process alone. With LoRA
    in one process the adapter is merged in memory (into a copy when ``keep_training``); over
    several processes, where it may be sharded, its saved weights are merged on the main
    process into ``load_base()``, the model training started from.

    ``hand_over``: the saved model stays in memory for the next sampler of ``out_dir`` in
    this process (:func:`take_handoff`), where this process holds it whole (not FSDP or
    ZeRO-3 sharded) and, with LoRA, merged in memory.
    """
    from llama2rlhf.runtime import distributed

    # emptied by the main process before any process writes into it (main_process_only waits)
    staging = Path(distributed.main_process_only(staging_folder, out_dir))
    with _saveable(trainer):
        model = getattr(trainer.model, "policy", trainer.model)  # TRL's PPO trains policy and value together
        whole = None
        if not hasattr(model, "merge_and_unload"):
            trainer.save_model(str(staging))
            whole = model
        elif not distributed.is_distributed():
            import copy

            whole = (copy.deepcopy(model) if keep_training else model).merge_and_unload()
            whole.save_pretrained(staging)
            trainer.processing_class.save_pretrained(staging)
        else:
            adapter = out_dir.with_name(out_dir.name + "-adapter")
            adapter_dir = Path(distributed.main_process_only(staging_folder, adapter))
            trainer.save_model(str(adapter_dir))
            distributed.main_process_only(_merge_adapter, load_base, adapter_dir, staging, trainer.processing_class)
            distributed.main_process_only(replace_folder, adapter_dir, adapter)  # kept beside the merged model
    distributed.wait_for_everyone()  # every process is done saving
    distributed.main_process_only(replace_folder, staging, out_dir)  # the others wait: they load it next
    if hand_over and whole is not None and not _sharded(trainer):
        hand_off(out_dir, whole)


def _sharded(trainer) -> bool:
    """Whether the trainer's model is split over the processes (FSDP, DeepSpeed ZeRO-3)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return bool(getattr(trainer, "is_deepspeed_enabled", False) and is_deepspeed_zero3_enabled())


def _merge_adapter(load_base: Callable[[], Any], adapter_dir: Path, out_dir: Path, tokenizer) -> None:
    from peft import PeftModel

    PeftModel.from_pretrained(load_base(), str(adapter_dir)).merge_and_unload().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@contextmanager
def _saveable(trainer):
    """TRL 1.12's PPOTrainer as ``Trainer.save_model`` expects it on every process. It keeps
    its prepared model, a DistributedDataParallel wrapper over several processes, as
    ``trainer.model``, where ``save_model`` looks for the policy (the transformers Trainer
    keeps the bare model there; DeepSpeed and FSDP models stay as they are: saving must
    gather them); and it skips ``Trainer.__init__``, which sets an attribute that
    transformers 5's ``_save`` reads on the processes that do not write."""
    if not hasattr(trainer, "is_distributed_loading_by_transformers"):
        trainer.is_distributed_loading_by_transformers = False
    wrapped = trainer.model
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(wrapped, DistributedDataParallel):
        trainer.model = wrapped.module
    try:
        yield
    finally:
        trainer.model = wrapped


def peft_config(cfg: Any, task_type: str, model: Any = None):
    """LoRA settings from ``model.peft=lora``; None for full fine-tuning. With
    ``model.lora_layers`` the adapters go on the last layers of ``model`` only."""
    if not cfg.model.peft:
        return None
    if cfg.model.peft != "lora":
        raise ConfigError("model.peft", "must be lora or null", cfg.model.peft)
    from peft import LoraConfig

    where: dict[str, Any] = {"target_modules": "all-linear"}
    if cfg.model.lora_layers:
        import torch

        total = model.config.get_text_config().num_hidden_layers
        # the linear layers inside the transformer blocks, by name (PEFT needs a list here)
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and ".layers." in n})
        # no trainable weight below them: backpropagation stops at the lowest adapted layer
        where = {"target_modules": names, "layers_to_transform": list(range(max(0, total - cfg.model.lora_layers), total)),
                 "layers_pattern": "layers"}
    return LoraConfig(r=cfg.model.lora_r, lora_alpha=cfg.model.lora_alpha, lora_dropout=cfg.model.lora_dropout,
                      task_type=task_type, **where)


def use_bf16(setting: str) -> bool:
    import torch

    if setting == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return setting in ("true", "True", "1", "yes")
