"""Damaged or conflicting inputs on disk: each is named in one clear message with its fix, the command
exits non-zero without a traceback, and every existing output is left byte-identical.

(The option-level bad inputs — unknown dataset/attribution, k outside (0, 1), negative epsilon, seeds < 1,
bad loader — are in test_cli.py; the unreachable Ray address in test_ray.py.)
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from fastroar.cli import cli
from tests.conftest import tiny_args
from tests.test_cli import tree_digest


def fails_cleanly(args: list[str], wd: Path, *messages: str) -> str:
    """Runs the CLI on wd; asserts exit 2, every message in the output, no traceback, wd unchanged."""
    before = tree_digest(wd)
    result = CliRunner().invoke(cli, [*args, "--workdir", str(wd), "--no-progress"])
    assert result.exit_code == 2, result.output
    for message in messages:
        assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert tree_digest(wd) == before
    return result.output


def beton(wd: Path, split: str) -> Path:
    (path,) = (wd / "data").glob(f"*/{split}.beton")
    return path


def test_truncated_beton_is_named_with_the_fix(copy):
    path = beton(copy, "train")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    fails_cleanly(["retrain", *tiny_args("retrain.seeds=3")], copy, str(path), "truncated", "fastroar prepare")


def test_corrupted_beton_of_the_same_size_is_caught_by_its_checksum(copy):
    path = beton(copy, "test")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    fails_cleanly(["precompute", *tiny_args()], copy, str(path), "corrupted")


def test_unreadable_zarr_chunk_is_named_with_the_fix(copy):
    chunk = copy / "masks.zarr" / "robust" / "gradient" / "test" / "ranks" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = bytes(16)
    chunk.write_bytes(bytes(data))
    fails_cleanly(["report", *tiny_args()], copy, "robust/gradient/test", "delete", "masks.zarr/robust/gradient",
                  "fastroar precompute")


def test_silently_changed_zarr_chunk_fails_its_crc(copy):
    """Valid bytes that are not what precompute wrote (decode fine, checksum does not match)."""
    ranks = zarr.open_array(str(copy / "masks.zarr" / "standard" / "gradient" / "train" / "ranks"), mode="r+")
    row = ranks[0]
    ranks[0] = np.roll(row, 1)
    fails_cleanly(["retrain", *tiny_args("retrain.seeds=3")], copy, "standard/gradient/train",
                  "does not match its checksum", "fastroar precompute")


def test_second_precompute_on_the_same_workdir_is_refused(copy, run_workdir):
    from fastroar.engine.workspace import Workdir, stage_lock

    shutil.rmtree(copy / "masks.zarr" / "robust")  # there is work to do
    with stage_lock(Workdir(copy), "precompute"):  # as if another process were running it
        fails_cleanly(["precompute", *tiny_args()], copy, "another `fastroar precompute` is running")
    # once the other one is gone the same command does the work
    result = CliRunner().invoke(cli, ["precompute", "--workdir", str(copy), "--no-progress", *tiny_args()])
    assert result.exit_code == 0, result.output
    for split in ("train", "test"):
        path = f"masks.zarr/robust/gradient/{split}/ranks"
        np.testing.assert_array_equal(zarr.open_array(str(copy / path), mode="r")[:],
                                      zarr.open_array(str(run_workdir[0] / path), mode="r")[:])


def test_second_retrain_on_the_same_workdir_is_refused(copy):
    from fastroar.engine.workspace import Workdir, stage_lock

    with stage_lock(Workdir(copy), "retrain"):
        fails_cleanly(["retrain", *tiny_args("retrain.seeds=3")], copy, "another `fastroar retrain` is running")


def test_bad_option_on_a_new_workdir_creates_nothing(tmp_path):
    result = CliRunner().invoke(cli, ["run", "--workdir", str(tmp_path / "new"), "--set", "levels=[0]"])
    assert result.exit_code == 2 and "k must lie strictly between 0 and 1" in result.output
    assert not (tmp_path / "new").exists()


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(cli, ["run", "--workdir", str(blocker / "wd"), "--no-progress"])
    assert result.exit_code == 2 and "cannot write to workdir" in result.output and "Traceback" not in result.output
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("root,message", [(None, "pass --data-root"), ("/nonexistent/mnist", "does not exist")])
def test_missing_data_root(copy, root, message):
    args = ["prepare", "--set", "dataset.name=mnist", "--set", "dataset.params={}"]
    if root:
        args += ["--data-root", root]
    fails_cleanly(args, copy, message)


def test_workdir_prepared_for_another_dataset(copy):
    """The models and store exist, but for other data: the stage names what to run instead of reusing them."""
    fails_cleanly(["precompute", *tiny_args("dataset.params.seed=7")], copy, "is not prepared", "fastroar prepare")
