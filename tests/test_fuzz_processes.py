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
from tests.test_fuzz_cli import ROOT, _cli


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


def _store_tiny(*extra: str) -> list[str]:
    return tiny_args("attributions=[gradient]", "models=[{name: standard}]", *extra)


def test_retrain_beside_a_precompute_creating_the_store_is_one_line(run_workdir, tmp_path):
    """Case 13: retrain started while precompute is creating a store entry (its identity not yet written):
    retrain is refused with one line (before, it deleted the entry under the precompute: 'store was
    opened in read-only mode'), and the precompute completes."""
    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd, ignore=shutil.ignore_patterns("masks.zarr", "results", "report", "*.lock"))
    first = _cli("precompute", "--workdir", str(wd), "--no-progress", *_store_tiny(),
                 env={"FASTROAR_PAUSE_AT": "store.before_identity:6"})
    entry = wd / "masks.zarr" / "standard" / "gradient"
    t0 = time.time()
    while not (entry / "test" / "done").exists():
        assert first.poll() is None and time.time() - t0 < 120, first.communicate()[0]
        time.sleep(0.1)
    second = _cli("retrain", "--workdir", str(wd), "--no-progress", *_store_tiny())
    out2, _ = second.communicate(timeout=120)
    out1, _ = first.communicate(timeout=120)
    assert second.returncode == 2, out2
    assert "is incomplete: a `fastroar precompute` is creating it right now" in _one_error_line(out2)
    assert first.returncode == 0, out1
    done = _cli("retrain", "--workdir", str(wd), "--no-progress", *_store_tiny())
    out, _ = done.communicate(timeout=300)
    assert done.returncode == 0 and "8/8 jobs recorded" in out, out


def test_an_entry_a_killed_precompute_left_without_identity_is_one_line(run_workdir, tmp_path):
    """Case 13: what a precompute killed while creating an entry leaves: report, retrain and estimate
    say what to run; precompute rebuilds it."""
    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd, ignore=shutil.ignore_patterns("masks.zarr", "*.lock"))
    killed = _cli("precompute", "--workdir", str(wd), "--no-progress", *_store_tiny(),
                  env={"FASTROAR_KILL_AT": "store.before_identity:1"})
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    for stage in ("report", "retrain", "estimate"):
        proc = _cli(stage, "--workdir", str(wd), "--no-progress", *_store_tiny())
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 2, out
        assert "is incomplete" in _one_error_line(out) and "`fastroar precompute`" in out
    rebuilt = _cli("precompute", "--workdir", str(wd), "--no-progress", *_store_tiny())
    out, _ = rebuilt.communicate(timeout=300)
    assert rebuilt.returncode == 0, out
    report = _cli("report", "--workdir", str(wd), "--no-progress", *_store_tiny())
    out, _ = report.communicate(timeout=120)
    assert report.returncode == 0, out


def test_two_runs_sharing_one_store_both_finish_or_one_line(run_workdir, tmp_path):
    """Case 14: two `fastroar run` on two workdirs and one --store, the first paused while creating an
    entry: the second waits for it and uses it (before: zarr's ContainsArrayError); both finish with the
    same table."""
    store = tmp_path / "shared.zarr"
    args = ["--no-progress", "--store", str(store), *_store_tiny()]
    first = _cli("run", "--workdir", str(tmp_path / "a"), *args, env={"FASTROAR_PAUSE_AT": "store.before_identity:5"})
    t0 = time.time()
    while not (store / "standard" / "gradient").exists():
        assert first.poll() is None and time.time() - t0 < 120, first.communicate()[0]
        time.sleep(0.1)
    second = _cli("run", "--workdir", str(tmp_path / "b"), *args)
    out2, _ = second.communicate(timeout=300)
    out1, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out1
    assert second.returncode == 0 and "Traceback" not in out2, out2
    table = lambda text: text.split("DiffROAR (")[1].split("report:")[0]  # noqa: E731
    assert table(out1) == table(out2)


USER_FN = '''import torch


def input_gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return grad.abs()
'''


def test_saved_rows_of_a_user_function_stay_readable_without_it(run_workdir, tmp_path):
    """Case 26: report and load_results of a finished workdir whose module:function attribution is no
    longer importable, or whose source only had a comment added: the saved rows (built-in ones too) are
    reported, with a warning that they cannot be re-verified; before, both refused the whole workdir."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "mysal.py").write_text(USER_FN)
    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd)
    sets = _store_tiny('attributions=[gradient, "mysal:input_gradient"]')
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{code}"}
    for stage in ("precompute", "retrain", "report"):
        proc = _cli(stage, "--workdir", str(wd), "--no-progress", *sets, env=env)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    table = out.split("DiffROAR (")[1].split("Signal-block")[0]
    (code / "mysal.py").write_text(USER_FN.replace("    x = x.clone()", "    # a comment\n    x = x.clone()"))
    changed = _cli("report", "--workdir", str(wd), "--no-progress", *sets, env=env)
    out, _ = changed.communicate(timeout=120)
    assert changed.returncode == 0 and "its source changed since its ranks were computed" in out, out
    assert out.split("DiffROAR (")[1].split("Signal-block")[0] == table
    (code / "mysal.py").unlink()                                # not importable at all
    gone = _cli("report", "--workdir", str(wd), "--no-progress", *sets, env=env)
    out, _ = gone.communicate(timeout=120)
    assert gone.returncode == 0 and "its module cannot be imported here" in out, out
    assert out.split("DiffROAR (")[1].split("Signal-block")[0] == table
    # precompute, which would run it, still says what is missing
    pre = _cli("precompute", "--workdir", str(wd), "--no-progress", *_store_tiny(
        'attributions=[gradient, "mysal:other"]'), env=env)
    out, _ = pre.communicate(timeout=120)
    assert pre.returncode == 2 and "cannot import module 'mysal'" in _one_error_line(out)
