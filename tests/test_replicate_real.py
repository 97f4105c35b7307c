"""`fastroar replicate --data-root ROOT`: the real-data claims (BlockMNIST from MNIST, BlockMNIST-Top,
Fashion-MNIST) on tiny learnable idx files written here, with quick settings; the line per dataset when
the data are absent; `--reference` on a stand-in recipe. Intervals are checked against scipy's beta
quantiles (Clopper-Pearson) and the records of the sub-workdirs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from tests.fixtures import write_idx

QUICK = ["--quick", "--no-progress", "-d", "leakage"]   # a workdir without signal blocks: the real data only
REAL_SETS = ["--real-set", "dataset.params.verify_checksums=false",   # the files written here are not official
             "--real-set", "train.epochs=10"]


def write_learnable_mnist(root: Path, folder: str, n_train: int, n_test: int, seed: int) -> None:
    """MNIST-like idx files whose label is learnable: a bright 6 x 6 patch at a label-dependent place on noise."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            r, c = 2 + 11 * (y // 5), 1 + 5 * (y % 5)
            images[i, r:r + 6, c:c + 6] = 255
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)


@pytest.fixture
def no_installed(monkeypatch, tmp_path):
    """Debian's Fashion-MNIST, where installed, would stand in for an absent one: not in these tests."""
    from fastroar.stages.replicate import real_data

    monkeypatch.setitem(real_data.INSTALLED, "fashion-mnist", tmp_path / "not-installed")


def invoke(*args: str) -> tuple[str, dict]:
    from fastroar.cli import cli

    res = CliRunner().invoke(cli, ["replicate", *args])
    assert res.exit_code == 0, res.output
    wd = Path(args[args.index("--workdir") + 1])
    return res.output, json.loads((wd / "replicate" / "summary.json").read_text())


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_learnable_mnist(root, "MNIST", 300, 100, seed=1)
    write_learnable_mnist(root, "FashionMNIST", 300, 100, seed=2)
    wd = tmp_path_factory.mktemp("real") / "wd"
    output, summary = invoke("--workdir", str(wd), *QUICK, "--data-root", str(root), *REAL_SETS)
    return wd, root, output, summary


def claims_about(summary: dict, dataset: str) -> list[dict]:
    return [c for c in summary["claims"] if c["setting"].startswith(dataset + " ") or
            f"{dataset} read from" in c["setting"] or c["setting"].startswith(dataset + ";")]


def test_blockmnist_accuracy_rows_carry_the_clopper_pearson_interval(real_run):
    _, root, _, summary = real_run
    real = summary["real_data"]["blockmnist"]
    assert real["root"] == str(root.resolve()) and real["n_test"] == 100 and real["min_test_acc"] == 0.99
    rows = [c for c in summary["claims"] if "near-perfect" in c["claim"]]
    assert len(rows) == 2
    for c, (name, m) in zip(rows, real["block"]["models"].items()):
        x, n = round(m["test_acc"] * 100), 100
        lo, hi = stats.beta.ppf(0.025, x, n - x + 1), stats.beta.ppf(0.975, x + 1, n - x)  # Clopper-Pearson
        lo, hi = (0.0 if x == 0 else lo), (1.0 if x == n else hi)
        assert c["fastroar"] == f"{m['test_acc']:.4f} [{lo:.4f}, {hi:.4f}]"
        want = "yes (" if lo > 0.99 else "no (" if hi < 0.99 else "not decidable ("
        assert c["agrees"].startswith(want) and "min_test_acc 0.99" in c["agrees"], c
        assert f"model {name}" in c["setting"]
    assert real["block"]["models"]["standard"]["test_acc"] > 0.5   # the patches are learnable


def test_localization_rows_on_blockmnist_and_top(real_run):
    _, _, _, summary = real_run
    real = summary["real_data"]["blockmnist"]
    assert real["block"]["dataset"]["name"] == "blockmnist" and real["variant"]["dataset"]["name"] == "blockmnist-top"
    loc = [c for c in summary["claims"] if "localize" in c["claim"] and "read from" in c["setting"]]
    assert {c["claim"] for c in loc} == {
        "Sec. 5: standard gradients do not localize on blockmnist", "Sec. 5: robust gradients localize on blockmnist",
        "Sec. 5: standard gradients localize on blockmnist-top", "Sec. 5: robust gradients localize on blockmnist-top"}
    for res in (real["block"], real["variant"]):
        for m in res["models"].values():
            lo, hi = m["localization_ci"]
            assert lo <= m["localization"]["0.1"] <= hi
            row = next(c for c in loc if c["claim"].endswith(" " + res["dataset"]["name"]) and
                       c["claim"].startswith(f"Sec. 5: {'robust' if m['adversary'] else 'standard'}"))
            assert f"[{lo:+.2f}, {hi:+.2f}]" in row["fastroar"]
            expect = bool(m["adversary"]) or res["dataset"]["name"].endswith("-top")
            verdict = "yes (" if (lo > res["chance"]) == expect else "no ("
            if m["test_acc"] < 0.99:    # below the profile's regime: the paper's claim is not about this model
                assert row["agrees"].startswith("not comparable: a model is below the profile's min_test_acc 0.99")
                assert f"'{verdict}" in row["agrees"]
                assert f"acc {m['test_acc']:.2f}" in row["agrees"]
            else:
                assert row["agrees"].startswith(verdict)


@pytest.mark.parametrize("dataset", ["blockmnist", "fashion-mnist"])
def test_robust_vs_standard_rows_follow_the_paired_interval_of_the_records(real_run, dataset):
    from fastroar.engine.results import read_results
    from fastroar.metrics.diffroar import comparison_rows

    wd, _, _, summary = real_run
    real = summary["real_data"][dataset]
    df = real["diffroar"]
    assert df["available"] and [c["k"] for c in df["comparison"]] == [0.1, 0.5]
    records = [r for r in read_results(Path(real["workdir"]) / "results" / "results.jsonl").values()
               if r["attribution"] == "gradient" and not r.get("impute")]
    paired = {c["k"]: c for c in comparison_rows(records) if c["of"] == "gradient"}
    for c in df["comparison"]:
        p = paired[c["k"]]
        sign = 1 if p["a"] != "standard" else -1      # comparison_rows keeps one order per pair
        lo, hi = sorted((sign * p["ci_low"], sign * p["ci_high"]))
        assert c["difference_ci"] == [pytest.approx(lo), pytest.approx(hi)]
    (row,) = [c for c in summary["claims"]
              if "higher DiffROAR" in c["claim"] and f"{dataset} read from" in c["setting"]]
    above = sum(c["difference_ci"][0] > 0 for c in df["comparison"])
    assert row["agrees"].endswith(f"{'yes' if above == 2 else 'no'} (paired 95% interval of robust - standard "
                                  f"above 0 at {above}/2 k)" + ("'" if row["agrees"].startswith("not") else ""))
    if dataset == "blockmnist":   # the profile's regime: both models at min_test_acc 0.99, else not comparable
        accs = [m["test_acc"] for m in real["block"]["models"].values()]
        assert row["agrees"].startswith("not comparable") == (min(accs) < 0.99)
    c0 = df["comparison"][0]
    assert f"paired [{c0['difference_ci'][0]:+.2f}, {c0['difference_ci'][1]:+.2f}]" in row["fastroar"]
    assert (wd / "replicate" / f"real_{dataset}_diffroar.png").read_bytes()[:4] == b"\x89PNG"


def test_real_data_files_and_summary(real_run):
    wd, _, output, summary = real_run
    out = wd / "replicate"
    for name in ("real_blockmnist_gradients.png", "real_blockmnist-top_gradients.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    md = (out / "summary.md").read_text()
    assert "## 6. Real data" in md and "### blockmnist" in md and "### fashion-mnist" in md
    for c in summary["claims"]:
        assert f"| {c['claim']} | {c['setting']} | {c['reference']} | {c['fastroar']} | {c['agrees']} |" in md
    assert "[replicate] real data: blockmnist in" in output


def test_absent_data_and_reference_recipe(tmp_path, monkeypatch, no_installed):
    """Without --data-root: one line per dataset saying so and how to get the data. With ROOT holding
    unofficial MNIST bytes and no Fashion-MNIST: the checksum message and the absent line. --reference: the
    AQ experiment runs the stand-in recipe and its rows name it and its wall time."""
    import yaml

    from fastroar.config.load import config_dir
    from fastroar.stages.replicate import aq

    stand_in = tmp_path / "reference-stand-in.yaml"
    cfg = yaml.safe_load((config_dir() / "leakage-all.yaml").read_text())
    cfg["models"] = cfg["models"][:1] + [m for m in cfg["models"] if m.get("adversary")][:1]   # one per kind
    stand_in.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(aq, "REFERENCE_RECIPE", str(stand_in))

    output, summary = invoke("--workdir", str(tmp_path / "wd"), *QUICK, "--reference")
    for name in ("blockmnist", "fashion-mnist"):
        (row,) = [c for c in summary["claims"] if c["claim"] == f"Sec. 5 on real data: {name}"]
        assert row["agrees"].startswith("not run: no --data-root given") and "fetch-real-data.sh ROOT" in row["agrees"]
        assert summary["real_data"][name]["note"] == row["agrees"]
        assert f"[replicate] real data: {name} not run: no --data-root given" in output
    assert "dataset-fashion-mnist" in summary["real_data"]["fashion-mnist"]["note"]
    a = summary["aq"]
    assert a["reference"] is True and a["recipe"] == "reference-stand-in"
    assert Path(a["workdir"]).parent.name == "reference-stand-in"
    assert "reference-stand-in (the reference notebook's recipe): AQ experiment wall time" in output
    for kind, ref in (("standard", -0.52), ("robust", 1.00)):
        (row,) = [c for c in summary["claims"] if c["claim"].startswith("AQ of the loss gradient") and
                  c["reference"] == f"{ref:+.2f}"]
        k = a["kinds"][kind]
        assert f"recipe reference-stand-in (the notebook's), wall time {a['seconds']:.1f}s" in row["setting"]
        lo, hi = k["aq"]["gradient:loss"]["ci"]
        if k["test_acc"] < 0.995:
            assert row["agrees"].startswith("not comparable") and f"acc {k['test_acc']:.2f}" in row["agrees"]
        elif lo <= ref <= hi:
            assert row["agrees"].startswith("yes (")
        else:
            gap = lo - ref if lo > ref else ref - hi
            assert row["agrees"].endswith(f" by {gap:.2f})"), row

    root = tmp_path / "data"
    write_learnable_mnist(root, "MNIST", 30, 10, seed=3)
    _, summary = invoke("--workdir", str(tmp_path / "wd"), *QUICK, "--data-root", str(root))
    mnist, fashion = summary["real_data"]["blockmnist"], summary["real_data"]["fashion-mnist"]
    assert mnist["note"].startswith("not run: checksum mismatch") and "verify_checksums=false" in mnist["note"]
    assert fashion["note"].startswith(f"not run: ROOT {root} holds no fashion-mnist")
    shutil.rmtree(root)


def test_a_bad_real_data_override_fails_before_anything_runs(tmp_path):
    from fastroar.cli import cli

    root = tmp_path / "data"
    write_learnable_mnist(root, "MNIST", 30, 10, seed=3)
    res = CliRunner().invoke(cli, ["replicate", "--workdir", str(tmp_path / "wd"), *QUICK, "--data-root", str(root),
                                   "--real-set", "train.epochz=1"])
    assert res.exit_code == 2 and res.output.startswith("Error:") and "epochz" in res.output
    assert not (tmp_path / "wd" / "replicate").exists()
