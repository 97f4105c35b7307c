"""Issue 26, the faults that need real processes: a stale Ray address (case 11), retrain workers outliving
their killed parent (case 12), two processes on one workdir or one store (cases 13, 14). Each bad case
ends in one `Error:` line and exit code 2, without a traceback, quickly."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import time

import pytest

from tests.conftest import tiny_args
from tests.test_fuzz_cli import _cli


def _one_error_line(out: str) -> str:
    errors = [line for line in out.splitlines() if "Error" in line]
    assert len(errors) == 1 and "Traceback" not in out, out
    return errors[0]


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stale_ray_cluster_file_fails_fast_naming_it(run_workdir, tmp_path):
    """Case 11: Ray's ray_current_cluster (left by an earlier `ray start`) names a dead cluster; without
    --address, ray.init would retry it forever. fastroar checks it first and names the file."""
    pytest.importorskip("ray")
    ray_tmp = tmp_path / "raytmp"
    (ray_tmp / "ray").mkdir(parents=True)
    stale = ray_tmp / "ray" / "ray_current_cluster"
    stale.write_text(f"127.0.0.1:{_dead_port()}")
    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd)
    t0 = time.time()
    proc = _cli("retrain", "--workdir", str(wd), "--no-progress", "--executor", "ray",
                env={"RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": ""})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    line = _one_error_line(out)
    assert f"Ray's file {stale}" in line and "no Ray cluster answers" in line and "`ray stop`" in line
    assert time.time() - t0 < 30


def test_retrain_workers_die_with_their_killed_parent(run_workdir, tmp_path):
    """Case 12: `retrain --workers 2` killed with SIGKILL (no chance to stop its pool): its worker processes
    (and multiprocessing's resource tracker) end within seconds instead of training on, orphaned."""
    psutil = pytest.importorskip("psutil")
    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd, ignore=shutil.ignore_patterns("results", "report", "*.lock"))
    proc = _cli("retrain", "--workdir", str(wd), "--no-progress", "--workers", "2",
                *tiny_args("retrain.epochs=400"))
    parent = psutil.Process(proc.pid)
    t0 = time.time()
    workers: list = []
    while len(workers) < 2:
        assert proc.poll() is None and time.time() - t0 < 120, "the workers never started"
        workers = [p for p in parent.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
        time.sleep(0.2)
    time.sleep(3.0)                                   # the workers are past their initializer, training
    children = parent.children(recursive=True)
    assert all(p.is_running() for p in workers)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=15)
    for p in alive:
        p.kill()
    assert not alive, [" ".join(p.cmdline()) for p in alive]
