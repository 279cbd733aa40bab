"""One engine per process (``llama2rlhf_vllm.parallel``): the environment the engine of
local process ``r`` of ``N`` starts with, on GPUs and on the CPU, without vLLM."""

from __future__ import annotations

import os

import pytest

from llama2rlhf_vllm.parallel import GiB, LocalProcess, engine_environment, environment, local_process, ranges

CPUS = list(range(16))


def env_for(rank, count, tp=1, environ=None, gpus=0, cpus=CPUS, memory=64 * GiB, **kw):
    return engine_environment(LocalProcess(rank, count), tp, environ or {}, gpus, cpus, memory, **kw)


def test_the_local_process_comes_from_the_launchers_variables():
    assert local_process({}) == LocalProcess(0, 1)  # no launcher: one process
    assert local_process({"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4", "RANK": "11"}) == LocalProcess(3, 4)
    with pytest.raises(ValueError, match="LOCAL_RANK=4 is not below LOCAL_WORLD_SIZE=4"):
        local_process({"LOCAL_RANK": "4", "LOCAL_WORLD_SIZE": "4"})


def test_gpu_processes_each_get_their_own_devices():
    assert [env_for(r, 4, gpus=4)["CUDA_VISIBLE_DEVICES"] for r in range(4)] == ["0", "1", "2", "3"]
    # tensor parallel: process r spans devices r*t .. r*t+t-1
    assert [env_for(r, 2, tp=4, gpus=8)["CUDA_VISIBLE_DEVICES"] for r in range(2)] == ["0,1,2,3", "4,5,6,7"]
    # narrowed from the devices the launcher left visible, not renumbered
    visible = {"CUDA_VISIBLE_DEVICES": "2, 5,6,7"}
    assert [env_for(r, 2, tp=2, environ=visible, gpus=4)["CUDA_VISIBLE_DEVICES"] for r in range(2)] == ["2,5", "6,7"]
    # nothing about CPU threads or the CPU's cache on a GPU engine
    assert env_for(1, 2, gpus=2) == {"VLLM_WORKER_MULTIPROC_METHOD": "spawn", "CUDA_VISIBLE_DEVICES": "1"}


def test_one_process_keeps_its_gpus_as_they_are():
    assert env_for(0, 1, tp=2, gpus=8) == {}


def test_too_few_gpus_for_one_engine_per_process_is_named():
    with pytest.raises(ValueError, match=r"4 processes with sampler.tensor_parallel_size=2 need 8 GPUs, one "
                                         r"engine per process; this machine has 4"):
        env_for(0, 4, tp=2, gpus=4)


def test_cpu_processes_each_bind_their_own_cores():
    binds = [env_for(r, 4)["VLLM_CPU_OMP_THREADS_BIND"] for r in range(4)]
    assert binds == ["0-3", "4-7", "8-11", "12-15"]
    # tensor parallel: the process's cores split among its workers, as vLLM reads "a|b"
    assert [env_for(r, 2, tp=2)["VLLM_CPU_OMP_THREADS_BIND"] for r in range(2)] == ["0-3|4-7", "8-11|12-15"]
    # the cores this process may use (its affinity), an odd one left over
    assert [env_for(r, 2, cpus=[1, 2, 3, 9, 10])["VLLM_CPU_OMP_THREADS_BIND"] for r in range(2)] == ["1-2", "3,9"]
    # the 2-core case: one core each
    assert [env_for(r, 2, cpus=[0, 1])["VLLM_CPU_OMP_THREADS_BIND"] for r in range(2)] == ["0", "1"]


def test_one_cpu_process_leaves_the_binding_to_vllm():
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env_for(0, 1)


def test_the_cpu_kv_cache_is_an_eighth_of_memory_split_among_the_engines():
    assert env_for(0, 1, memory=64 * GiB)["VLLM_CPU_KVCACHE_SPACE"] == "8"
    assert env_for(1, 4, memory=64 * GiB)["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env_for(0, 2, cpus=[0, 1], memory=23 * GiB)["VLLM_CPU_KVCACHE_SPACE"] == "1"  # at least 1 GiB
    # sized by the engine's own arguments: left to them (the variable would override them)
    assert "VLLM_CPU_KVCACHE_SPACE" not in env_for(0, 2, kv_cache_set=True)


def test_what_the_user_set_is_kept():
    environ = {"VLLM_CPU_OMP_THREADS_BIND": "0-7|8-15", "VLLM_CPU_KVCACHE_SPACE": "40"}
    assert env_for(1, 2, environ=environ) == {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}


def test_a_fixed_vllm_port_is_offset_per_process():
    assert env_for(0, 2, environ={"VLLM_PORT": "29600"})["VLLM_PORT"] == "29600"
    assert env_for(1, 2, environ={"VLLM_PORT": "29600"})["VLLM_PORT"] == "29700"
    assert "VLLM_PORT" not in env_for(1, 2)  # vLLM asks the system for free ports


def test_too_few_cores_and_in_process_engines_are_named():
    with pytest.raises(ValueError, match=r"2 processes with sampler.tensor_parallel_size=2 need at least 4 CPU "
                                         r"cores, one per engine worker; this process may use 3"):
        env_for(0, 2, tp=2, cpus=[0, 1, 2])
    with pytest.raises(ValueError, match="needs vLLM's engine in processes of its own: unset "
                                         "VLLM_ENABLE_V1_MULTIPROCESSING"):
        env_for(0, 2, environ={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})


def test_ranges():
    assert ranges([5, 0, 1, 2]) == "0-2,5"
    assert ranges([3]) == "3"
    assert ranges([1, 3, 4, 6]) == "1,3-4,6"


def test_the_environment_is_set_while_the_engine_starts_and_put_back(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "5")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    with environment({"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "2-3"}):
        assert (os.environ["VLLM_CPU_KVCACHE_SPACE"], os.environ["VLLM_CPU_OMP_THREADS_BIND"]) == ("1", "2-3")
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "5" and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ
    with pytest.raises(RuntimeError), environment({"VLLM_CPU_OMP_THREADS_BIND": "0"}):
        raise RuntimeError("the engine failed to start")
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ
