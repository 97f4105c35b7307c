"""Evaluating what the user brings (docs/your-method.md, "Evaluate your own method"): their attribution function, their
precomputed scores, their architecture and their trained model, through the CLI, the config and the Python
API, on the embedded default (blockdigits) at the tiny settings of conftest.py. Each door is followed to a
DiffROAR table; each bad input ends in one line, exit 2, no traceback, and leaves the workdir byte-identical.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

import fastroar
from fastroar.cli import cli
from tests.conftest import tiny_args
from tests.test_bad_inputs import fails_cleanly

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "your-method.md"  # the doors' full examples
README = REPO / "README.md"              # one short example per door

# The module of the page's first example (an input gradient written by hand) and broken variants.
SALIENCY = '''import torch


def input_gradient(model, x, target):
    """|d logit_target / dx|: the same scores as the built-in `gradient`, written by hand."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return grad.abs()


def wrong_shape(model, x, target):
    return x[:, :, :4]


def with_nan(model, x, target):
    s = x.clone()
    s[3, 0, 0, 0] = float("nan")
    return s


def raises(model, x, target):
    raise RuntimeError("out of ideas")
'''


def invoke(args: list[str], wd: Path):
    result = CliRunner().invoke(cli, [*args, "--workdir", str(wd), "--no-progress"])
    assert result.exit_code == 0, result.output
    return result.output


def readme_section() -> str:
    """The README's "Evaluate your method" section (one short example per door)."""
    text = README.read_text()
    start = text.index("## Evaluate your method")
    return text[start:text.index("\n## ", start + 1)]


def store_arrays(wd: Path, model: str, attribution: str) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(wd / "masks.zarr" / model / attribution), mode="r")
    return {f"{s}/{a}": g[s][a][:] for s in ("train", "test") for a in ("ranks", "top", "bottom")}


def table_rows(output: str, model: str, attribution: str) -> list[list[str]]:
    """DiffROAR table rows (k, acc_top, acc_bottom, diffroar, std, runs) of one (model, attribution)."""
    table = output.split("DiffROAR (")[1].split("\n\n")[0]
    return [line.split()[2:] for line in table.splitlines() if line.split()[:2] == [model, attribution]]


@pytest.fixture
def saliency(tmp_path, monkeypatch) -> str:
    """saliency.py in a fresh directory, the working directory (fastroar imports module:function from there)."""
    mod = f"saliency_{tmp_path.name.replace('-', '_')}"  # one module name per test: no stale sys.modules
    (tmp_path / f"{mod}.py").write_text(SALIENCY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    return mod


# ------------------------------------------------------------------ 1. an attribution function

def test_user_function_gives_the_ranks_and_the_table_of_gradient(copy, saliency):
    name = f"{saliency}:input_gradient"
    sets = tiny_args(f'attributions=[gradient, random, "{name}"]')
    out = invoke(["precompute", *sets], copy)
    assert "chunks to compute" in out
    for model in ("standard", "robust"):
        mine, builtin = store_arrays(copy, model, name), store_arrays(copy, model, "gradient")
        for key in builtin:
            assert np.array_equal(mine[key], builtin[key]), (model, key)
    attrs = dict(zarr.open_group(str(copy / "masks.zarr" / "standard" / name), mode="r").attrs)
    assert attrs["attribution_params"]["function"] == name and len(attrs["attribution_params"]["source_sha256"]) == 64
    invoke(["retrain", *sets, "--model", "standard"], copy)
    out = invoke(["report", *sets], copy)
    rows = table_rows(out, "standard", name)
    assert len(rows) == 2 and rows == table_rows(out, "standard", "gradient")  # same ranks, same retraining


def test_editing_the_function_invalidates_its_ranks(copy, saliency):
    name = f"{saliency}:input_gradient"
    sets = tiny_args(f'attributions=["{name}"]', "models=[{name: standard}]")
    invoke(["precompute", *sets], copy)
    path = Path(f"{saliency}.py")
    path.write_text(SALIENCY.replace("return grad.abs()", "return grad.abs() ** 2"))
    fails_cleanly(["retrain", *sets], copy, "source changed", "source_sha256", "Delete",
                  f"masks.zarr/standard/{name}", "fastroar precompute")


@pytest.mark.parametrize("fn, message", [
    ("wrong_shape", "returned shape (256, 1, 4, 8)"),
    ("with_nan", "NaN or inf on the batch of images 0..255 (first at image 3)"),
    ("raises", "raised on the batch of images 0..255: RuntimeError: out of ideas"),
])
def test_a_bad_function_is_one_line_and_writes_nothing(copy, saliency, fn, message):
    out = fails_cleanly(["precompute", *tiny_args(f'attributions=[gradient, "{saliency}:{fn}"]')], copy,
                        f"'{saliency}:{fn}'", message, "model 'standard', train split")
    assert len(out.strip().splitlines()) == 1


def test_an_unknown_function_is_one_line(copy, saliency):
    fails_cleanly(["precompute", *tiny_args(f'attributions=["{saliency}:nope"]')], copy, "has no attribute 'nope'")
    fails_cleanly(["precompute", *tiny_args('attributions=["no_such_module_xyz:fn"]')], copy,
                  "cannot import module 'no_such_module_xyz'")


def test_builtin_identities_are_unchanged_by_the_new_doors(copy):
    """gradient/random entries record their plain parameters, as before the doors existed."""
    attrs = dict(zarr.open_group(str(copy / "masks.zarr" / "standard" / "random"), mode="r").attrs)
    assert attrs["attribution_params"] == {"seed": 0}
    attrs = dict(zarr.open_group(str(copy / "masks.zarr" / "standard" / "gradient"), mode="r").attrs)
    assert attrs["attribution_params"] == {}


# ------------------------------------------------------------------ 3. precomputed scores

def gradient_scores(wd: Path, model: str = "standard") -> dict[str, np.ndarray]:
    """fastroar.attribute's input gradients of a workdir's model, per split, batched as precompute batches
    (the export example of docs/your-method.md)."""
    from fastroar.method import to_model_input
    from fastroar.stages.artifacts import load_model, load_prepared
    from fastroar.stages.contract import open_context

    ctx = open_context(wd)
    prepared = load_prepared(ctx.cfg, ctx.wd)
    net, _ = load_model(ctx.wd, model, prepared)
    out = {}
    for split in ("train", "test"):
        x = to_model_input(prepared.arrays(split)[0])
        out[split] = torch.cat([fastroar.attribute(net, x[i:i + 256]) for i in range(0, len(x), 256)]).numpy()
    return out


@pytest.fixture(scope="module")
def grad_scores(run_workdir) -> dict[str, np.ndarray]:
    return gradient_scores(run_workdir[0])


def write_layout(scores: dict[str, np.ndarray], root: Path, layout: str) -> Path:
    if layout == "npy":
        root.mkdir()
        for s, a in scores.items():
            np.save(root / f"{s}.npy", a)
        return root
    if layout == "npz":
        np.savez(root.with_suffix(".npz"), **scores)
        return root.with_suffix(".npz")
    if layout == "zarr":
        g = zarr.open_group(str(root.with_suffix(".zarr")), mode="w")
        for s, a in scores.items():
            g.create_array(s, data=a.reshape(len(a), -1))
        return root.with_suffix(".zarr")
    for s, a in scores.items():  # per-image folders
        (root / s).mkdir(parents=True)
        for i, m in enumerate(a):
            np.save(root / s / f"{i:05d}.npy", m)
    return root


def test_imported_scores_give_the_store_and_table_of_computing_them(copy, tmp_path, grad_scores):
    scores = write_layout(grad_scores, tmp_path / "my-scores", "npy")
    sets = tiny_args()
    invoke(["precompute", *sets, "--model", "standard", "--scores", f"mine={scores}"], copy)
    mine, builtin = store_arrays(copy, "standard", "mine"), store_arrays(copy, "standard", "gradient")
    for key in builtin:
        assert np.array_equal(mine[key], builtin[key]), key
    assert "mine:" in (copy / "config.yaml").read_text()  # retrain and report learn the name from it
    invoke(["retrain", *sets, "--model", "standard", "--attribution", "mine"], copy)
    out = invoke(["report", *sets], copy)
    rows = table_rows(out, "standard", "mine")
    assert len(rows) == 2 and rows == table_rows(out, "standard", "gradient")


def test_every_layout_is_read_as_the_same_scores(tmp_path, grad_scores):
    from fastroar.attribution.scores import scan

    scores = grad_scores
    sizes = {s: len(a) for s, a in scores.items()}
    digests = {layout: scan("mine", write_layout(scores, tmp_path / layout, layout), sizes, (1, 16, 8))
               for layout in ("npy", "npz", "zarr", "folder")}
    assert len(set(digests.values())) == 1, digests


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.update(train=s["train"][:-1]),
     "the train split has 1437 score maps, the prepared train split has 1438"),
    (lambda s: s.update(test=s["test"][:, :, :8]), "test score maps have shape (1, 8, 8), the images (1, 16, 8)"),
    (lambda s: s["test"].__setitem__((5, 0, 0, 0), np.nan), "test score map of image 5 holds NaN or inf"),
    (lambda s: s.pop("test"), "has no test split"),
])
def test_bad_scores_are_one_line_and_write_nothing(copy, tmp_path, grad_scores, damage, message):
    scores = {s: a.copy() for s, a in grad_scores.items()}
    damage(scores)
    path = write_layout(scores, tmp_path / "bad", "npy")
    out = fails_cleanly(["precompute", *tiny_args(), "--scores", f"mine={path}"], copy, "scores 'mine'", message)
    assert len(out.strip().splitlines()) == 1


def test_changed_score_files_invalidate_the_imported_ranks(copy, tmp_path, grad_scores):
    scores = grad_scores
    path = write_layout(scores, tmp_path / "s", "npy")
    invoke(["precompute", *tiny_args(), "--model", "standard", "--scores", f"mine={path}"], copy)
    np.save(path / "test.npy", scores["test"] * 2)
    fails_cleanly(["retrain", *tiny_args(), "--model", "standard", "--attribution", "mine"], copy,
                  "precomputed score files changed", "Delete", "masks.zarr/standard/mine")


# ------------------------------------------------------------------ 4. an architecture

FACTORY = '''from torch import nn


def small_cnn(shape, num_classes, width=8):
    return nn.Sequential(nn.Conv2d(shape[0], width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))


def not_a_module(shape, num_classes):
    return "a string"
'''


def test_torchvision_resnet18_trains_and_retrains_on_blockdigits(tmp_path):
    wd = tmp_path / "tv"
    # blockdigits' images and classes; a 10 % train split keeps ResNet18's epochs short on a CPU
    out = invoke(["run", *tiny_args("model.arch=torchvision:resnet18", "model.params={}", "models=[{name: standard}]",
                                    "attributions=[gradient]", "levels=[0.5]", "train.epochs=1", "retrain.epochs=1",
                                    "retrain.seeds=1", "dataset.params.test_fraction=0.9")], wd)
    rows = table_rows(out, "standard", "gradient")
    assert len(rows) == 1 and rows[0][0] == "0.500"
    ckpt = torch.load(wd / "models" / "standard" / "model.pt", weights_only=False)
    assert ckpt["config"]["arch"] == "torchvision:resnet18"
    assert "conv1.weight" in ckpt["state_dict"] and tuple(ckpt["state_dict"]["conv1.weight"].shape) == (64, 1, 7, 7)
    records = (wd / "results" / "results.jsonl").read_text()
    assert '"arch": "torchvision:resnet18"' in records and '"group_size": 1' in records  # retrained alone, same arch


def test_torchvision_stems_adapt_to_small_one_channel_images():
    from fastroar.models import build_model

    small = build_model("torchvision:resnet18", (1, 16, 8), 10, small_input=True)
    assert (small.conv1.in_channels, small.conv1.kernel_size, small.conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(small.maxpool, torch.nn.Identity)
    for arch in ("torchvision:resnet18", "torchvision:mobilenet_v3_small"):
        assert build_model(arch, (1, 16, 8), 10)(torch.zeros(2, 1, 16, 8)).shape == (2, 10)


def test_a_factory_of_the_users_builds_and_is_checked(tmp_path, monkeypatch):
    from fastroar.errors import UserCodeError
    from fastroar.models import build_model

    (tmp_path / "mynets_factory.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    model = build_model("mynets_factory:small_cnn", (1, 16, 8), 10, width=4)
    assert model(torch.zeros(3, 1, 16, 8)).shape == (3, 10)
    with pytest.raises(UserCodeError, match="returned str, not a torch nn.Module"):
        build_model("mynets_factory:not_a_module", (1, 16, 8), 10)


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_without_timm_names_the_install(copy):
    out = fails_cleanly(["train", *tiny_args("model.arch=timm:resnet18")], copy, "pip install timm")
    assert len(out.strip().splitlines()) == 1


def test_unknown_architectures_are_one_line(copy):
    fails_cleanly(["train", *tiny_args("model.arch=torchvision:resnet_nope")], copy,
                  "torchvision has no classification model")
    fails_cleanly(["train", *tiny_args("model.arch=nomodule_xyz:make")], copy, "cannot import module 'nomodule_xyz'")


# ------------------------------------------------------------------ 5. a trained model of the user's

def test_a_registered_checkpoint_gives_the_ranks_of_the_workdir_that_trained_it(run_workdir, tmp_path):
    first, _ = run_workdir
    wd = tmp_path / "ckpt"
    src = first / "models" / "standard" / "model.pt"
    out = invoke(["run", *tiny_args("models=[]", "attributions=[gradient]"), "--checkpoint", f"mine={src}"], wd)
    assert "mine: registered" in out
    mine, theirs = store_arrays(wd, "mine", "gradient"), store_arrays(first, "standard", "gradient")
    for key in theirs:
        assert np.array_equal(mine[key], theirs[key]), key
    assert len(table_rows(out, "mine", "gradient")) == 2
    ckpt = torch.load(wd / "models" / "mine" / "model.pt", weights_only=False)
    assert set(ckpt) == {"state_dict", "config", "hash", "summary"}  # the format train writes
    from fastroar.models import state_hash

    net = torch.nn.Module()
    assert ckpt["hash"] != torch.load(src, weights_only=False)["hash"]  # keyed by the registered file
    from fastroar.models import build_model

    net = build_model("mlp2", (1, 16, 8), 10, width=32)
    net.load_state_dict(ckpt["state_dict"])
    assert state_hash(net, ckpt["config"]) == ckpt["hash"]
    out = invoke(["train", *tiny_args("models=[]", "attributions=[gradient]"), "--checkpoint", f"mine={src}"], wd)
    assert "mine: checkpoint exists" in out


def test_a_whole_saved_module_registers_like_its_state_dict(run_workdir, tmp_path):
    from fastroar.models import build_model
    from fastroar.models.checkpoint import read_state

    first, _ = run_workdir
    state = torch.load(first / "models" / "standard" / "model.pt", weights_only=False)["state_dict"]
    net = build_model("mlp2", (1, 16, 8), 10, width=32)
    net.load_state_dict(state)
    torch.save(net, tmp_path / "whole.pt")
    got = read_state(tmp_path / "whole.pt")
    assert all(torch.equal(got[k], state[k]) for k in state) and set(got) == set(state)


def bad_checkpoints(tmp_path: Path, first: Path) -> dict[str, Path]:
    state = torch.load(first / "models" / "standard" / "model.pt", weights_only=False)["state_dict"]
    out = {}
    out["extra"] = tmp_path / "extra.pt"
    torch.save({**state, "bonus.weight": torch.zeros(1)}, out["extra"])
    out["garbage"] = tmp_path / "garbage.pt"
    out["garbage"].write_bytes(b"not a checkpoint")
    return out


@pytest.mark.parametrize("case, extra, message", [
    ("extra", (), "the checkpoint has 'bonus.weight', the architecture does not"),
    ("width", ("model.params.width=64",), "'1.weight' has shape (32, 128) in the checkpoint, (64, 128) in the model"),
    ("garbage", (), "cannot be read by torch.load"),
    ("missing", (), "does not exist"),
])
def test_a_checkpoint_that_does_not_fit_is_one_line(copy, tmp_path, run_workdir, case, extra, message):
    paths = bad_checkpoints(tmp_path, run_workdir[0])
    path = paths.get(case, run_workdir[0] / "models" / "standard" / ("model.pt" if case == "width" else "nope.pt"))
    out = fails_cleanly(["train", *tiny_args(*extra, "models=[]"), "--checkpoint", f"mine={path}"], copy, message)
    assert len(out.strip().splitlines()) == 1


def test_a_checkpoint_for_other_data_is_named(copy, tmp_path):
    """Same architecture name, other input size: the first layer's shape says the data differ."""
    from fastroar.models import build_model

    torch.save(build_model("mlp2", (1, 8, 8), 10, width=32).state_dict(), tmp_path / "digits8x8.pt")
    fails_cleanly(["train", *tiny_args(), "--checkpoint", f"mine={tmp_path / 'digits8x8.pt'}"], copy,
                  "'1.weight' has shape (32, 64) in the checkpoint, (32, 128) in the model")


# ------------------------------------------------------------------ 6. the Python API

def test_evaluate_and_load_results_return_the_tables(run_workdir, tmp_path):
    first, _ = run_workdir
    res = fastroar.evaluate(first / "models" / "standard" / "model.pt", "blockdigits",
                            attributions=["gradient", "random"], levels=[0.25, 0.5], workdir=tmp_path / "api",
                            seeds=2, overrides=["model.params.width=32", "retrain.epochs=2"], progress=False,
                            log=lambda s: None)
    runs, summary = res
    assert len(runs) == 2 * 2 * 2 * 2 and set(runs["direction"]) == {"top", "bottom"}
    assert list(summary.columns) == ["model", "attribution", "k", "acc_top", "acc_bottom", "diffroar", "ci_low",
                                     "ci_high", "se", "p_positive", "std", "runs", "bases", "interval", "mask_top",
                                     "mask_bottom"]
    assert len(summary) == 4 and set(summary["model"]) == {"mine"} and (summary["runs"] == 2).all()
    row = summary[(summary.attribution == "gradient") & (summary.k == 0.5)].iloc[0]
    assert row.diffroar == pytest.approx(row.acc_top - row.acc_bottom)
    # the interval is recomputed from the runs' per-image outcomes, and holds the estimate
    assert row.ci_low <= row.diffroar <= row.ci_high and row.bases == 1 and "test images" in row.interval
    again = fastroar.load_results(tmp_path / "api")
    assert again.summary.equals(summary) and again.runs.equals(runs)
    # the same model as an nn.Module: registered from <workdir>/inputs/, same ranks
    from fastroar.models import build_model

    net = build_model("mlp2", (1, 16, 8), 10, width=32)
    net.load_state_dict(torch.load(first / "models" / "standard" / "model.pt", weights_only=False)["state_dict"])
    res2 = fastroar.evaluate(net, "blockdigits", attributions=["gradient"], levels=[0.5], workdir=tmp_path / "api2",
                             seeds=1, overrides=["model.params.width=32", "retrain.epochs=2"], progress=False,
                             log=lambda s: None)
    assert (tmp_path / "api2" / "inputs" / "mine.pt").is_file() and len(res2.summary) == 1
    assert np.array_equal(store_arrays(tmp_path / "api2", "mine", "gradient")["test/ranks"],
                          store_arrays(first, "standard", "gradient")["test/ranks"])


# ------------------------------------------------------------------ 7. the documented examples

def test_the_docs_page_shows_the_examples_these_tests_run():
    page = PAGE.read_text()
    assert SALIENCY.split("\n\n\ndef wrong_shape")[0] in page
    for snippet in ('"saliency:input_gradient"', "--scores mine=my-scores", "model.arch=torchvision:resnet18",
                    "--checkpoint mine=fn-work/models/standard/model.pt", "fastroar.evaluate(",
                    "fastroar.attribute(model, x[i:i + 256])"):
        assert snippet in page, snippet


def test_the_readme_shows_one_of_these_examples_per_door():
    section = readme_section()
    assert SALIENCY.split("\n\n\ndef wrong_shape")[0] in section
    for snippet in ('"saliency:input_gradient"', "--scores mine=my-scores", '"captum:IntegratedGradients"',
                    "--checkpoint mine=fn-work/models/standard/model.pt", "fastroar.evaluate(",
                    "docs/your-method.md"):
        assert snippet in section, snippet
