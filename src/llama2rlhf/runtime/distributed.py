"""Running the pipeline under ``accelerate launch`` (or torchrun): one process per GPU.

Every process runs the same pipeline. TRL's trainers train on all of them, as the
accelerate config says (data parallel, FSDP or DeepSpeed ZeRO).

Sampling, scoring and evaluation outside the trainers (collecting comparisons, rejection
sampling and its temperature search, Ghost Attention dialogues, held-out evaluation) run on
every process too: each call of :func:`shard` cuts its items (prompts, dialogues, replies
to score) into chunks of ``shard_size``, every process works through its share of the
chunks (accelerate's ``split_between_processes``) and all of them receive every result in
item order (``gather_object``). The chunks depend on ``shard_size`` alone, never on the
number of processes, and sampling draws from a seed per prompt
(``llama2rlhf.runtime.seeding.item_seeds``): a chunk's batches, and so its samples and
scores to the last bit, are the same whichever process runs it, and one process gives what
eight give.

The main process alone writes the run directory (``state.json``, ``summary.json``,
``metrics.jsonl``, the base model, samples, comparisons, evaluations), runs the observer
hooks (loggers), and runs what is cheap or must happen once (annotators, which may ask
people for labels) in :func:`main_process_only` while the others wait and then receive what
it returned. Inside it, and inside a chunk of :func:`shard`, a nested :func:`shard` runs all
of its chunks on the calling process.

In a single process started without a launcher none of this does anything: no process
group is created and accelerate is not even imported.
"""

from __future__ import annotations

import logging
import os
import pickle
from contextlib import contextmanager
from typing import Any, Callable, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# set by setup(): the trainers run on the CPU (gloo), which accelerate must be told
_cpu = False
# > 0 while this process works alone (in main_process_only, or in one chunk of shard):
# a shard() called then is no collective call
_alone = 0


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
    return _on_main(fn, args, kwargs, share=True)


def on_main_process(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)`` run by the main process alone, whose result stays there (it
    need not pickle: a loaded model, say); the others get None. An error on the main
    process is raised on every process. Call it on every process."""
    return _on_main(fn, args, kwargs, share=False)


def _on_main(fn: Callable[..., T], args: tuple, kwargs: dict, share: bool) -> T | None:
    if not is_distributed():
        return fn(*args, **kwargs)
    error: BaseException | None = None
    result: Any = None
    payload = b""
    if is_main_process():
        try:
            with _whole_models(), _working_alone():
                result = fn(*args, **kwargs)
            payload = pickle.dumps(("value", result if share else None))
        except Exception as exc:
            error = exc
            payload = pickle.dumps(("error", _portable(exc)))
    kind, value = pickle.loads(from_main(payload))
    if kind == "error":
        if error is not None:
            raise error
        raise value
    return value if share else result


def shard(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T], size: int) -> list[R]:
    """``fn`` over ``items`` in chunks of ``size``, shared out among the processes; every
    process returns all the results, one per item, in item order.

    ``fn(chunk)`` returns one result per item of ``chunk``; results must pickle. Every
    process calls ``shard`` with the same items (a collective call), as every process runs
    the same stage code. Each process runs ``fn`` on a contiguous share of the chunks
    (``split_between_processes``), and the results are gathered everywhere
    (``gather_object``). The chunks depend on ``size`` alone, so ``fn`` sees the same
    chunks however many processes there are. An error in any chunk is raised on every
    process. In one process, inside :func:`main_process_only` and inside a chunk, every
    chunk runs here, one after another.
    """
    if size < 1:
        raise ValueError(f"shard_size must be >= 1, got {size}")
    items = list(items)
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    if not is_distributed() or _alone:
        with _working_alone():
            return [r for chunk in chunks for r in _results(fn, chunk)]
    from accelerate import PartialState
    from accelerate.utils import gather_object

    error: BaseException | None = None
    with PartialState().split_between_processes(list(range(len(chunks)))) as mine:
        try:
            with _working_alone():
                payload: tuple[str, Any] = ("value", [(i, _results(fn, chunks[i])) for i in mine])
        except Exception as exc:
            error = exc
            payload = ("error", _portable(exc))
    gathered = gather_object([payload])
    failed = [value for kind, value in gathered if kind == "error"]
    if failed:
        raise error if error is not None else failed[0]
    done = dict(pair for _, value in gathered for pair in value)
    return [r for i in range(len(chunks)) for r in done[i]]


def _results(fn: Callable[[list[T]], Sequence[R]], chunk: list[T]) -> list[R]:
    out = list(fn(chunk))
    if len(out) != len(chunk):
        raise RuntimeError(f"{getattr(fn, '__qualname__', fn)} returned {len(out)} results for {len(chunk)} items")
    return out


@contextmanager
def _working_alone():
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


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
