"""The local executor with worker processes (one per GPU on a multi-GPU machine; --workers N here):
the same store and the same result records as in-process execution; and tasks on threads in this process
(the default for stacked MLP groups on the CPU): the same records as one task at a time."""
from __future__ import annotations

import shutil

import numpy as np
from click.testing import CliRunner

from fastroar.cli import cli
from fastroar.engine.results import read_results
from tests.conftest import tiny_args
from tests.test_resume import fresh_copy, store_arrays


def invoke(*args):
    return CliRunner().invoke(cli, [*args, "--no-progress", *tiny_args()])


def runs_like_in_process(ref, wd, executor_args: list[str], model: str, attribution: str, k: str):
    """precompute then retrain (one entry, level k) on a fresh copy of ref with `executor_args`; asserts the
    store equals ref's array by array and every record's accuracy equals ref's for the same job key.
    Returns the two commands' outputs."""
    subset = ["--model", model, "--attribution", attribution]
    pre = invoke("precompute", "--workdir", str(wd), *executor_args, *subset)
    assert pre.exit_code == 0, pre.output
    entry = f"{model}/{attribution}"
    got, want = store_arrays(wd, entry), store_arrays(ref, entry)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    post = invoke("retrain", "--workdir", str(wd), *executor_args, "--k", k, *subset)
    assert post.exit_code == 0, post.output
    records = read_results(wd / "results" / "results.jsonl")
    reference = read_results(ref / "results" / "results.jsonl")
    assert len(records) == 4  # one level x 2 directions x 2 seeds, each once
    for key, rec in records.items():
        assert rec["accuracy"] == reference[key]["accuracy"]  # same job key, same result
    return pre.output, post.output


def test_worker_processes_equal_in_process(run_workdir, tmp_path):
    ref, _ = run_workdir
    runs_like_in_process(ref, fresh_copy(ref, tmp_path / "w"), ["--workers", "2"], "standard", "gradient", "0.5")


def test_workers_only_with_the_local_executor(run_workdir):
    ref, _ = run_workdir
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(ref), "--executor", "ray", "--workers", "2"])
    assert result.exit_code == 2 and "--workers applies to --executor local" in result.output


def test_threaded_retrain_equals_one_task_at_a_time(run_workdir, copy):
    """The default local executor runs the stacked MLP groups on one thread per core; every record (accuracy,
    train accuracy, loss) must equal that of the same sweep run one task at a time (--threads 1)."""
    ref, result = run_workdir
    assert "on 2 threads" in result.output or "on " not in result.output  # 1-core machines run one at a time
    shutil.rmtree(copy / "results")
    out = invoke("retrain", "--workdir", str(copy), "--threads", "1")
    assert out.exit_code == 0, out.output
    assert "threads" not in out.output.split("[retrain]")[1].split("\n")[0]
    got = read_results(copy / "results" / "results.jsonl")
    want = read_results(ref / "results" / "results.jsonl")
    assert set(got) == set(want) and len(got) == 24   # 2 models x gradient + random (shared) x 2 x 2 x 2
    for key, rec in got.items():
        for field in ("accuracy", "train_acc", "loss"):
            assert rec[field] == want[key][field], (key, field)


def test_retrain_on_two_threads_says_so_and_equals_the_reference(run_workdir, copy):
    ref, _ = run_workdir
    shutil.rmtree(copy / "results")
    out = invoke("retrain", "--workdir", str(copy), "--threads", "2", "--model", "robust")
    assert out.exit_code == 0, out.output
    assert "(local executor on 2 threads," in out.output
    got = read_results(copy / "results" / "results.jsonl")
    want = read_results(ref / "results" / "results.jsonl")
    assert len(got) == 16 and all(rec["loss"] == want[key]["loss"] for key, rec in got.items())


def test_threads_only_with_the_local_executor(run_workdir):
    ref, _ = run_workdir
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(ref), "--executor", "ray", "--threads", "2"])
    assert result.exit_code == 2 and "--threads applies to --executor local" in result.output


def _matmul_cpu_per_wall(_: int) -> float:
    """Process CPU seconds per wall second of one large matmul in this thread (about the threads it ran on)."""
    import time

    import torch

    a = torch.randn(1024, 1024)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(8):
        torch.mm(a, a)
    return (time.process_time() - c0) / (time.perf_counter() - t0)


def test_tasks_on_threads_run_torch_on_one_thread_each():
    """The stages pin torch to one intra-op thread; a task on a fresh thread must keep that pin (a new thread's
    first torch op would otherwise start OpenMP on every core). Measured by process CPU per wall second of
    a matmul run by a task alone on a new pool thread: ~1 pinned, ~#cores unpinned."""
    import pytest
    import torch

    from fastroar.engine.executors import _map_threads, usable_cores

    if usable_cores() < 2:
        pytest.skip("needs 2 cores to tell one thread from several")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # one task on a pool of two: its thread is new, so its first op meets OpenMP's default
        ratios = list(_map_threads(_matmul_cpu_per_wall, [(0,)], 2, False, ""))
    finally:
        torch.set_num_threads(before)
    assert max(ratios) < 1.6, ratios


def test_task_queue_starts_by_priority_and_takes_tasks_while_results_are_read():
    """One thread: queued tasks start lowest priority first (ties: first added), and a task added while
    results are read (a finished task's successor) overtakes queued ones of a later priority."""
    from fastroar.engine.executors import TaskQueue

    started = []

    def task(name):
        started.append(name)
        return name

    with TaskQueue(1) as queue:
        for priority, name in ((2, "late-a"), (0, "first"), (2, "late-b"), (1, "middle")):
            queue.add(priority, name, task, name)
        for tag, result in queue.results():
            assert tag == result
            if tag == "first":
                queue.add(0, "successor", task, "successor")
    assert started == ["first", "successor", "middle", "late-a", "late-b"]


def test_task_queue_error_drops_the_queued_tasks_and_reaches_the_reader():
    import pytest

    from fastroar.engine.executors import TaskQueue

    ran = []

    def task(name):
        if name == "bad":
            raise ValueError("broken task")
        ran.append(name)

    with pytest.raises(ValueError, match="broken task"):
        with TaskQueue(1) as queue:
            for i, name in enumerate(["ok", "bad", "never-1", "never-2"]):
                queue.add(i, name, task, name)
            list(queue.results())
    assert ran == ["ok"]


def test_task_queue_drain_keeps_the_running_tasks_results_and_drops_the_queued():
    """After an interruption, drain() yields what the running tasks finish (a failed one is skipped) and
    starts nothing that was queued."""
    import threading
    import time

    from fastroar.engine.executors import TaskQueue

    release = threading.Event()

    def task(name):
        if name != "quick":
            release.wait(5)
        if name == "failing":
            raise ValueError("skipped")
        return name

    with TaskQueue(3) as queue:
        for i, name in enumerate(["quick", "slow", "failing", "queued"]):
            queue.add(i, name, task, name)
        first = next(iter(queue.results()))
        assert first == ("quick", "quick")
        threading.Timer(0.2, release.set).start()
        t0 = time.perf_counter()
        assert list(queue.drain()) == [("slow", "slow")]
        assert time.perf_counter() - t0 < 4


def _until_stopped(seconds):
    """A long task made of short steps, checking between them whether its pool was stopped."""
    import time

    from fastroar.engine import cancel

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        cancel.check()
        time.sleep(0.01)
    return "ran to its end"


def _failing():
    raise ValueError("broken task")


def test_an_error_stops_the_other_running_tasks_at_their_next_step():
    """A task's error (as Ctrl-C) stops the pool: the tasks still running end at their next check instead of
    running their 30 s to the end; TaskQueue and map alike. Outside a pool, check() never stops anything."""
    import time

    import pytest

    from fastroar.engine import cancel
    from fastroar.engine.executors import TaskQueue, _map_threads

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="broken task"):
        with TaskQueue(2) as queue:
            queue.add(0, "long", _until_stopped, 30)
            queue.add(1, "bad", _failing)
            list(queue.results())
    assert time.perf_counter() - t0 < 5
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="broken task"):
        list(_map_threads(lambda f, *a: f(*a), [(_until_stopped, 30), (_failing,)], 2, False, ""))
    assert time.perf_counter() - t0 < 5
    cancel.check()                                  # this thread belongs to no pool: never cancelled
    assert _until_stopped(0.05) == "ran to its end"
