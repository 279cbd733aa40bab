"""One engine per process: what the engine of process ``r`` of ``N`` on a machine gets.

Under ``accelerate launch`` (or torchrun) every process samples its own share of the
prompts with its own engine. vLLM's engine core and workers run in processes of their own,
started with this process's environment, so the engine's place on the machine is set
through environment variables for the time the engine starts (:func:`engine_environment`):

* GPUs: ``CUDA_VISIBLE_DEVICES`` narrowed to the process's own ``tensor_parallel_size``
  devices (process ``r`` gets devices ``r*t .. r*t+t-1`` of those it could see), so that
  the engine of every process lands on its own GPUs; vLLM 0.32 has no engine option that
  picks a device.
* CPU: ``VLLM_CPU_OMP_THREADS_BIND``, the cores vLLM binds its compute threads to. Its
  default ("auto") binds every engine to the first NUMA node's cores, so engines on one
  machine would share them; here process ``r`` gets the ``r``-th of ``N`` equal slices of
  the cores this process may run on (split again by ``|`` among tensor-parallel workers).
  ``VLLM_CPU_KVCACHE_SPACE`` (GiB of key/value cache per engine): vLLM's default reserves
  ``gpu_memory_utilization`` of the machine's memory for each engine, which a second
  engine no longer finds free; here an eighth of the machine's memory is split among the
  ``N`` engines (at least 1 GiB each).
* ports: vLLM picks free ports itself, except from ``VLLM_PORT`` when it is set, where
  every process would start scanning at the same port; process ``r`` starts ``r *
  PORT_STRIDE`` above it.
* ``VLLM_WORKER_MULTIPROC_METHOD=spawn`` when there are several processes: a forked
  engine process would inherit the launcher's torch process group and take it for its own.

A variable the user has set is left as it is (but ``CUDA_VISIBLE_DEVICES``, which is
narrowed from what it lists, and ``VLLM_PORT``, which is offset).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Sequence

GiB = 2**30
PORT_STRIDE = 100
KV_CACHE_SHARE = 8  # an eighth of the machine's memory for the KV caches of its engines


@dataclass(frozen=True)
class LocalProcess:
    """This process's place among the launcher's processes on this machine."""

    rank: int = 0  # LOCAL_RANK
    count: int = 1  # LOCAL_WORLD_SIZE


def local_process(environ: Optional[Mapping[str, str]] = None) -> LocalProcess:
    """``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``, as accelerate launch and torchrun set them
    (one process when they are not set)."""
    env = os.environ if environ is None else environ
    rank = int(env.get("LOCAL_RANK") or 0)
    count = int(env.get("LOCAL_WORLD_SIZE") or 1)
    if not 0 <= rank < count:
        raise ValueError(f"LOCAL_RANK={rank} is not below LOCAL_WORLD_SIZE={count}")
    return LocalProcess(rank, count)


def ranges(ids: Sequence[int]) -> str:
    """Core ids as vLLM's lists take them: ``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    ids = sorted(ids)
    start = prev = ids[0]
    for i in ids[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(out)


def split(items: Sequence[int], parts: int) -> list[list[int]]:
    """``items`` in ``parts`` contiguous slices of equal length (the remainder unused)."""
    size = len(items) // parts
    return [list(items[k * size:(k + 1) * size]) for k in range(parts)]


def engine_environment(process: LocalProcess, tensor_parallel_size: int, environ: Mapping[str, str],
                       gpus: int, cpus: Sequence[int], memory_bytes: int,
                       kv_cache_set: bool = False) -> dict[str, str]:
    """The environment variables the engine of ``process`` starts with (only those that
    change): ``gpus`` is the number of CUDA devices this process sees (0: a CPU engine),
    ``cpus`` the cores it may run on, ``memory_bytes`` the machine's memory,
    ``kv_cache_set`` whether the engine's arguments size the KV cache themselves."""
    tp = int(tensor_parallel_size)
    n, r = process.count, process.rank
    out: dict[str, str] = {}
    if n > 1:
        if environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0":
            raise ValueError("sampler=vllm with several processes needs vLLM's engine in processes of its own: "
                             "unset VLLM_ENABLE_V1_MULTIPROCESSING (it is 0 here)")
        out["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
        if environ.get("VLLM_PORT"):
            out["VLLM_PORT"] = str(int(environ["VLLM_PORT"]) + r * PORT_STRIDE)
    if gpus > 0:
        if n > 1:
            visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
            visible = visible or [str(d) for d in range(gpus)]
            if n * tp > len(visible):
                raise ValueError(f"sampler=vllm: {n} processes with sampler.tensor_parallel_size={tp} need {n * tp} "
                                 f"GPUs, one engine per process; this machine has {len(visible)}")
            out["CUDA_VISIBLE_DEVICES"] = ",".join(visible[r * tp:(r + 1) * tp])
        return out
    if "VLLM_CPU_OMP_THREADS_BIND" not in environ and n > 1:
        if len(cpus) < n * tp:
            raise ValueError(f"sampler=vllm: {n} processes with sampler.tensor_parallel_size={tp} need at least "
                             f"{n * tp} CPU cores, one per engine worker; this process may use {len(cpus)}")
        mine = split(sorted(cpus), n)[r]
        out["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(ranges(part) for part in split(mine, tp))
    if "VLLM_CPU_KVCACHE_SPACE" not in environ and not kv_cache_set:
        out["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, memory_bytes // (KV_CACHE_SHARE * n * GiB)))
    return out


def this_machine() -> tuple[int, list[int], int]:
    """(CUDA devices this process sees, the cores it may run on, the machine's memory in bytes)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return gpus, cpus, memory


@contextlib.contextmanager
def environment(changes: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``changes`` while the engine starts (its processes copy it then),
    as it was afterwards."""
    if "CUDA_VISIBLE_DEVICES" in changes:
        import torch

        # this process keeps seeing every device: CUDA reads the variable once, at its start
        if torch.cuda.is_available():
            torch.cuda.init()
    before = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
