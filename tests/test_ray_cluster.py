"""The cluster path as docs/cluster.md gives it: a Ray head started with `ray start --head` and token
authentication in its own processes, and `fastroar precompute` / `retrain --executor ray --address` run as
separate processes. The head listens on the loopback interface only and is torn down by pid.

The commands are taken from the first bash block of docs/cluster.md, "Running on a cluster" (so the page
and the test cannot drift apart), with test-only additions: a free port, a short temp dir, 2 CPUs, no dashboard, and the
loopback binding (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, --node-ip-address=127.0.0.1).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fastroar.engine.results import read_results
from tests.conftest import tiny_args
from tests.test_resume import fresh_copy, store_arrays

ray = pytest.importorskip("ray")
import psutil  # noqa: E402  (installed with ray's and ffcv's dependencies)

REPO = Path(__file__).resolve().parents[1]
RAY_CLI = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() \
    else shutil.which("ray")
HEAD_TEST_FLAGS = ["--node-ip-address=127.0.0.1", "--num-cpus", "2", "--include-dashboard=false",
                   "--disable-usage-stats"]


CLUSTER_PAGE = REPO / "docs" / "cluster.md"


def readme_commands() -> list[str]:
    """The command lines of the cluster recipe (the first bash block of docs/cluster.md), comments dropped."""
    text = CLUSTER_PAGE.read_text()
    section = text.split("# Running on a cluster", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def readme_command(prefix: str, **subs: str) -> tuple[dict[str, str], list[str]]:
    """(environment additions, argv) of the one documented command that starts with `prefix`, with the page's
    placeholders replaced: HEAD_IP:6379 -> subs['address'], 6379 -> subs['port'], /shared/study ->
    subs['workdir']; `fastroar` runs this checkout's CLI, `ray` this environment's; --gpus-per-task is
    dropped (the test machine has no GPU)."""
    lines = [line for line in readme_commands() if line.startswith(prefix)]
    assert len(lines) == 1, f"docs/cluster.md's recipe should have one `{prefix} ...` line, has {lines}"
    words = shlex.split(lines[0])
    env = {}
    while "=" in words[0] and words[0].split("=", 1)[0].isupper():
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    argv: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word == "--gpus-per-task":
            skip = True
            continue
        if "address" in subs:
            word = word.replace("HEAD_IP:6379", subs["address"])
        if "port" in subs:
            word = word.replace("6379", subs["port"])
        if "workdir" in subs:
            word = word.replace("/shared/study", subs["workdir"])
        argv.append(word)
    if argv[0] == "fastroar":
        argv[:1] = [sys.executable, "-m", "fastroar.cli"]
    elif argv[0] == "ray":
        argv[0] = RAY_CLI
    return env, argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without any Ray address or token settings, with its own HOME (so
    ~/.ray/auth_token is the test's) and this checkout first on the Python path (for the CLI and the
    Ray workers, which inherit the head's environment)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "FASTROAR_TEST"))}
    env.update(HOME=str(home), TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


@dataclass
class Cluster:
    address: str
    port: str
    home: Path
    token: Path
    pgid: int

    def env(self, home: Path | None = None, **extra: str) -> dict[str, str]:
        return {**clean_env(home or self.home), **extra}

    def raylet(self) -> psutil.Process:
        return next(p for p in group_processes(self.pgid) if p.name() == "raylet")

    def fastroar(self, prefix: str, wd: Path, *args: str, home: Path | None = None, env: dict | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
        """The documented `fastroar <prefix>` command against this cluster, as a separate process."""
        readme_env, argv = readme_command(prefix, address=self.address, workdir=str(wd))
        return subprocess.run([*argv, *args, "--no-progress", *tiny_args()], cwd=REPO, text=True,
                              capture_output=True, timeout=timeout,
                              env={**self.env(home), **readme_env, **(env or {})})


def group_processes(pgid: int) -> list[psutil.Process]:
    """The processes of process group `pgid` and all their descendants (Ray workers get groups of their own)."""
    found = {}
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                found[p.pid] = p
                for child in p.children(recursive=True):
                    found[child.pid] = child
        except (psutil.Error, ProcessLookupError):
            pass
    return list(found.values())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node Ray cluster with token authentication, started with the commands of docs/cluster.md."""
    home = tmp_path_factory.mktemp("home")
    temp_dir = Path(tempfile.mkdtemp(prefix="fr-ray-"))  # short: Ray's socket paths must stay < 108 chars
    port = str(free_port())
    env_add, argv = readme_command("ray get-auth-token")
    subprocess.run(argv, env={**clean_env(home), **env_add}, check=True, capture_output=True, timeout=120)
    token = home / ".ray" / "auth_token"
    assert token.stat().st_size > 0

    env_add, argv = readme_command("RAY_AUTH_MODE=token ray start --head", port=port)
    assert env_add == {"RAY_AUTH_MODE": "token"}
    head = subprocess.Popen([*argv, f"--temp-dir={temp_dir}", *HEAD_TEST_FLAGS], text=True,
                            env={**clean_env(home), **env_add, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out, _ = head.communicate(timeout=180)
    c = Cluster(address=f"127.0.0.1:{port}", port=port, home=home, token=token, pgid=head.pid)
    try:
        assert head.returncode == 0, out
        listening = {conn.laddr.ip for conn in psutil.net_connections("tcp")
                     if conn.status == psutil.CONN_LISTEN and conn.pid in {p.pid for p in group_processes(c.pgid)}}
        assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening  # loopback only
        yield c
    finally:
        stop(c.pgid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop(pgid: int) -> None:
    """Ends the head's processes and their workers by pid: SIGTERM, then SIGKILL what is left."""
    procs = group_processes(pgid)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


def assert_records_equal_reference(wd: Path, ref: Path, n: int) -> None:
    lines = (wd / "results" / "results.jsonl").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines if line.strip()]
    assert len(keys) == n and len(set(keys)) == n, keys  # every job's record exactly once
    reference = read_results(ref / "results" / "results.jsonl")
    for key, rec in read_results(wd / "results" / "results.jsonl").items():
        assert rec["accuracy"] == reference[key]["accuracy"], key  # same job, same result as --executor local


def test_readme_cluster_precompute_and_retrain_equal_local(run_workdir, tmp_path, cluster):
    ref, _ = run_workdir
    wd = fresh_copy(ref, tmp_path / "w")
    subset = ["--model", "robust", "--attribution", "gradient"]
    pre = cluster.fastroar("fastroar precompute", wd, *subset)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    assert "4 chunks to compute in 4 tasks (ray executor)" in pre.stdout
    got, want = store_arrays(wd, "robust/gradient"), store_arrays(ref, "robust/gradient")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    post = cluster.fastroar("fastroar retrain", wd, "--k", "0.25", *subset)
    assert post.returncode == 0, post.stdout + post.stderr
    assert "(ray executor" in post.stdout
    assert_records_equal_reference(wd, ref, 4)


def test_killed_worker_task_is_retried_and_recorded_once(run_workdir, tmp_path, cluster):
    ref, _ = run_workdir
    wd = tmp_path / "w"
    shutil.copytree(ref, wd, ignore=shutil.ignore_patterns("results", "report"))  # keeps the rank store
    # the token through --ray-auth-token-file this time, with no ~/.ray/auth_token in the driver's HOME
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    readme_env, argv = readme_command("fastroar retrain", address=cluster.address, workdir=str(wd))
    driver = subprocess.Popen(
        [*argv, "--k", "0.5", "--model", "standard", "--attribution", "gradient",
         "--ray-auth-token-file", str(cluster.token), "--no-progress", *tiny_args()],
        cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**cluster.env(empty_home), **readme_env, "FASTROAR_TEST_TASK_DELAY": "4"})
    try:
        raylet = cluster.raylet()
        seen: list[int] = []  # pids of the workers that ran the retrain task, in order
        deadline = time.monotonic() + 240
        while driver.poll() is None and time.monotonic() < deadline:
            for worker in raylet.children():
                try:
                    running = " ".join(worker.cmdline()).startswith("ray::run_group_task")
                except psutil.Error:
                    continue
                if running and worker.pid not in seen:
                    seen.append(worker.pid)
                    if len(seen) == 1:
                        worker.kill()  # mid-task: it sleeps FASTROAR_TEST_TASK_DELAY s before training
            time.sleep(0.1)
        out, _ = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out
    assert len(seen) >= 2, f"the killed task was not run again: {seen}\n{out}"
    assert_records_equal_reference(wd, ref, 4)


def retrain_output(cluster: Cluster, wd: Path, address: str, *args: str, home: Path | None = None) -> str:
    readme_env, argv = readme_command("fastroar retrain", address=address, workdir=str(wd))
    done = subprocess.run([*argv, "--k", "0.5", "--model", "standard", "--attribution", "gradient", *args,
                           "--no-progress", *tiny_args()], cwd=REPO, text=True, capture_output=True,
                          timeout=120, env={**cluster.env(home), **readme_env})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stdout + done.stderr
    return errors[0]


def test_connection_failures_name_their_cause(run_workdir, tmp_path, cluster):
    ref, _ = run_workdir
    wd = tmp_path / "w"
    shutil.copytree(ref, wd, ignore=shutil.ignore_patterns("results", "report"))
    port = free_port()
    t0 = time.monotonic()
    line = retrain_output(cluster, wd, f"127.0.0.1:{port}")
    assert line.startswith(f"Error: no Ray cluster answers at 127.0.0.1:{port} (Connection refused)"), line

    empty_home = tmp_path / "home"
    empty_home.mkdir()
    line = retrain_output(cluster, wd, cluster.address, home=empty_home)  # no token anywhere
    assert line.startswith(f"Error: the Ray cluster at {cluster.address} refused our credentials "
                           "(no token was found here)"), line
    assert "--ray-auth-token-file" in line

    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    line = retrain_output(cluster, wd, cluster.address, "--ray-auth-token-file", str(wrong))
    assert line.startswith(f"Error: the Ray cluster at {cluster.address} refused our credentials "
                           f"(the token from {wrong} was rejected)"), line
    assert time.monotonic() - t0 < 90  # seconds each, not ray.init's minutes of retries

    # a cluster that declares another Ray version (its metadata rewritten in its GCS, then restored)
    set_cluster_ray_version(cluster, "2.0.0")
    try:
        line = retrain_output(cluster, wd, cluster.address)
    finally:
        set_cluster_ray_version(cluster, ray.__version__)
    assert line.startswith(f"Error: Ray version mismatch with the cluster at {cluster.address}: it runs Ray 2.0.0 "
                           f"on Python "), line
    assert f"this driver Ray {ray.__version__}" in line


def set_cluster_ray_version(cluster: Cluster, version: str) -> None:
    """Rewrites the Ray version the cluster's GCS reports to connecting drivers (in another process, with
    the cluster's token: this process's Ray configuration stays as it is)."""
    script = (
        "import json, sys\n"
        "from ray._raylet import GcsClient\n"
        "client = GcsClient(address=sys.argv[1])\n"
        "key, ns = b'CLUSTER_METADATA', b'cluster'\n"
        "meta = json.loads(client.internal_kv_get(key, ns))\n"
        "meta['ray_version'] = sys.argv[2]\n"
        "client.internal_kv_put(key, json.dumps(meta).encode(), True, ns)\n")
    subprocess.run([sys.executable, "-c", script, cluster.address, version], check=True, timeout=60,
                   capture_output=True, env=cluster.env(RAY_AUTH_MODE="token"))


def test_ray_errors_are_classified_from_rays_own_text():
    """ray.init's wrapped failures (what the probe before it normally catches first) get the same lines."""
    from ray._private.utils import check_version_info
    from ray.exceptions import AuthenticationError

    from fastroar.engine.ray_connect import classify_ray_error

    try:
        check_version_info({"ray_version": "2.0.0", "python_version": "3.9.1"}, "here")
    except RuntimeError as mismatch:
        wrapped = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
        wrapped.__cause__ = mismatch
    error = classify_ray_error(wrapped, "10.0.0.1:6379")
    assert str(error).startswith("Ray version mismatch with the cluster at 10.0.0.1:6379: it runs Ray 2.0.0 on "
                                 "Python 3.9.1, this driver Ray " + ray.__version__)

    refused = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
    refused.__cause__ = AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing")
    assert "refused our credentials" in str(classify_ray_error(refused, "10.0.0.1:6379"))
    assert classify_ray_error(ConnectionError("something else"), "10.0.0.1:6379") is None


def test_unusable_token_file_is_a_usage_error(run_workdir, tmp_path):
    from click.testing import CliRunner

    from fastroar.cli import cli
    from fastroar.engine.ray_connect import use_auth_token
    from fastroar.errors import ConfigError

    ref, _ = run_workdir
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(ref), "--executor", "ray", "--address",
                                      "127.0.0.1:1", "--ray-auth-token-file", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in result.output
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="the Ray token file .* is empty"):
        use_auth_token(str(empty))  # Ray itself would abort the process on it
