"""``sampler=vllm``: the sampler contract on vLLM's offline engine (``vllm.LLM``).

Same interface and output as the built-in ``hf`` sampler
(:mod:`llama2rlhf.sampling.hf`): for each prompt, in order, ``n`` completions drawn
at ``temperature`` (0: greedy, one completion), at most ``max_new_tokens`` new tokens,
stopping at the tokenizer's EOS; each :class:`~llama2rlhf.sampling.Sample` has the text
(decoded by the run's tokenizer with special tokens skipped, stripped, as ``hf`` does),
the generated token count with the closing EOS included, and whether it stopped at EOS.

How it maps onto vLLM:

* prompts are rendered with the run's tokenizer and its chat template (Llama 2's when
  the tokenizer has none, as the core does) and handed to vLLM as token ids, so vLLM sees
  exactly the tokens the ``hf`` sampler would, and the samples' tokens are decoded by the
  run's tokenizer too; the folder's generation defaults are not read: the request says
  everything;
* one request per prompt, ``SamplingParams(n=K, temperature=T, max_tokens=...,
  seed=..., stop_token_ids=[eos])``: vLLM shares the prompt's prefill among its K samples;
  the request's seed comes from the prompt's own seed when the caller gives one
  (``seeds``), else from torch's generator (:func:`request_seeds`);
* the factory gets the policy's folder (a new checkpoint every round) and loads only its
  tokenizer; the engine loads the weights from the folder, lazily at the first
  ``sample``; at most one engine is up at a time in a process, and it is shut down (its
  memory given back for training) when the sampler is closed or garbage-collected, which
  the stages do before they train;
* under ``accelerate launch`` each process starts its own engine on its own GPUs or CPU
  cores (:mod:`llama2rlhf_vllm.parallel`);
* :meth:`VLLMSampler.update_from` puts a trained model's weights into the running engine
  without a checkpoint or an engine start (:mod:`llama2rlhf_vllm.weights`).

``import vllm`` happens only when a sampler is made, so the plugin imports anywhere.
"""

from __future__ import annotations

import gc
import logging
import operator
import os
import weakref
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from llama2rlhf.config import SamplerConfig
from llama2rlhf.sampling import Messages, Sample

from . import parallel, weights

NAME = "vllm"
INSTALL_HINT = "make vllm (vLLM's CPU build in .venv-vllm), or pip install 'llama2rlhf-vllm[vllm]' on a CUDA machine"
# engine arguments the sampler sets itself, and the option that sets them where there is one
OWN_ARGS = {"model": "the policy path", "dtype": "sampler.dtype",
            "gpu_memory_utilization": "sampler.gpu_memory_utilization",
            "tensor_parallel_size": "sampler.tensor_parallel_size", "enforce_eager": "sampler.enforce_eager",
            "max_model_len": "sampler.max_model_len", "trust_remote_code": "model.trust_remote_code",
            "generation_config": None, "worker_extension_cls": None}
log = logging.getLogger(__name__)


@dataclass
class VLLMSamplerConfig(SamplerConfig):
    """``sampler=vllm``. ``batch_tokens`` (inherited) is not used: vLLM schedules its own batches."""

    name: str = NAME
    # vLLM's dtype: auto (the checkpoint's; vLLM reads float32 as float16), float16,
    # bfloat16, float32
    dtype: str = "auto"
    # share of each GPU's memory vLLM may take for weights and KV cache. Below vLLM's
    # default of 0.9 because the reward models that score the samples share the GPU. On the
    # CPU the KV cache is sized by VLLM_CPU_KVCACHE_SPACE instead (llama2rlhf_vllm.parallel)
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    # the longest prompt + completion in tokens; None: the model's own limit
    max_model_len: Optional[int] = None
    # skip CUDA graph capture: slower sampling, faster start (each round starts an engine)
    enforce_eager: bool = False
    # any other vllm.LLM / EngineArgs keyword, e.g. {swap_space: 0, max_num_seqs: 512}
    engine_args: dict[str, Any] = field(default_factory=dict)


def vllm_classes() -> tuple[Any, Any]:
    """``(vllm.LLM, vllm.SamplingParams)``, imported on first use."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as exc:
        raise ImportError(f"sampler=vllm needs vLLM, which is not importable here ({exc}); install it: "
                          f"{INSTALL_HINT}") from exc
    return LLM, SamplingParams


def engine_kwargs(model_path: str, options: Any, trust_remote_code: bool = False) -> dict[str, Any]:
    """The ``vllm.LLM(...)`` keywords for a policy folder and a ``sampler`` config node."""
    if not 0.0 < float(options.gpu_memory_utilization) <= 1.0:
        raise ValueError(f"sampler.gpu_memory_utilization must be within (0, 1], got {options.gpu_memory_utilization}")
    if int(options.tensor_parallel_size) < 1:
        raise ValueError(f"sampler.tensor_parallel_size must be >= 1, got {options.tensor_parallel_size}")
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": options.dtype,
        "gpu_memory_utilization": float(options.gpu_memory_utilization),
        "tensor_parallel_size": int(options.tensor_parallel_size),
        "enforce_eager": bool(options.enforce_eager),
        "trust_remote_code": bool(trust_remote_code),
        # the request's parameters only, as the hf sampler: no sampling defaults or extra
        # stop tokens from the folder's generation_config.json
        "generation_config": "vllm",
        "worker_extension_cls": weights.EXTENSION,  # update_from's receiving end
    }
    if options.max_model_len is not None:
        kwargs["max_model_len"] = int(options.max_model_len)
    extra = dict(options.engine_args or {})
    clash = sorted(set(extra) & set(OWN_ARGS))
    if clash:
        ways = [OWN_ARGS[k] for k in clash if OWN_ARGS[k]]
        raise ValueError(f"sampler.engine_args sets {', '.join(clash)}, which the sampler sets itself"
                         + (f": use {', '.join(ways)} instead" if ways else ""))
    return {**kwargs, **extra}


def ensure_chat_template(tokenizer: Any) -> Any:
    """The core's rule (``llama2rlhf.runtime.models.load_tokenizer``): no chat template, Llama 2's."""
    if not getattr(tokenizer, "chat_template", None):
        from llama2rlhf.data.templates import llama2_chat_template

        log.info("the tokenizer has no chat template; using the Llama 2 chat template")
        tokenizer.chat_template = llama2_chat_template()
    return tokenizer


def encode(tokenizer: Any, prompts: Sequence[Messages]) -> list[list[int]]:
    """Prompt token ids, rendered as the ``hf`` sampler renders them."""
    return [list(tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]) for p in prompts]


def to_sample(completion: Any, eos: int, tokenizer: Any) -> Sample:
    """One ``vllm`` CompletionOutput as a :class:`Sample` counted the way ``hf`` counts.

    vLLM reports the EOS among ``token_ids`` or leaves it out depending on version and on
    why it stopped; the count here includes it either way, and nothing after it.
    """
    seq = list(completion.token_ids)
    if eos in seq:
        seq = seq[: seq.index(eos) + 1]
        finished, n_tokens = True, len(seq)
    else:
        finished = completion.finish_reason == "stop"
        stopped_on = getattr(completion, "stop_reason", None)
        included = isinstance(stopped_on, int) and bool(seq) and seq[-1] == stopped_on
        n_tokens = len(seq) + (1 if finished and not included else 0)
    return Sample(tokenizer.decode(seq, skip_special_tokens=True).strip(), n_tokens, finished)


def to_samples(outputs: Sequence[Any], prompt_ids: Sequence[list[int]], n: int, eos: int,
               tokenizer: Any) -> list[list[Sample]]:
    """vLLM's RequestOutputs as ``n`` samples per prompt, checked against the prompts sent."""
    if len(outputs) != len(prompt_ids):
        raise RuntimeError(f"vLLM returned {len(outputs)} results for {len(prompt_ids)} prompts")
    results = []
    for i, (out, ids) in enumerate(zip(outputs, prompt_ids, strict=True)):
        got = getattr(out, "prompt_token_ids", None)
        if got is not None and list(got) != ids:
            raise RuntimeError(f"vLLM result {i} answers another prompt than prompt {i} (its prompt tokens differ)")
        completions = sorted(out.outputs, key=lambda c: getattr(c, "index", 0))
        if len(completions) != n:
            raise RuntimeError(f"vLLM returned {len(completions)} samples for prompt {i}, expected {n}")
        results.append([to_sample(c, eos, tokenizer) for c in completions])
    return results


def spread(seed: int) -> int:
    """A prompt's seed as its request's seed: SplitMix64's mix of it, within [0, 2**62).

    vLLM seeds the ``n`` samples of a request with ``seed``, ``seed + 1``, ...,
    ``seed + n - 1`` (``vllm.v1.engine.parallel_sampling``): requests whose seeds are
    close (prompts seeded 7 and 8) would share streams, sample 1 of one drawing the noise
    of sample 0 of the other. Mixed, nearby seeds land far apart.
    """
    z = (int(seed) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 2


def request_seeds(count: int, seeds: Optional[Sequence[int]] = None) -> list[int]:
    """One seed per request: from the prompt's own seed (``seeds[i]``), so that a prompt's
    samples do not depend on the other prompts of the call; without ``seeds``, from torch's
    global generator, which the stage seeds, so a redone stage draws the same samples and
    every call new ones."""
    if seeds is None:
        import torch

        seeds = torch.randint(0, 2**62, (count,)).tolist()
    elif len(seeds) != count:
        raise ValueError(f"seeds must hold one seed per prompt: got {len(seeds)} for {count} prompts")
    out = []
    for i, s in enumerate(seeds):
        try:
            out.append(spread(operator.index(s)))
        except TypeError:
            raise ValueError(f"seeds[{i}] must be an int, got {s!r}") from None
    return out


def release(llm: Any, destroy_process_group: bool) -> None:
    """Shut a ``vllm.LLM`` down and give its GPU memory back.

    vLLM's engine core runs in its own process by default (V1): shutting it down frees its
    memory. An in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) also leaves vLLM's
    model-parallel groups behind, which the next engine would find; and the torch process
    group it created, unless one (accelerate's) was there before it.
    """
    engine = getattr(llm, "llm_engine", None)
    shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
    if callable(shutdown):
        shutdown()
    del engine, shutdown, llm
    try:
        from vllm.distributed import parallel_state
    except ImportError:
        pass
    else:
        in_process = getattr(parallel_state, "_WORLD", None) is not None  # an engine in this process made groups
        parallel_state.destroy_model_parallel()
        if destroy_process_group and in_process:
            parallel_state.destroy_distributed_environment()
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Engine:
    """One ``vllm.LLM`` and what its release needs; at most one is open at a time."""

    current: Optional["Engine"] = None

    def __init__(self, llm: Any, owns_process_group: bool):
        self.llm = llm
        self.owns_process_group = owns_process_group

    def close(self) -> None:
        if Engine.current is self:
            Engine.current = None
        if self.llm is None:
            return
        llm, self.llm = self.llm, None
        release(llm, self.owns_process_group)


class VLLMSampler:
    def __init__(self, model_path: str, tokenizer: Any, options: Any = None, trust_remote_code: bool = False,
                 llm_class: Any = None, sampling_params_class: Any = None):
        self.options = options if options is not None else VLLMSamplerConfig()
        self.engine_kwargs = engine_kwargs(model_path, self.options, trust_remote_code)
        self.tokenizer = ensure_chat_template(tokenizer)
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer of {model_path} has no EOS token: samples would never stop")
        self.llm_class, self.sampling_params_class = llm_class, sampling_params_class
        self.show_progress = True
        self._engine: Optional[Engine] = None

    def engine_environment(self) -> dict[str, str]:
        """The environment variables this process's engine starts with
        (:func:`llama2rlhf_vllm.parallel.engine_environment`)."""
        gpus, cpus, memory = parallel.this_machine()
        kv_set = "kv_cache_memory_bytes" in self.engine_kwargs
        return parallel.engine_environment(parallel.local_process(), self.engine_kwargs["tensor_parallel_size"],
                                           os.environ, gpus, cpus, memory, kv_cache_set=kv_set)

    def start_kwargs(self) -> dict[str, Any]:
        """``engine_kwargs`` with what the machine needs: on the CPU, whole prefills.

        vLLM 0.32 splits a long step's prompts (chunked prefill) and, for a seeded request
        whose prefill was split, winds its generator back with an operation only CUDA
        generators have: the CPU engine fails. Unsplit prefills also keep a prompt's draws
        the same whatever else the step holds. ``sampler.engine_args`` may say otherwise.
        """
        kwargs = dict(self.engine_kwargs)
        if parallel.this_machine()[0] == 0:
            kwargs.setdefault("enable_chunked_prefill", False)
        return kwargs

    def llm(self) -> Any:
        """The engine, started on first use (after closing any other sampler's)."""
        if self._engine is not None and self._engine.llm is not None:
            return self._engine.llm
        import torch

        if Engine.current is not None:
            Engine.current.close()  # one engine on the GPU at a time
        # models the stage has dropped (an earlier sampler's, a scorer's) go before vLLM
        # measures free memory
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        llm_class = self.llm_class or vllm_classes()[0]
        had_group = torch.distributed.is_available() and torch.distributed.is_initialized()
        env = self.engine_environment()
        log.info("starting a vLLM engine for %s%s", self.engine_kwargs["model"],
                 "".join(f" {k}={v}" for k, v in sorted(env.items())))
        with parallel.environment(env):
            engine = Engine(llm_class(**self.start_kwargs()), owns_process_group=not had_group)
        self._engine = Engine.current = engine
        weakref.finalize(self, engine.close)  # the stages drop their sampler before training
        return engine.llm

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    def __enter__(self) -> "VLLMSampler":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def sample(self, prompts: Sequence[Messages], n: int, temperature: float, max_new_tokens: int,
               desc: Optional[str] = None, seeds: Optional[Sequence[int]] = None) -> list[list[Sample]]:
        """The sampler contract (:class:`llama2rlhf.sampling.Sampler`); ``desc`` labels the
        log line (the progress bar is vLLM's own).

        ``seeds``: one int per prompt; prompt ``i``'s samples then depend only on the prompt,
        ``seeds[i]``, ``n``, ``temperature``, ``max_new_tokens`` and the weights, not on the
        other prompts of the call (processes sampling their own shares draw what one
        process sampling all would). Without it the seeds come from torch's generator.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if temperature == 0 and n > 1:
            raise ValueError("greedy decoding (temperature 0) gives n identical samples; use n=1")
        request_seed = request_seeds(len(prompts), seeds)
        if not prompts:
            return []
        ids = encode(self.tokenizer, prompts)
        sampling_params = self.sampling_params_class or vllm_classes()[1]
        eos = self.tokenizer.eos_token_id
        # detokenize=False: the run's tokenizer decodes the samples (to_sample)
        params = [sampling_params(n=n, temperature=float(temperature), max_tokens=int(max_new_tokens), seed=seed,
                                  stop_token_ids=[eos], detokenize=False) for seed in request_seed]
        log.info("%s: %d prompts x %d samples on vLLM", desc or "sampling", len(ids), n)
        outputs = self.llm().generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=self.show_progress)
        return to_samples(outputs, ids, n, eos, self.tokenizer)

    def load_weights(self, named_tensors: Mapping[str, Any] | Iterable[tuple[str, Any]],
                     folder: Optional[str] = None) -> int:
        """Put new weights into the engine, in place, without a checkpoint or a new engine;
        returns how many tensors went in.

        ``named_tensors``: ``(name, tensor)`` pairs or a mapping, under the checkpoint's
        names (a transformers model's ``state_dict()``), on any device and in any dtype
        (converted to the engine's). The engine is started from the sampler's folder first
        if it is not up. The tensors travel through one file in shared memory, ``folder``
        (``/dev/shm`` by default), removed afterwards (:mod:`llama2rlhf_vllm.weights`); the
        engine's prefix cache, keys and values of the old weights, is emptied.
        """
        items = list(named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors)
        if not items:
            raise ValueError("load_weights got no tensors")
        llm = self.llm()
        path, layout = weights.pack(items, folder)
        try:
            loaded = llm.collective_rpc(weights.METHOD, args=(str(path), layout))
        finally:
            Path(path).unlink(missing_ok=True)
        if not llm.reset_prefix_cache():
            raise RuntimeError("vLLM did not empty its prefix cache after the new weights: its keys and values "
                               "are of the old ones")
        log.info("loaded %d tensors into the vLLM engine of %s", len(layout), self.engine_kwargs["model"])
        return int(loaded[0]) if loaded else len(layout)

    def update_from(self, model: Any) -> int:
        """:meth:`load_weights` with a transformers model's weights (its ``state_dict``):
        the trained policy of the next round, sampled without saving it first. A model
        wrapped for data parallel (``.module``) is unwrapped; LoRA adapters must be merged
        first (``merge_and_unload()``), as a saved policy is."""
        model = getattr(model, "module", model)
        if hasattr(model, "peft_config"):
            raise ValueError("update_from got a PEFT model: merge its adapters first (model.merge_and_unload()), "
                             "the engine holds full weights")
        return self.load_weights(model.state_dict())


def make_vllm_sampler(model_path: str, cfg: Any, **options: Any) -> VLLMSampler:
    """The ``register_samplers`` factory: ``factory(model_path, cfg, **options)``.

    ``options`` are the ``sampler`` node's fields but ``name`` (:class:`VLLMSamplerConfig`;
    its defaults for those not given). vLLM loads the policy from ``model_path`` itself; only
    the tokenizer is loaded here (the core's ``load_tokenizer``: Llama 2's chat template
    where the folder has none), to render the prompts.
    """
    from llama2rlhf.runtime.models import load_tokenizer

    known = {f.name for f in fields(VLLMSamplerConfig)} - {"name"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"sampler=vllm has no option {', '.join('sampler.' + k for k in unknown)}")
    llm_class, sampling_params_class = vllm_classes()
    trust = bool(cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(model_path, trust_remote_code=trust)
    return VLLMSampler(model_path, tokenizer, VLLMSamplerConfig(**options), trust_remote_code=trust,
                       llm_class=llm_class, sampling_params_class=sampling_params_class)
