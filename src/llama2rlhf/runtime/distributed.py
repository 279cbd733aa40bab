"""Running the pipeline under ``accelerate launch`` (or torchrun): one process per GPU.

Every process runs the same pipeline. TRL's trainers train on all of them, as the
accelerate config says (data parallel, FSDP or DeepSpeed ZeRO). Everything else belongs to
the main process: it alone writes the run directory (``state.json``, ``summary.json``,
``metrics.jsonl``, the base model, samples, comparisons, evaluations), runs the observer
hooks (loggers), and does the sampling and scoring that happen outside a trainer
(collecting comparisons, rejection sampling, Ghost Attention dialogues, evaluation) while
the other processes wait and then receive what it returned (:func:`main_process_only`).
That is the simplest correct split: one writer, and training data that is the same on every
process by construction. Its price is idle GPUs while the main one samples.

In a single process started without a launcher none of this does anything: no process
group is created and accelerate is not even imported.
"""

from __future__ import annotations

import logging
import os
import pickle
from contextlib import contextmanager
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# set by setup(): the trainers run on the CPU (gloo), which accelerate must be told
_cpu = False


def num_processes() -> int:
    """How many processes the launcher started (torchrun's ``WORLD_SIZE``, or MPI's)."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 1


def is_distributed() -> bool:
    return num_processes() > 1


def process_index() -> int:
    if not is_distributed():
        return 0
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank()
    for name in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 0


def is_main_process() -> bool:
    return process_index() == 0


def device_for(cfg: Any):
    """The device the main process samples and scores on (``device``: auto, cpu, cuda...)."""
    import torch

    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def uses_cpu(cfg: Any) -> bool:
    """Whether the trainers run on the CPU. accelerate must be told so (``use_cpu``): a
    launched process that asks for no CPU on a machine without a GPU gets a process group
    but believes it is alone, and trains on its own."""
    return device_for(cfg).type == "cpu"


def setup(cfg: Any) -> None:
    """Join the launcher's process group, the one the trainers use, before the pipeline's
    first collective; its timeout (``distributed_timeout_s``) bounds how long the other
    processes wait while the main one samples. Nothing happens in a single process."""
    global _cpu
    if not is_distributed():
        return
    from datetime import timedelta

    from accelerate import PartialState

    _cpu = uses_cpu(cfg)
    state = PartialState(cpu=_cpu, timeout=timedelta(seconds=cfg.distributed_timeout_s))
    if state.num_processes != num_processes():
        raise RuntimeError(f"launched as {num_processes()} processes, but accelerate set up {state.num_processes} "
                           f"({state.distributed_type}); check the accelerate config and the device setting "
                           f"(device={cfg.device})")
    log.info("process %d of %d (%s, backend %s)", state.process_index, state.num_processes,
             state.distributed_type.value, state.backend)


def wait_for_everyone() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def from_main(obj: T) -> T:
    """``obj`` as the main process has it (any picklable value), on every process."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_process_only(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run by the main process alone; every process returns its
    (picklable) result. An error on the main process is raised on every process, so that
    none waits for a result that will not come. Call it on every process."""
    if not is_distributed():
        return fn(*args, **kwargs)
    error: BaseException | None = None
    payload = b""
    if is_main_process():
        try:
            with _whole_models():
                result = fn(*args, **kwargs)
            payload = pickle.dumps(("value", result))
        except Exception as exc:
            error = exc
            payload = pickle.dumps(("error", _portable(exc)))
    kind, value = pickle.loads(from_main(payload))
    if kind == "error":
        if error is not None:
            raise error
        raise value
    return value


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (the other processes raise the same type), else a
    RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"the main process failed: {type(exc).__name__}: {exc}")


@contextmanager
def _whole_models():
    """Under DeepSpeed ZeRO-3 a trainer leaves transformers' ZeRO-3 config set for the rest
    of the process: from then on ``from_pretrained`` partitions every model it loads and
    ``generate`` waits for the other processes (``synced_gpus``). The main process's own
    sampling and scoring need whole models that it runs alone, so the config is lifted
    while it works and put back afterwards."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)  # transformers keeps no public getter
    config = ref() if ref is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)
