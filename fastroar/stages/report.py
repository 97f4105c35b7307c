"""The report stage: DiffROAR(k) = mean acc(top-k) - mean acc(bottom-k) per (model, attribution), as a
table (stdout and CSV) and a PNG of the curves, plus the signal-block localization and attribution-quality
(AQ) scores where the dataset records where its signal lies, and the base models' accuracies beside the test
split's chance rate (with a WARNING line for an undertrained or non-robust model).
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from fastroar.engine.results import read_results
from fastroar.engine.store import RankStore, SplitArrays
from fastroar.engine.workspace import Workdir
from fastroar.errors import MissingInputError
from fastroar.metrics.aq import attribution_quality, majority_rate
from fastroar.metrics.diffroar import diffroar_rows
from fastroar.metrics.localization import localization
from fastroar.metrics.road import DEFAULT_NOISE
from fastroar.stages.artifacts import checkpoint_path, fill_value, load_prepared, model_warnings
from fastroar.stages.contract import Context, stage


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [list(columns)] + [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path, columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """DiffROAR against k, one curve (with a +-std band) per (model, attribution)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        curves[(r["model"], r["attribution"])].append(r)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for (model, attribution), pts in sorted(curves.items()):
        pts = sorted(pts, key=lambda r: r["k"])
        k = np.array([p["k"] for p in pts])
        m = np.array([p["diffroar"] for p in pts])
        s = np.array([p["std"] for p in pts])
        (line,) = ax.plot(k, m, marker="o", label=f"{model} / {attribution}")
        ax.fill_between(k, m - s, m + s, color=line.get_color(), alpha=0.15)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("k (fraction of coordinates kept)")
    ax.set_ylabel("DiffROAR = acc(top-k) - acc(bottom-k)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


def road_estimates(workdir: Workdir, dataset_key: str, records: Iterable[dict[str, Any]]) -> dict[tuple, float]:
    """ROAD(k) by (model, attribution, k) from <workdir>/results/road.jsonl, for the models (by hash)
    behind `records`; where several noise settings or seeds were estimated, the default noise (0.01)
    and the lowest seed are shown."""
    hashes = {(r["model"], r.get("model_hash")) for r in records}
    best: dict[tuple, tuple] = {}
    for e in read_results(workdir.road_path).values():
        if e.get("dataset_key") != dataset_key or (e["model"], e.get("model_hash")) not in hashes:
            continue
        key = (e["model"], e["attribution"], float(e["k"]))
        rank = (e["noise"] != DEFAULT_NOISE, e["noise"], e["seed"])
        if key not in best or rank < best[key][0]:
            best[key] = (rank, float(e["road"]))
    return {k: v for k, (_, v) in best.items()}


DIFFROAR_COLUMNS = ("model", "attribution", "k", "acc_top", "acc_bottom", "diffroar", "std", "runs")
LOCALIZATION_COLUMNS = ("model", "attribution", "k", "signal_share", "chance")


AQ_COLUMNS = ("model", "attribution", "m", "top_hit", "bottom_hit", "aq")
MODEL_COLUMNS = ("model", "adversary", "test_acc", "robust_test_acc", "chance")


def aq_block(store: RankStore, records: list[dict[str, Any]], signal: np.ndarray, out: Path, log) -> list[dict]:
    """AQ (fastroar.metrics.aq: top-m minus bottom-m hits on the signal block, m its size) per (model,
    attribution) of the test split's rank maps; written to report/aq.csv and printed."""
    rows = []
    for model, attribution in sorted({(r["model"], r["attribution"]) for r in records}):
        ranks = SplitArrays(store.root[store.entry_path(model, attribution)]["test"]).read("ranks")
        rows.append({"model": model, "attribution": attribution, **attribution_quality(ranks, signal)})
    write_csv(rows, out / "aq.csv", AQ_COLUMNS)
    log("\nAttribution quality AQ = top-m hits - bottom-m hits on the signal block (m = its size; test split)")
    log(format_table(rows, AQ_COLUMNS))
    return rows


def base_model_block(cfg: dict[str, Any], workdir: Workdir, prepared, log) -> list[dict[str, Any]]:
    """Each trained base model's clean and adversarial test accuracy beside the test split's chance rate,
    and a WARNING line for a model below train.min_test_acc or at chance under attack."""
    labels = prepared.arrays("test")[1]
    chance = majority_rate(labels)
    rows = []
    for spec in cfg["models"]:
        path = checkpoint_path(workdir, spec["name"])
        if not path.exists():
            continue
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        sm = ckpt["summary"]
        adv = spec.get("adversary")
        rows.append({"model": spec["name"], "adversary": f"{adv['norm']} eps {adv['eps']}" if adv else "-",
                     "test_acc": sm.get("test_acc"), "robust_test_acc": sm.get("robust_test_acc", "-"),
                     "chance": chance, "warnings": model_warnings(cfg, ckpt, chance, len(labels))})
    log("\nBase models (test split; chance = its majority-class rate)")
    log(format_table(rows, MODEL_COLUMNS))
    for r in rows:
        for w in r["warnings"]:
            log(w)
    return rows


@stage("report")
def report(ctx: Context) -> dict[str, Any]:
    """Writes report/diffroar.csv, report/diffroar.png (and localization.csv); prints the tables."""
    cfg, workdir, log = ctx.cfg, ctx.wd, ctx.log
    prepared = load_prepared(cfg, workdir)
    recipe = cfg.get("retrain", {}).get("recipe", "paper")   # paper and fast results are never mixed
    fill = fill_value(cfg, prepared)                          # nor zero-filled and mean-filled ones
    records = [r for r in read_results(workdir.results_path).values() if r["dataset_key"] == prepared.meta["key"]
               and r.get("recipe_name", "paper") == recipe and r.get("fill", 0.0) == fill]
    if not records:
        raise MissingInputError(f"no retraining results (recipe {recipe}, fill {fill:g}) in {workdir.results_path}; "
                                f"run `fastroar retrain --recipe {recipe} --workdir {workdir.root}` (with the same "
                                "--fill) first")
    rows = diffroar_rows(records)
    columns = DIFFROAR_COLUMNS
    road = road_estimates(workdir, prepared.meta["key"], records)
    if road:  # `fastroar estimate` has run: its ROAD(k) beside DiffROAR(k)
        for r in rows:
            r["road"] = road.get((r["model"], r["attribution"], r["k"]), "")
        columns = DIFFROAR_COLUMNS + ("road",)
    out = workdir.report_dir
    write_csv(rows, out / "diffroar.csv", columns)
    png = out / "diffroar.png"
    plot_curves(rows, png, f"DiffROAR on {cfg['dataset']['name']}")
    log("DiffROAR (acc(top-k) - acc(bottom-k); > 0: the attribution ranks discriminative pixels first)")
    if road:
        log("ROAD: the retraining-free estimate (`fastroar estimate`): acc of the base model on top-k vs "
            "bottom-k kept, the rest imputed")
    log(format_table(rows, columns))
    result: dict[str, Any] = {"diffroar": rows, "csv": out / "diffroar.csv", "png": png}
    signal = prepared.signal("test")
    if signal is not None:
        store = RankStore(str(workdir.store_path), mode="r")
        chance = float(signal.sum(1).mean() / signal.shape[1])
        loc_rows = []
        for model, attribution in sorted({(r["model"], r["attribution"]) for r in records}):
            ranks = SplitArrays(store.root[store.entry_path(model, attribution)]["test"]).read("ranks")
            for k, share in zip(cfg["levels"], localization(ranks, signal, cfg["levels"])):
                loc_rows.append({"model": model, "attribution": attribution, "k": k, "signal_share": share,
                                 "chance": chance})
        write_csv(loc_rows, out / "localization.csv", LOCALIZATION_COLUMNS)
        log("\nSignal-block localization (share of top-k coordinates inside the signal block; test split)")
        log(format_table(loc_rows, LOCALIZATION_COLUMNS))
        result["localization"] = loc_rows
        result["aq"] = aq_block(store, records, signal, out, log)
    result["models"] = base_model_block(cfg, workdir, prepared, log)
    log(f"\nreport: {out / 'diffroar.csv'}\nplot: {png}")
    return result
