"""Shared fixtures: a tiny config and one workdir that has been through `fastroar run` (built once)."""
from __future__ import annotations

import os
import signal

import pytest

import fastroar  # noqa: F401  (first: pins torch's CPU kernels before any test imports torch)

os.environ.setdefault("TQDM_DISABLE", "1")

# A suite started in the background by a non-interactive shell (`cmd &`) inherits SIGINT ignored, and so
# would every CLI it starts: the Ctrl-C tests would then see runs that cannot be interrupted. A handled
# signal is reset to its default in a child at exec, so installing Python's own handler here gives the
# children the Ctrl-C of a terminal, however the suite was launched.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Small enough for seconds per stage on 2 CPU cores, big enough that every stage does real work.
TINY = [
    "model.params.width=32", "train.epochs=3", "retrain.epochs=2", "retrain.seeds=2",
    "levels=[0.25,0.5]", "precompute.chunk_size=512", "models=[{name: standard}, "
    "{name: robust, adversary: {norm: linf, eps: 0.1, steps: 2}}]",
]


def tiny_args(*extra: str) -> list[str]:
    args = []
    for item in TINY + list(extra):
        args += ["--set", item]
    return args


@pytest.fixture(scope="session")
def run_workdir(tmp_path_factory):
    """A workdir after `fastroar run` on the tiny blockdigits config, and the CLI result."""
    from click.testing import CliRunner

    from fastroar.cli import cli

    wd = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(cli, ["run", "--workdir", str(wd), "--no-progress", *tiny_args()])
    return wd, result


@pytest.fixture
def copy(run_workdir, tmp_path):
    """A private copy of the finished tiny run, to damage or extend."""
    import shutil

    dst = tmp_path / "wd"
    shutil.copytree(run_workdir[0], dst)
    return dst
