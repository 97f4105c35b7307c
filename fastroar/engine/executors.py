"""Executors: where independent tasks run. Each maps a top-level function over argument tuples and yields
results as tasks finish (any order); the caller records them, so a task's result is written exactly once.

- ``local``: one after another in this process;
- ``ray``: one Ray task each, on a local Ray instance or the cluster at ``address``; tasks are retried
  by Ray when a worker dies (and on OSError, e.g. a shared-storage hiccup).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from tqdm.auto import tqdm

from fastroar.errors import ConfigError, FastroarError


@dataclass
class LocalExecutor:
    """Tasks on this machine: in this process (workers=1), or in `workers` spawned processes, worker i
    pinned to local GPU i mod #GPUs (one process per GPU by default when there are several)."""

    workers: int = 1
    name = "local"

    def map(self, fn: Callable, items: Sequence[tuple], progress: bool = True, desc: str = "") -> Iterator[Any]:
        if self.workers <= 1 or len(items) <= 1:
            for args in tqdm(items, desc=desc, disable=not progress, unit="task"):
                yield fn(*args)
            return
        import concurrent.futures as cf
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # fork after torch/OpenMP threads started is unsafe
        slots = ctx.Queue()
        for i in range(self.workers):
            slots.put(i)
        with cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_pin_worker,
                                    initargs=(slots,)) as pool:
            futures = [pool.submit(fn, *args) for args in items]
            try:
                for fut in tqdm(cf.as_completed(futures), total=len(futures), desc=desc, disable=not progress,
                                unit="task"):
                    yield fut.result()
            finally:  # on an error or Ctrl-C: drop what has not started; finished results were yielded
                for fut in futures:
                    fut.cancel()


def _pin_worker(slots) -> None:
    """Worker initializer: take a slot number and make GPU (slot mod #GPUs) this process's default device."""
    import torch

    slot = slots.get()
    torch.set_num_threads(1)
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        torch.cuda.set_device(slot % torch.cuda.device_count())


def default_workers() -> int:
    """One worker per local GPU when there are several, else work in this process."""
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:
        return 1


@dataclass
class RayExecutor:
    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0          # per task; fractional values pack small models onto one GPU
    max_retries: int = 3
    name = "ray"

    def connect(self) -> None:
        import ray

        if self.address and self.address != "auto":
            check_reachable(self.address)
        if ray.is_initialized():
            return
        # Without an address Ray starts a private instance; keep it on the loopback interface.
        local = {} if self.address else {"_node_ip_address": "127.0.0.1"}
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True, configure_logging=False, **local)
        except Exception as e:  # ray raises ConnectionError, RuntimeError or TimeoutError by version
            where = f"at {self.address}" if self.address else "locally"
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FastroarError(f"could not start or reach a Ray cluster {where}: {first}. Start one with "
                                "`ray start --head` and pass its address, or use --executor local") from None

    def map(self, fn: Callable, items: Sequence[tuple], progress: bool = True, desc: str = "") -> Iterator[Any]:
        import ray

        self.connect()
        remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries,
                            retry_exceptions=[OSError])(fn)
        pending = [remote.remote(*args) for args in items]
        with tqdm(total=len(pending), desc=desc, disable=not progress, unit="task") as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                bar.update(1)
                yield ray.get(done[0])


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fails fast (ray.init itself waits minutes) when nothing answers at host:port."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r} must look like HOST:PORT (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise FastroarError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                            "`ray start --head --port PORT` and pass HOST:PORT, or use --executor local") from None


def get_executor(name: str, address: str | None = None, num_gpus: float = 0.0, num_cpus: float = 1.0,
                 workers: int | None = None):
    if name == "local":
        if address:
            raise ConfigError("--address only applies to --executor ray")
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        return LocalExecutor(workers=workers or default_workers())
    if name == "ray":
        if num_gpus < 0 or num_cpus <= 0:
            raise ConfigError(f"resources per task must be positive (got cpus={num_cpus}, gpus={num_gpus})")
        return RayExecutor(address=address, num_gpus=num_gpus, num_cpus=num_cpus)
    raise ConfigError(f"unknown executor {name!r}; choose local or ray")
