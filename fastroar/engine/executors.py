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
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tqdm.auto import tqdm

from fastroar.cpu import pinned_environment
from fastroar.engine import cancel
from fastroar.errors import ConfigError, FastroarError


@dataclass
class LocalExecutor:
    """Tasks on this machine: in this process (workers=1), or in `workers` spawned processes, worker i
    pinned to local GPU i mod #GPUs (one process per GPU by default when there are several).

    In this process, tasks the caller marks ``threadsafe`` run on `threads` threads (default: one per
    usable CPU core). They are for CPU tasks that hold the GIL little (torch and Numba kernels release
    it), run torch on their own thread (the stages pin torch to one intra-op thread, so a task's ops run
    where it runs and its numbers do not depend on the others) and touch no process-wide state but under
    a lock (fastroar.models.build_seeded)."""

    workers: int = 1
    threads: int | None = None
    name = "local"

    def map(self, fn: Callable, items: Sequence[tuple], progress: bool = True, desc: str = "",
            threadsafe: bool = False) -> Iterator[Any]:
        threads = self.threads_for(len(items), threadsafe)
        if threads > 1:
            yield from _map_threads(fn, items, threads, progress, desc)
            return
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
                                    initargs=(slots, os.getpid())) as pool:
            futures = [pool.submit(fn, *args) for args in items]
            yield from _as_completed(futures, progress, desc)

    def threads_for(self, tasks: int, threadsafe: bool) -> int:
        """How many threads map() runs `tasks` tasks on (1: one after another, or in worker processes)."""
        if not threadsafe or self.workers > 1:
            return 1
        return max(1, min(self.threads or usable_cores(), tasks))


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

    def map(self, fn: Callable, items: Sequence[tuple], progress: bool = True, desc: str = "",
            threadsafe: bool = False) -> Iterator[Any]:
        """One Ray task per item (`threadsafe` is for the local executor; Ray places tasks itself)."""
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


def check_reachable(address: str, timeout: float = 5.0, named_by: str | None = None) -> None:
    """Fails fast (ray.init itself waits minutes) when nothing answers at host:port. `named_by`: where the
    address came from when the user did not pass it (RAY_ADDRESS, Ray's ray_current_cluster file)."""
    import socket

    host, port = split_address(address)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        if named_by is not None:
            raise FastroarError(f"no Ray cluster answers at {address} ({e.strerror or e}), the address {named_by} "
                                "names, which Ray connects to when no --address is given (it would retry it "
                                "forever); clear it (`ray stop`, or delete the file / unset the variable) to "
                                "start a private Ray here, pass --address of a running cluster, or use "
                                "--executor local") from None
        raise FastroarError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                            "`ray start --head --port PORT` and pass HOST:PORT, or use --executor local") from None


def check_implicit_address() -> None:
    """Without --address, ray.init connects to $RAY_ADDRESS, else to the cluster named in Ray's
    <temp dir>/ray/ray_current_cluster (written by the last `ray start`, left behind when that cluster
    died), and retries a dead one about every 40 s, forever. Checks that address first, naming its source."""
    env = os.environ.get("RAY_ADDRESS", "")
    if env and env not in ("auto", "local"):
        if "://" not in env:
            check_reachable(env, named_by="$RAY_ADDRESS")
        return
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:  # another Ray layout: ray.init's own lookup and messages
        return
    path = Path(get_ray_address_file(None))
    try:
        address = path.read_text().strip()
    except OSError:  # none: a private Ray starts here
        return
    if address:
        check_reachable(address, named_by=f"Ray's file {path}")


def split_address(address: str) -> tuple[str, str]:
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r} must look like HOST:PORT (e.g. 127.0.0.1:6379)")
    return host.strip("[]"), port


# Ray token authentication (Ray >= 2.52): the mode comes from RAY_AUTH_MODE (token | disabled), the token from
# RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. `ray start --head` turns token mode
# on by itself when a token exists, but `ray.init(address=...)` does not: a driver must set RAY_AUTH_MODE.
AUTH_MODE, AUTH_TOKEN, AUTH_TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def use_auth_token(token_file: str | None = None) -> None:
    """Sets Ray's environment so that this process sends the cluster's token, as `ray start --head` would:
    `token_file` if given, else RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token when present (an
    explicit RAY_AUTH_MODE is respected)."""
    env = os.environ
    if token_file:
        _check_token_file(token_file, "--ray-auth-token-file")
        env[AUTH_TOKEN_PATH] = str(Path(token_file).expanduser().resolve())
        env.pop(AUTH_TOKEN, None)  # it would take precedence over the file
        env[AUTH_MODE] = "token"
    elif env.get(AUTH_TOKEN_PATH):
        _check_token_file(env[AUTH_TOKEN_PATH], AUTH_TOKEN_PATH)  # Ray aborts the process on a bad file
    if AUTH_MODE not in env and token_source() is not None:
        env[AUTH_MODE] = "token"
    try:  # Ray caches its config and token: make an already imported Ray see the new environment
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:
        pass


def token_source() -> str | None:
    """Where Ray takes the token from in this environment, or None when there is none."""
    if os.environ.get(AUTH_TOKEN):
        return f"${AUTH_TOKEN}"
    if os.environ.get(AUTH_TOKEN_PATH):
        return os.environ[AUTH_TOKEN_PATH]
    path = default_token_path()
    return str(path) if path.is_file() and path.stat().st_size > 0 else None


def _check_token_file(path: str, what: str) -> None:
    p = Path(path).expanduser()
    try:
        ok = bool(p.read_text().strip())
    except OSError as e:
        raise ConfigError(f"{what}: cannot read the Ray token file {path} ({e.strerror or e})") from None
    if not ok:
        raise ConfigError(f"{what}: the Ray token file {path} is empty")


def probe_cluster(address: str, timeout: float = 15.0) -> bool:
    """Asks the cluster's GCS at host:port who it is, with our credentials, before ray.init (which retries for
    a long time on a refused token and says only "failed to connect"). Raises the FastroarError that names the
    problem: refused credentials, version mismatch, or no Ray at that port. Returns whether the cluster's nodes
    run on the loopback interface (a head started with --node-ip-address=127.0.0.1)."""
    import threading

    outcome: dict[str, Any] = {}

    def ask() -> None:
        try:
            from ray._common.usage import usage_lib
            from ray._raylet import GcsClient

            client = GcsClient(address=address)
            outcome["metadata"] = usage_lib.get_cluster_metadata(client)
            nodes = client.get_all_node_info(timeout=timeout).values()
            outcome["ips"] = {n.node_manager_address for n in nodes if n.state == 0}  # 0: ALIVE
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    thread = threading.Thread(target=ask, daemon=True)  # the GCS client can block ~40 s on a non-Ray port
    thread.start()
    thread.join(timeout)
    error = outcome.get("error")
    if error is not None:
        raise classify_ray_error(error, address) or FastroarError(
            f"no Ray cluster answers at {address} ({_first_line(error)}); is it the port given to "
            "`ray start --head --port`? Or use --executor local") from None
    if "metadata" not in outcome:
        raise FastroarError(f"no Ray cluster answers at {address} (no reply in {timeout:.0f} s); is it the port "
                            "given to `ray start --head --port`? Or use --executor local")
    check_versions(outcome["metadata"], address)
    return "127.0.0.1" in outcome.get("ips", ())


def check_versions(metadata: dict, address: str) -> None:
    """Ray's own check (same Ray, same Python down to the patch level unless
    RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor), as one line that says which side has what."""
    import platform

    import ray
    from ray._private.utils import check_version_info

    try:
        check_version_info(metadata, "this driver")
    except RuntimeError as e:
        if "Version mismatch" not in str(e):
            raise
        raise FastroarError(version_mismatch_message(
            address, metadata.get("ray_version"), metadata.get("python_version"),
            ray.__version__, platform.python_version())) from None


def version_mismatch_message(address: str, ray_cluster, python_cluster, ray_here, python_here) -> str:
    return (f"Ray version mismatch with the cluster at {address}: it runs Ray {ray_cluster} on Python "
            f"{python_cluster}, this driver Ray {ray_here} on Python {python_here}; run fastroar from an "
            "environment with the cluster's Ray and Python versions (or restart the cluster from this one)")


def classify_ray_error(error: BaseException, address: str, token_file: str | None = None) -> FastroarError | None:
    """The FastroarError for a Ray connection failure we can name (refused token, version mismatch), looking
    through the chain of causes (ray.init wraps them in "Failed to connect to Ray cluster"); else None."""
    import re

    texts, seen = [], error
    while seen is not None and len(texts) < 10:
        texts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    text = "\n".join(texts)
    if "AuthenticationError" in text or "InvalidAuthToken" in text or "Unauthenticated" in text:
        source = token_file or token_source()
        mode = os.environ.get(AUTH_MODE, "")
        sent = (f"{AUTH_MODE}={mode}: no token was sent" if mode.lower() == "disabled"
                else f"the token from {source} was rejected" if source else "no token was found here")
        return FastroarError(
            f"the Ray cluster at {address} refused our credentials ({sent}); pass the token its nodes were "
            f"started with (`ray get-auth-token` on the head prints it; default file ~/.ray/auth_token) with "
            f"--ray-auth-token-file FILE or {AUTH_TOKEN_PATH}=FILE, or set {AUTH_TOKEN}")
    if "Version mismatch" in text:
        found = dict(re.findall(r"(Ray|Python): (\S+)", text)[:2])
        here = dict(re.findall(r"(Ray|Python): (\S+)", text)[2:4])
        return FastroarError(version_mismatch_message(address, found.get("Ray"), found.get("Python"),
                                                      here.get("Ray"), here.get("Python")))
    return None


def keep_loopback() -> None:
    """Ray rewrites 127.0.0.1/localhost in an address to this machine's network IP, where a head started on
    the loopback interface (--node-ip-address=127.0.0.1) does not listen; Ray keeps loopback addresses
    only where it does not expect other machines (its switch for single-machine platforms)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # read when needed, but set when Ray was imported
    except Exception:
        pass


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def get_executor(name: str, address: str | None = None, num_gpus: float = 0.0, num_cpus: float = 1.0,
                 workers: int | None = None, auth_token_file: str | None = None, threads: int | None = None):
    if name == "local":
        if address or auth_token_file:
            raise ConfigError("--address and --ray-auth-token-file only apply to --executor ray")
        for flag, value in (("--workers", workers), ("--threads", threads)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        return LocalExecutor(workers=workers or default_workers(), threads=threads)
    if threads is not None:
        raise ConfigError("--threads only applies to --executor local")
    if name == "ray":
        if num_gpus < 0 or num_cpus <= 0:
            raise ConfigError(f"resources per task must be positive (got cpus={num_cpus}, gpus={num_gpus})")
        return RayExecutor(address=address, num_gpus=num_gpus, num_cpus=num_cpus, auth_token_file=auth_token_file)
    raise ConfigError(f"unknown executor {name!r}; choose local or ray")
