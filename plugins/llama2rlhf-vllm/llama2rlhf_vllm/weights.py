"""New weights into a running engine, through shared memory rather than a saved checkpoint.

The sampler side (:func:`pack`) copies the tensors into one file in a shared-memory folder
(``/dev/shm``: memory, not disk) and sends the engine only the file's name and its layout;
each of vLLM's workers (:class:`WeightReceiver`, mixed into vLLM's worker class through the
``worker_extension_cls`` engine argument) maps the file and hands the tensors, as views of
the mapping, to its ``reload_weights``. That is vLLM 0.32's own in-place reload: the
model's ``load_weights`` (checkpoint names, q/k/v and gate/up stacked, the shard of
each tensor-parallel rank taken) followed by the processing its kernels need. Tensors
sent through ``collective_rpc`` itself do not arrive as tensors when the engine runs in
its own process, and serialised weights would be copied through every process on the
way (this one, the engine core, each worker); the shared file is written once and mapped
by every worker.

This module is imported by vLLM's worker processes: it needs only torch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

ALIGN = 64
METHOD = "llama2rlhf_load_weights"
EXTENSION = "llama2rlhf_vllm.weights.WeightReceiver"
Layout = list[tuple[str, str, list[int], int]]  # (name, dtype, shape, byte offset)


def shared_memory_dir() -> str:
    """``/dev/shm`` where there is one; else the temporary folder."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def distinct(named: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The tensors once each: tied weights (an LM head that is the embedding) under their
    first name, which is the one models with tied weights load."""
    seen: set[tuple[str, int, tuple[int, ...]]] = set()
    out = []
    for name, tensor in named:
        key = (str(tensor.device), tensor.data_ptr(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out.append((name, tensor))
    return out


def pack(named: Iterable[tuple[str, Any]], folder: Optional[str] = None) -> tuple[Path, Layout]:
    """The tensors in one file of ``folder`` (:func:`shared_memory_dir`), each at an aligned
    offset; returns the file and its layout. The caller removes the file."""
    import torch

    tensors = distinct(named)
    layout: Layout = []
    offset = 0
    for name, t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"weight {name!r} is {type(t).__name__}, not a torch.Tensor")
        layout.append((name, str(t.dtype).removeprefix("torch."), list(t.shape), offset))
        offset += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    fd, path = tempfile.mkstemp(prefix="llama2rlhf-vllm-weights-", dir=folder or shared_memory_dir())
    try:
        os.ftruncate(fd, max(offset, 1))
        os.close(fd)
        buffer = torch.from_file(path, shared=True, size=max(offset, 1), dtype=torch.uint8)
        with torch.no_grad():
            for (_, dtype, shape, start), (_, t) in zip(layout, tensors, strict=True):
                view(buffer, dtype, shape, start).copy_(t.detach())
        del buffer
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    return Path(path), layout


def view(buffer: Any, dtype: str, shape: list[int], start: int) -> Any:
    """The tensor at ``start`` of a byte buffer."""
    import torch

    kind = getattr(torch, dtype)
    count = 1
    for d in shape:
        count *= d
    size = count * torch.empty((), dtype=kind).element_size()
    return buffer[start:start + size].view(kind).view(shape)


def unpack(path: str, layout: Layout) -> Iterable[tuple[str, Any]]:
    """The tensors of a :func:`pack` file, as views of its mapping."""
    import torch

    size = os.path.getsize(path)
    buffer = torch.from_file(path, shared=False, size=size, dtype=torch.uint8)
    for name, dtype, shape, start in layout:
        yield name, view(buffer, dtype, shape, start)


class WeightReceiver:
    """Mixed into vLLM's worker class (``worker_extension_cls``): ``collective_rpc(METHOD,
    args=(path, layout))`` reloads the model from a :func:`pack` file, in place."""

    def llama2rlhf_load_weights(self, path: str, layout: Layout) -> int:
        weights = list(unpack(path, layout))
        self.reload_weights(weights_iterator=iter(weights))  # type: ignore[attr-defined]
        return len(weights)
