"""`fastroar replicate --quick` on a finished run: its gradient-mass and localization numbers against an
independent per-sample torch.autograd computation on the saved models, and its files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch


def per_sample_gradients(model: torch.nn.Module, x: torch.Tensor, margin: bool = False) -> np.ndarray:
    """d logit_yhat / dx (or d (z_yhat - max_{c != yhat} z_c) / dx) one sample at a time (no batching
    trick), yhat = the predicted label."""
    model.eval()
    rows = []
    for xi in x:
        xi = xi[None].clone().requires_grad_(True)
        out = model(xi)[0]
        yhat = int(out.argmax())
        if margin:
            others = torch.cat([out[:yhat], out[yhat + 1:]])
            (out[yhat] - others.max()).backward()
        else:
            out[yhat].backward()
        rows.append(xi.grad.reshape(-1).numpy().astype(np.float64))
    return np.stack(rows)


def share(g: np.ndarray, region: np.ndarray) -> float:
    a = np.abs(g)
    return float(np.mean((a * region).sum(1) / a.sum(1)))


@pytest.fixture(scope="module")
def replicated(run_workdir, tmp_path_factory):
    from click.testing import CliRunner

    from fastroar.cli import cli

    src, result = run_workdir
    assert result.exit_code == 0, result.output
    wd = tmp_path_factory.mktemp("replicate") / "wd"
    shutil.copytree(src, wd)
    res = CliRunner().invoke(cli, ["replicate", "--workdir", str(wd), "--quick", "--no-progress", "--instances", "6"])
    assert res.exit_code == 0, res.output
    return wd, json.loads((wd / "replicate" / "summary.json").read_text())


def _prepared(data_root: Path):
    from fastroar.stages.artifacts import Prepared

    (d,) = [p for p in (data_root / "data").iterdir() if (p / "meta.json").exists()]
    return Prepared(d, json.loads((d / "meta.json").read_text()))


def test_leakage_shares_equal_an_independent_computation(replicated):
    from fastroar.engine.workspace import Workdir
    from fastroar.stages.artifacts import load_model

    wd, summary = replicated
    lwd = Workdir(summary["leakage"]["workdir"])
    assert Path(lwd.root).parent == wd / "replicate" / "leakage"
    prepared = _prepared(lwd.root)
    images, labels = prepared.arrays("test")
    x = torch.from_numpy(np.array(images, dtype=np.float32))
    signal = prepared.signal("test")
    d = int(prepared.meta["params"]["d"])
    relevant = np.zeros(signal.shape[1], bool)
    relevant[: d // 2] = True  # block_dim 1
    assert set(summary["leakage"]["models"]) == {"linear", "standard", "robust"}
    for name, entry in summary["leakage"]["models"].items():
        model, ckpt = load_model(lwd, name, prepared)
        assert entry["hash"] == ckpt["hash"]
        with torch.no_grad():
            assert entry["test_acc"] == pytest.approx(float((model(x).argmax(1).numpy() == labels).mean()))
        assert entry["chance"] == pytest.approx(max(np.mean(labels), 1 - np.mean(labels)))
        assert set(entry["by"]) == {"gradient", "gradient:margin"}
        for attribution, got in entry["by"].items():
            g = per_sample_gradients(model, x, margin=attribution == "gradient:margin")
            assert got["signal_share"] == pytest.approx(share(g, signal), abs=1e-5)
            assert got["other_relevant_share"] == pytest.approx(share(g, relevant & ~signal), abs=1e-5)
            assert got["noise_share"] == pytest.approx(share(g, ~relevant[None] & ~signal), abs=1e-5)
            assert got["signal_share"] + got["other_relevant_share"] + got["noise_share"] == pytest.approx(1.0)
            top1 = np.mean(signal[np.arange(len(g)), np.abs(g).argmax(1)])
            assert got["top1_on_signal"] == pytest.approx(top1)
            bottom1 = np.mean(signal[np.arange(len(g)), (len(g[0]) - 1) - np.abs(g)[:, ::-1].argmin(1)])
            assert got["aq_aq"] == pytest.approx(top1 - bottom1)  # ties: top to the lower, bottom to the higher index
    lin = summary["leakage"]["models"]["linear"]["by"]["gradient:margin"]
    assert lin["zero_gradient_instances"] == 0 and lin["instance_spread"] < 1e-5  # Fig. 5: the same for all

    # the leakage DiffROAR rows are those of the sub-workdir's retraining records
    from fastroar.engine.results import read_results
    from fastroar.stages.report import diffroar_rows

    rows = diffroar_rows(read_results(lwd.results_path).values())
    assert {r["model"] for r in rows} == {"standard", "robust"}
    assert {r["attribution"] for r in rows} == {"gradient", "gradient:margin"}
    assert [(r["model"], r["attribution"], r["k"], r["diffroar"]) for r in rows] == \
        [(r["model"], r["attribution"], r["k"], pytest.approx(r["diffroar"])) for r in summary["leakage"]["diffroar"]]
    an = summary["leakage"]["analytic"]
    assert an["ceiling"] == pytest.approx(1 - an["chance"]) and an["chance"] == 0.5  # balanced test split


def test_aq_experiment_equals_an_independent_computation(replicated):
    """AQ of the loss gradient on x = y*e_j: per-sample autograd of the true-label loss, top-1/bottom-1."""
    from fastroar.engine.workspace import Workdir
    from fastroar.stages.artifacts import load_model

    _, summary = replicated
    aq = summary["aq"]
    awd = Workdir(aq["workdir"])
    prepared = _prepared(awd.root)
    assert prepared.meta["params"]["signal_blocks"] == "all"
    images, labels = prepared.arrays("test")
    x = torch.from_numpy(np.array(images, dtype=np.float32))
    signal = prepared.signal("test")
    j = signal.argmax(1)
    for name, entry in aq["models"].items():
        model, _ = load_model(awd, name, prepared)
        rows = []
        for xi, yi in zip(x, labels):
            xi = xi[None].clone().requires_grad_(True)
            torch.nn.functional.cross_entropy(model(xi), torch.tensor([int(yi)])).backward()
            rows.append(xi.grad.reshape(-1).abs().numpy())
        a = np.stack(rows)
        top = a.argmax(1)
        bottom = a.shape[1] - 1 - a[:, ::-1].argmin(1)  # fastroar's ties: the bottom rank goes to the higher index
        assert entry["aq"]["gradient:loss"]["aq"] == pytest.approx(np.mean(top == j) - np.mean(bottom == j), abs=1e-9)
    kinds = aq["kinds"]
    assert kinds["standard"]["runs"] == 3 and kinds["robust"]["runs"] == 3
    claims = {c["claim"]: c for c in summary["claims"]}
    assert any(c.startswith("AQ of the loss gradient, standard MLP") and claims[c]["reference"] == "-0.52"
               for c in claims)


def test_blockdigits_shares_and_localization_equal_an_independent_computation(replicated):
    from fastroar.engine.workspace import Workdir
    from fastroar.stages.artifacts import load_model

    wd, summary = replicated
    prepared = _prepared(wd)
    images, _ = prepared.arrays("test")
    x = torch.from_numpy(np.array(images, dtype=np.float32) / 255.0)
    signal = prepared.signal("test")
    block = summary["blockdigits"]
    assert set(block["models"]) == {"standard", "robust"}
    for name, got in block["models"].items():
        model, _ = load_model(Workdir(wd), name, prepared)
        g = per_sample_gradients(model, x)
        assert got["signal_share"] == pytest.approx(share(g, signal), abs=1e-5)
        a = np.abs(g)
        for k, loc in got["localization"].items():
            n = int(np.floor(float(k) * a.shape[1] + 0.5))
            top = np.argsort(-a, axis=1, kind="stable")[:, :n]  # ties by lower index, as fastroar ranks
            want = float(np.mean(np.take_along_axis(signal, top, 1).sum(1) / n))
            assert loc == pytest.approx(want, abs=0.01)


def test_diffroar_comparison_and_files(replicated):
    from fastroar.engine.results import read_results
    from fastroar.stages.report import diffroar_rows

    wd, summary = replicated
    df = summary["diffroar"]
    assert df["available"]
    rows = {(r["model"], r["attribution"], r["k"]): r["diffroar"] for r in
            diffroar_rows(read_results(wd / "results" / "results.jsonl").values())}
    assert df["comparison"]
    for c in df["comparison"]:
        assert c["standard"] == pytest.approx(rows[("standard", "gradient", c["k"])])
        assert c["robust"] == pytest.approx(rows[("robust", "gradient", c["k"])])
        assert c["robust_higher"] == (c["robust"] > c["standard"])
    out = wd / "replicate"
    import matplotlib.image as mpimg

    for name in ("leakage_gradients.png", "blockdigits_gradients.png", "blockdigits-top_gradients.png",
                 "diffroar_standard_vs_robust.png"):
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(path)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0
    md = (out / "summary.md").read_text()
    assert f"{summary['leakage']['models']['standard']['by']['gradient:margin']['signal_share']:.3f}" in md
    assert "DiffROAR" in md and "![leakage](leakage_gradients.png)" in md
    # the claims table: every row has its five cells, and the md prints it
    header = ("| claim | setting | reference | fastroar [95% interval] | "
              "agrees? (the interval or test it follows from) |")
    assert header in md
    for c in summary["claims"]:
        assert set(c) == {"claim", "setting", "reference", "fastroar", "agrees"}
        assert f"| {c['claim']} | {c['setting']} | {c['reference']} | {c['fastroar']} | {c['agrees']} |" in md
        # every verdict names the interval or test it follows from (no fixed cut-off, no "2 sigma")
        assert c["agrees"] == "yes" or c["agrees"].startswith(("yes (", "no (", "not comparable", "not decidable",
                                                                "not run: "))
        numeric = "AQ" in c["claim"] or "DiffROAR" in c["claim"] or "localize" in c["claim"] or "top-1" in c["claim"]
        assert not numeric or "interval" in c["agrees"] or c["agrees"].startswith("not"), c
    assert any("DiffROAR" in c["claim"] and "robust models" in c["claim"] for c in summary["claims"])
    variant = summary["variant"]
    assert variant["dataset"]["name"] == "blockdigits-top" and set(variant["models"]) == {"standard", "robust"}


def test_replicate_on_a_fresh_workdir_trains_and_says_diffroar_is_missing(tmp_path):
    from click.testing import CliRunner

    from fastroar.cli import cli
    from tests.conftest import tiny_args

    wd = tmp_path / "fresh"
    res = CliRunner().invoke(cli, ["replicate", "--workdir", str(wd), "--quick", "--no-progress", *tiny_args()])
    assert res.exit_code == 0, res.output
    summary = json.loads((wd / "replicate" / "summary.json").read_text())
    assert (wd / "models" / "standard" / "model.pt").exists() and (wd / "models" / "robust" / "model.pt").exists()
    assert set(summary["blockdigits"]["models"]) == {"standard", "robust"}
    assert summary["diffroar"]["available"] is False and "fastroar run" in summary["diffroar"]["note"]
    assert "fastroar run" in (wd / "replicate" / "summary.md").read_text()
    # no --data-root: the real-data claims are one line per dataset, saying so and how to get the data
    for name in ("blockmnist", "fashion-mnist"):
        assert f"[replicate] real data: {name} not run: no --data-root given" in res.output
        assert summary["real_data"][name]["note"] in (wd / "replicate" / "summary.md").read_text()
