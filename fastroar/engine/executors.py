"""Executors: where independent tasks run. Each maps a top-level function over argument tuples and yields
results as tasks finish (any order); the caller records them, so a task's result is written exactly once.

- ``local``: one after another in this process; or, for tasks that may share the process (the caller says
  so: ``map(..., threadsafe=True)``), on one thread per usable CPU core; or in worker processes;
- ``ray``: one Ray task each, on a local Ray instance or the cluster at ``address``; tasks are retried
  by Ray when a worker dies (and on OSError, e.g. a shared-storage hiccup).

``TaskQueue`` is the local threads without a fixed list: tasks start by priority and may be added while
results are read (``fastroar run`` overlaps its stages with it).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from tqdm.auto import tqdm

from fastroar.cpu import pinned_environment
from fastroar.engine import cancel
from fastroar.engine.ray_connect import (
    check_implicit_address,
    check_reachable,
    classify_ray_error,
    keep_loopback,
    probe_cluster,
    use_auth_token,
)
from fastroar.errors import ConfigError, FastroarError


@dataclass
class LocalExecutor:
    """Tasks on this machine: in this process (workers=1), or in `workers` spawned processes, worker i
    pinned to local GPU i mod #GPUs. By default: one process per GPU when there are several; on the CPU,
    tasks that may not share the process get as many processes as the caller's `cpu_workers` (retrain's
    conv jobs: one per usable core, as memory allows), where they used to run one after another on one core.

    In this process, tasks the caller marks ``threadsafe`` run on `threads` threads (default: one per
    usable CPU core). They are for CPU tasks that hold the GIL little (torch and Numba kernels release
    it), run torch on their own thread (the stages pin torch to one intra-op thread, so a task's ops run
    where it runs and its numbers do not depend on the others) and touch no process-wide state but under
    a lock (fastroar.models.build_seeded)."""

    workers: int | None = None     # None: one per GPU when there are several, else the caller's cpu_workers
    threads: int | None = None
    name = "local"

    def map(self, fn: Callable, items: Sequence[tuple], progress: bool = True, desc: str = "",
            threadsafe: bool = False, cpu_workers: int = 1) -> Iterator[Any]:
        """fn(*args) for each args of `items`, as they finish. `cpu_workers`: how many worker processes the
        caller's CPU tasks that cannot share the process may use when --workers is not given (one per
        usable core, as memory allows: the caller knows what a task holds)."""
        threads = self.threads_for(len(items), threadsafe)
        if threads > 1:
            yield from _map_threads(fn, items, threads, progress, desc)
            return
        workers = self.workers_for(len(items), threadsafe, cpu_workers)
        if workers <= 1:
            for args in tqdm(items, desc=desc, disable=not progress, unit="task"):
                yield fn(*args)
            return
        import concurrent.futures as cf
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # fork after torch/OpenMP threads started is unsafe
        slots = ctx.Queue()
        for i in range(workers):
            slots.put(i)
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pin_worker,
                                    initargs=(slots, os.getpid())) as pool:
            futures = [pool.submit(fn, *args) for args in items]
            yield from _as_completed(futures, progress, desc)

    def threads_for(self, tasks: int, threadsafe: bool) -> int:
        """How many threads map() runs `tasks` tasks on (1: one after another, or in worker processes)."""
        if not threadsafe or (self.workers or 1) > 1:
            return 1
        return max(1, min(self.threads or usable_cores(), tasks))

    def workers_for(self, tasks: int, threadsafe: bool, cpu_workers: int = 1) -> int:
        """How many worker processes map() runs `tasks` tasks in (1: in this process): --workers when given;
        else one per GPU when there are several, or `cpu_workers` for tasks that may not share the process
        (each worker runs torch on one thread, so its numbers are those of the task run here)."""
        if self.threads_for(tasks, threadsafe) > 1:
            return 1
        workers = self.workers if self.workers is not None else max(default_workers(), 1 if threadsafe else cpu_workers)
        return max(1, min(workers, tasks))


def _thread_pool(threads: int):
    """A pool of `threads` task threads, each running torch on as many intra-op threads as the caller."""
    import concurrent.futures as cf

    torch = sys.modules.get("torch")  # pin only where torch is in use (a torch-free map imports no torch)
    pin = (torch.get_num_threads(),) if torch is not None else ()
    return cf.ThreadPoolExecutor(threads, thread_name_prefix="fastroar-task", initializer=_same_torch_threads,
                                 initargs=pin)


def _map_threads(fn: Callable, items: Sequence[tuple], threads: int, progress: bool, desc: str) -> Iterator[Any]:
    """A TaskQueue of the items in order: on an error or Ctrl-C the tasks not started are dropped and the
    running ones stop at their next step, unrecorded, before the caller goes on (so nothing writes after the
    stage has released its lock)."""
    with TaskQueue(threads) as queue:
        for i, args in enumerate(items):
            queue.add(0, i, fn, *args)   # one priority: they start in order
        for _, result in tqdm(queue.results(), total=len(items), desc=desc, disable=not progress, unit="task"):
            yield result


def _same_torch_threads(n: int | None = None) -> None:
    """Thread initializer: this thread's torch ops on n intra-op threads, as the caller's. A new thread's
    first torch op otherwise starts OpenMP at its default (every core): tasks on several threads would then
    each run their ops on all cores, oversubscribing them."""
    if n is not None:
        sys.modules["torch"].set_num_threads(n)


class TaskQueue:
    """Tasks on `threads` threads of this process, started by priority as threads free up; tasks may be added
    while results are read, so a finished task can release the work that waited for it (``fastroar run``
    starts a base model's precompute as soon as that model is trained). For work that may share the process
    (see LocalExecutor).

    ``results()`` yields (tag, result) in the order tasks finish, until none is queued or running. On an error
    (a task's, re-raised there) or Ctrl-C, closing the queue drops the tasks not started, stops the running
    ones at their next step (fastroar.engine.cancel) and waits for them, unrecorded (as ``map``), so nothing
    writes after the caller has released its locks.
    """

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._pool = _thread_pool(self.threads)
        self._stop = threading.Event()
        self._queued: list[tuple] = []        # heap of (priority, sequence number, tag, fn, args)
        self._running: dict[Any, Any] = {}    # future -> tag
        self._count = 0

    def add(self, priority: Any, tag: Any, fn: Callable, *args: Any) -> None:
        """Queues fn(*args); among queued tasks the lowest priority starts first (ties: first added)."""
        import heapq

        heapq.heappush(self._queued, (priority, self._count, tag, fn, args))
        self._count += 1

    def results(self) -> Iterator[tuple[Any, Any]]:
        import concurrent.futures as cf
        import heapq

        while self._queued or self._running:
            while self._queued and len(self._running) < self.threads:
                _, _, tag, fn, args = heapq.heappop(self._queued)
                self._running[cancel.submit(self._pool, self._stop, fn, *args)] = tag
            finished, _ = cf.wait(list(self._running), return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                yield self._running.pop(fut), fut.result()

    def drain(self) -> Iterator[tuple[Any, Any]]:
        """After an interruption: drops the queued tasks, stops the running ones at their next step, and
        yields (tag, result) of those that had finished all the same (one that fails or was stopped is
        skipped: the interruption is what the caller reports), so that the caller can keep what they made."""
        import concurrent.futures as cf

        self._queued.clear()
        self._stop.set()
        for fut in cf.as_completed(list(self._running)):
            tag = self._running.pop(fut)
            if not fut.cancelled() and fut.exception() is None:
                yield tag, fut.result()

    def close(self) -> None:
        self._queued.clear()
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "TaskQueue":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def thread_map(fn: Callable, items: Sequence[Any], threads: int) -> Iterator[Any]:
    """fn(item) for each item, on `threads` threads (in order of finishing; in order when threads <= 1).
    For work that may share the process (see LocalExecutor)."""
    if threads <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    yield from _map_threads(fn, [(item,) for item in items], threads, False, "")


def _as_completed(futures: list, progress: bool, desc: str) -> Iterator[Any]:
    """Results in the order tasks finish; on an error or Ctrl-C, drops what has not started (finished results
    were yielded, and so recorded by the caller)."""
    import concurrent.futures as cf

    try:
        for fut in tqdm(cf.as_completed(futures), total=len(futures), desc=desc, disable=not progress, unit="task"):
            yield fut.result()
    finally:
        for fut in futures:
            fut.cancel()


def available_memory() -> int | None:
    """Bytes of memory the kernel says new work may take without swapping (Linux's MemAvailable), or None
    where /proc/meminfo is not there."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _pin_worker(slots, parent: int | None = None) -> None:
    """Worker initializer: take a slot number and make GPU (slot mod #GPUs) this process's default device;
    and leave when the parent process `parent` dies (_exit_with_parent)."""
    import torch

    if parent is not None:
        _exit_with_parent(parent)
    slot = slots.get()
    torch.set_num_threads(1)
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        torch.cuda.set_device(slot % torch.cuda.device_count())


PARENT_POLL_S = 0.5


def _exit_with_parent(parent: int) -> None:
    """Ends this worker process when `parent` is no longer its parent (killed, even by SIGKILL, which
    leaves no chance to stop the pool): a daemon thread polls os.getppid(). Without it, the workers of a
    killed `fastroar retrain --workers N` trained on, orphaned, and kept the resource tracker alive. (Linux's
    PR_SET_PDEATHSIG fires when the parent's spawning *thread* ends, which a pool started from a task
    thread would trip; polling has no such catch.)"""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before this worker got here
        os._exit(1)
    threading.Thread(target=watch, name="fastroar-parent-watch", daemon=True).start()


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
    auth_token_file: str | None = None  # the cluster's token (Ray token authentication); else Ray's own lookup
    name = "ray"

    def connect(self) -> None:
        """Connects to the cluster at `address` (else starts a private Ray here). Before ray.init, which
        retries for minutes and then says only "failed to connect", it checks that something answers at the
        address and asks the cluster who it is with our token, so each failure gets its own message."""
        import ray

        remote_cluster = bool(self.address) and self.address != "auto"
        if remote_cluster:
            check_reachable(self.address)
        if ray.is_initialized():
            return
        if not remote_cluster:
            check_implicit_address()
        use_auth_token(self.auth_token_file)
        local = {} if self.address else {"_node_ip_address": "127.0.0.1"}  # a private instance: loopback only
        if remote_cluster and "://" not in self.address:  # ray:// (Ray Client) has no GCS port to ask
            if probe_cluster(self.address):
                keep_loopback()
        try:
            # workers import fastroar (which pins the kernels) before torch when they unpickle a task; the
            # runtime environment pins them from the start as well, whatever a worker imports first
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True, configure_logging=False,
                     runtime_env={"env_vars": pinned_environment()}, **local)
        except Exception as e:  # ray raises ConnectionError, RuntimeError or TimeoutError by version
            known = classify_ray_error(e, self.address or "", self.auth_token_file)
            if known is not None:
                raise known from None
            where = f"at {self.address}" if self.address else "locally"
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FastroarError(f"could not start or reach a Ray cluster {where}: {first}. Start one with "
                                "`ray start --head` and pass its address, or use --executor local") from None

    def threads_for(self, tasks: int, threadsafe: bool) -> int:
        """Threads of this process that map() uses: none beyond this one (Ray places tasks itself)."""
        return 1

    def workers_for(self, tasks: int, threadsafe: bool, cpu_workers: int = 1) -> int:
        """Local worker processes map() uses: none (Ray places tasks itself)."""
        return 1

    def map(self, fn: Callable, items: Sequence[tuple], progress: bool = True, desc: str = "",
            threadsafe: bool = False, cpu_workers: int = 1) -> Iterator[Any]:
        """One Ray task per item (`threadsafe` and `cpu_workers` are for the local executor; Ray places
        tasks itself)."""
        import ray

        self.connect()
        remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries,
                            retry_exceptions=[OSError])(_ray_task).options(name=getattr(fn, "__name__", "task"))
        delay = float(os.environ.get(TASK_DELAY_ENV, 0) or 0)
        pending = [remote.remote(fn, delay, *args) for args in items]
        with tqdm(total=len(pending), desc=desc, disable=not progress, unit="task") as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                bar.update(1)
                yield ray.get(done[0])


# Test hook: a retry test sets this (seconds) in the driver's environment so that each Ray task sleeps
# before its work, leaving time to kill its worker mid-task. Unset: no delay.
TASK_DELAY_ENV = "FASTROAR_TEST_TASK_DELAY"


def _ray_task(fn: Callable, delay: float, *args: Any) -> Any:
    if delay > 0:
        time.sleep(delay)
    return fn(*args)


def get_executor(name: str, address: str | None = None, num_gpus: float = 0.0, num_cpus: float = 1.0,
                 workers: int | None = None, auth_token_file: str | None = None, threads: int | None = None):
    if name == "local":
        if address or auth_token_file:
            raise ConfigError("--address and --ray-auth-token-file only apply to --executor ray")
        for flag, value in (("--workers", workers), ("--threads", threads)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        return LocalExecutor(workers=workers, threads=threads)
    if threads is not None:
        raise ConfigError("--threads only applies to --executor local")
    if name == "ray":
        if num_gpus < 0 or num_cpus <= 0:
            raise ConfigError(f"resources per task must be positive (got cpus={num_cpus}, gpus={num_gpus})")
        return RayExecutor(address=address, num_gpus=num_gpus, num_cpus=num_cpus, auth_token_file=auth_token_file)
    raise ConfigError(f"unknown executor {name!r}; choose local or ray")
