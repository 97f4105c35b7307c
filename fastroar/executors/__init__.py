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
    name = "local"

    def map(self, fn: Callable, items: Sequence[tuple], progress: bool = True, desc: str = "") -> Iterator[Any]:
        for args in tqdm(items, desc=desc, disable=not progress, unit="task"):
            yield fn(*args)


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


def get_executor(name: str, address: str | None = None, num_gpus: float = 0.0, num_cpus: float = 1.0):
    if name == "local":
        if address:
            raise ConfigError("--address only applies to --executor ray")
        return LocalExecutor()
    if name == "ray":
        if num_gpus < 0 or num_cpus <= 0:
            raise ConfigError(f"resources per task must be positive (got cpus={num_cpus}, gpus={num_gpus})")
        return RayExecutor(address=address, num_gpus=num_gpus, num_cpus=num_cpus)
    raise ConfigError(f"unknown executor {name!r}; choose local or ray")
