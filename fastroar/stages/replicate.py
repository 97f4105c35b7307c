"""`fastroar replicate`: the paper's findings (Shah, Jain & Netrapalli 2021) reproduced on data that runs here,
each beside the paper's (or the reference code's) number, in one table of claims.

Written to <workdir>/replicate/ as PNGs plus summary.json and summary.md:

1. Fig. 5 / Theorem 1 (feature leakage) on the synthetic data of eq. (2) (configs/leakage.yaml:
   d = 10 blocks, d~ = 1, eta = 0): a linear model, a standard one-hidden-layer MLP and a PGD-trained
   (l-inf) MLP, trained by fastroar's train stage into <workdir>/replicate/leakage/. For each model and for
   both the theory's margin gradient (gradient:margin) and |d logit_yhat/dx| (gradient): the share of
   |gradient| mass on the signal block, the other task-relevant blocks and the noise blocks, the top-1 hit
   rate and AQ; DiffROAR of both MLPs (precompute + retrain stages) beside its analytic value
   (fastroar.metrics.aq.leakage_diffroar_expectation: ceiling 1 - chance = 0.5, perfect leakage 0.1).
2. The reference notebook's synthetic score (configs/leakage-all.yaml): AQ = P(top-1 = j*) - P(bottom-1 = j*)
   of the loss gradient on x = y*e_j with j over all d coordinates, three seeds per model (mean +- std).
3. BlockMNIST-style (the workdir's dataset when it records signal blocks, else skipped) and its other
   variant (blockdigits <-> blockdigits-top, blockmnist <-> blockmnist-top, trained into
   <workdir>/replicate/<variant>/): |input gradient| grids, localization and AQ (top-m vs bottom-m, m = the
   block size) per model. Paper (Sec. 5): standard gradients localize on the -Top variant, not on the
   random one; robust ones on both.
4. DiffROAR standard vs robust from the workdir's retraining results (without --quick, replicate runs the
   precompute and retrain stages for `gradient` when they are missing), with the ROAD estimate beside it.

Every base model's clean accuracy, its accuracy under attack and the test split's chance rate are printed
together; a model below its config's train.min_test_acc, or at chance under attack, gets a WARNING line.
Nothing is tuned to agree with the paper: the settings are the shipped configs' (or --quick's tiny ones).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import stats

from fastroar.attribution import attribute
from fastroar.engine.kernels import rank
from fastroar.engine.results import read_results
from fastroar.engine.workspace import Workdir, atomic_write_text
from fastroar.errors import FastroarError
from fastroar.keys import digest
from fastroar.method import to_model_input
from fastroar.metrics.aq import aq_hits, attribution_quality, leakage_diffroar_expectation, majority_rate
from fastroar.metrics.diffroar import comparison_rows, diffroar_rows
from fastroar.metrics.intervals import differences_interval
from fastroar.metrics.localization import localization, localization_shares
from fastroar.stages import leakage_claim
from fastroar.stages.artifacts import load_model, load_prepared, model_warnings
from fastroar.stages.contract import Context, resolve_config, save_config, stage
from fastroar.stages.estimate import estimate
from fastroar.stages.precompute import precompute
from fastroar.stages.prepare import prepare
from fastroar.stages.report import p_text, plot_curves, road_estimates
from fastroar.stages.retrain import retrain
from fastroar.stages.train import train

QUICK_LEAKAGE = ["dataset.params.n_train=400", "dataset.params.n_test=200", "model.params.width=64",
                 "train.epochs=4"]
N_GRID = 8  # test images in the BlockMNIST-style grid
LEAKAGE_ATTRIBUTIONS = ("gradient:margin", "gradient")  # the theory's gradient first
AQ_ATTRIBUTIONS = ("gradient:loss", "gradient:margin", "gradient")  # the notebook's first
REFERENCE_AQ = {"standard": -0.52, "robust": 1.00}  # notebook 02_fig_in_synthetic_data.ipynb, cells 16-18
OTHER_VARIANT = {"blockdigits": "blockdigits-top", "blockdigits-top": "blockdigits",
                 "blockmnist": "blockmnist-top", "blockmnist-top": "blockmnist"}


def signed_gradient(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """d logit_yhat / dx (signed), yhat the predicted label, in eval mode; |.| of it is fastroar's
    `gradient` attribution."""
    return attribute(model, x, "gradient:signed").detach()


def signed_margin_gradient(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """d (z_yhat - max_{c != yhat} z_c) / dx (signed); |.| of it is `gradient:margin`."""
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        top2 = model(x).topk(2, dim=1).values
        (g,) = torch.autograd.grad((top2[:, 0] - top2[:, 1]).sum(), x)
    return g.detach()


SIGNED = {"gradient": signed_gradient, "gradient:margin": signed_margin_gradient}


def mass_shares(grad: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per sample: sum of |grad| inside `region` / sum of |grad| (NaN where the gradient is all zero)."""
    a = np.abs(np.asarray(grad, np.float64)).reshape(len(grad), -1)
    total = a.sum(1)
    inside = (a * region.reshape(len(grad), -1)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)


def ranks_of(scores: np.ndarray) -> np.ndarray:
    """fastroar's ranks (0 = largest score, ties to the lower index) of (N, d) scores."""
    return np.asarray(rank(torch.from_numpy(np.ascontiguousarray(scores, np.float32))))


def model_status(cfg: dict[str, Any], ckpt: dict[str, Any], labels: np.ndarray, x: torch.Tensor,
                 model: torch.nn.Module) -> dict[str, Any]:
    """Clean accuracy (recomputed), accuracy under attack (from training), chance and warnings of a model."""
    chance = majority_rate(labels)
    with torch.no_grad():
        acc = float((model(x).argmax(1).numpy() == labels).mean())
    ck = {**ckpt, "summary": {**ckpt["summary"], "test_acc": acc}}
    return {"test_acc": acc, "robust_test_acc": ckpt["summary"].get("robust_test_acc"), "chance": chance,
            "warnings": model_warnings(cfg, ck, chance, len(labels))}


def _png(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _sub_workdir(out_dir: Path, name: str, cfgs: Sequence[dict[str, Any]], quick: bool) -> Workdir:
    """<out>/<name>/<digest of the configs>: quick and full settings (or edited configs) never collide."""
    return Workdir(out_dir / name / f"{'quick-' if quick else ''}{digest(list(cfgs), 10)}", create=True)


# --------------------------------------------------------------------------- 1. leakage (Fig. 5)

def leakage_experiment(out_dir: Path, *, quick: bool, device: str | None, progress: bool, instances: int,
                       log: Callable) -> dict[str, Any]:
    sets = list(QUICK_LEAKAGE if quick else [])
    if device:
        sets.append(f"device={device}")
    cfg_mlp = resolve_config(dataset="leakage", overrides=sets + ["loader=resident"])
    cfg_lin = resolve_config(dataset="leakage", overrides=sets + [
        "loader=resident", "model.arch=linear", "model.params={}", "models=[{name: linear}]"])
    wd = _sub_workdir(out_dir, "leakage", [cfg_lin, cfg_mlp], quick)
    ctx_mlp, ctx_lin = (Context(c, wd, log, progress) for c in (cfg_mlp, cfg_lin))
    prepared, _ = prepare(ctx_mlp)
    t0 = time.perf_counter()
    train(ctx_lin)
    train(ctx_mlp)
    log(f"[replicate] leakage models ready in {time.perf_counter() - t0:.1f}s")

    images, labels = prepared.arrays("test")
    x = to_model_input(images)
    signal = prepared.signal("test")                      # (N, d*d~)
    n, dd = signal.shape
    p = prepared.meta["params"]
    d, bd = int(p["d"]), int(p["block_dim"])
    relevant = np.zeros(dd, bool)
    relevant[: (d // 2) * bd] = True                      # blocks 0 .. d/2-1 can hold the signal
    models = [("linear", "linear"), ("standard", "standard MLP"), ("robust", "PGD-trained MLP")]
    adversaries = {m["name"]: m.get("adversary") for m in cfg_mlp["models"]}
    res: dict[str, Any] = {"config": {"dataset": prepared.meta["params"], "mlp": cfg_mlp["model"],
                                      "train": cfg_mlp["train"], "adversaries": adversaries},
                           "workdir": str(wd.root), "models": {}, "attributions": list(LEAKAGE_ATTRIBUTIONS)}
    grads: dict[str, dict[str, np.ndarray]] = {a: {} for a in LEAKAGE_ATTRIBUTIONS}
    for name, label in models:
        model, ckpt = load_model(wd, name, prepared)
        entry = {"label": label, "hash": ckpt["hash"],
                 **model_status(cfg_lin if name == "linear" else cfg_mlp, ckpt, labels, x, model), "by": {}}
        for a in LEAKAGE_ATTRIBUTIONS:
            g = SIGNED[a](model, x).numpy().reshape(n, dd)
            grads[a][name] = g
            share = mass_shares(g, signal)
            a_abs = np.abs(g)
            entry["by"][a] = {
                "signal_share": float(np.nanmean(share)),
                "other_relevant_share": float(np.nanmean(mass_shares(g, relevant[None] & ~signal))),
                "noise_share": float(np.nanmean(mass_shares(g, np.broadcast_to(~relevant, signal.shape)))),
                "zero_gradient_instances": int(np.isnan(share).sum()),
                # the paper's k = 1 block view: how often the largest |gradient| lies on the signal block
                "top1_on_signal": float(np.mean(signal[np.arange(n), a_abs.argmax(1)])),
                "top1_count": int(signal[np.arange(n), a_abs.argmax(1)].sum()), "n": int(n),
                # spread of |gradient| across instances (0: the same attribution for every instance)
                "instance_spread": float(np.max(np.abs(a_abs - a_abs[:1])) / max(float(np.abs(a_abs[0]).max()), 1e-30)),
                **{f"aq_{k}": v for k, v in attribution_quality(ranks_of(a_abs), signal).items()},
            }
        res["models"][name] = entry
    m = res["models"]
    res["chance_share"] = 1.0 / (d // 2)
    th = m["standard"]["by"][LEAKAGE_ATTRIBUTIONS[0]], m["robust"]["by"][LEAKAGE_ATTRIBUTIONS[0]]
    res["robust_more_concentrated"] = th[1]["signal_share"] > th[0]["signal_share"]
    res["robust_concentrates"] = th[1]["signal_share"] > 0.5  # most of its mass on the signal block
    res["standard_leaks"] = th[0]["other_relevant_share"] > th[0]["noise_share"] and th[0]["signal_share"] < 0.5
    res["diffroar"] = leakage_diffroar(ctx_mlp)
    chance = m["standard"]["chance"]
    res["analytic"] = {"ceiling": leakage_diffroar_expectation(1.0, 0.0, chance),
                       "perfect_leakage": leakage_diffroar_expectation(1.0 / (d // 2), 0.0, chance),
                       "chance": chance, "k": 1.0 / (d * bd)}
    png = out_dir / "leakage_gradients.png"
    plot_leakage(grads[LEAKAGE_ATTRIBUTIONS[0]], signal, [lbl for _, lbl in models], [nm for nm, _ in models],
                 res, instances, d, bd, png)
    res["png"] = str(png)
    return res


def leakage_diffroar(ctx: Context) -> list[dict[str, Any]]:
    """DiffROAR of the standard and robust MLPs' margin and logit gradients on the leakage data (the config's
    levels, retrain settings and seeds; k = 1/d keeps one coordinate), by the precompute and retrain stages."""
    t0 = time.perf_counter()
    precompute(ctx, attributions=list(LEAKAGE_ATTRIBUTIONS))
    records = retrain(ctx, attributions=list(LEAKAGE_ATTRIBUTIONS))
    ctx.log(f"[replicate] leakage DiffROAR in {time.perf_counter() - t0:.1f}s")
    return diffroar_rows(records)


def plot_leakage(grads: dict[str, np.ndarray], signal: np.ndarray, labels: Sequence[str], names: Sequence[str],
                 res: dict[str, Any], instances: int, d: int, bd: int, path: Path) -> None:
    plt = _mpl()
    rows = min(instances, len(signal))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 0.5 + 0.28 * rows + 1.2), dpi=110)
    for ax, name, label in zip(np.atleast_1d(axes), names, labels):
        g = grads[name][:rows]
        scale = np.abs(g).max(1, keepdims=True)
        img = np.divide(g, scale, out=np.zeros_like(g), where=scale > 0)
        ax.imshow(img, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        r, c = np.nonzero(signal[:rows])
        ax.scatter(c, r, marker="s", s=60, facecolors="none", edgecolors="black", linewidths=1.4)
        ax.axvline(d // 2 * bd - 0.5, color="gray", ls="--", lw=1)
        share = res["models"][name]["by"][LEAKAGE_ATTRIBUTIONS[0]]["signal_share"]
        ax.set_title(f"{label}\nsignal-block share {share:.2f}", fontsize=10)
        ax.set_xlabel("coordinate (left of dashed line: task-relevant blocks)")
        ax.set_xticks(range(signal.shape[1]))
        ax.set_yticks(range(rows))
    np.atleast_1d(axes)[0].set_ylabel("test instance")
    fig.suptitle("Margin gradients on eq. (2) data (row-normalised; square = signal coordinate)", fontsize=11)
    fig.tight_layout()
    _png(fig, path)


# --------------------------------------------------------------------------- 2. the notebook's AQ

def aq_experiment(out_dir: Path, *, quick: bool, device: str | None, progress: bool, log: Callable) -> dict[str, Any]:
    """AQ of the MLPs of configs/leakage-all.yaml (per seed; mean and std over seeds per kind)."""
    sets = list(QUICK_LEAKAGE if quick else []) + ["loader=resident"]
    if device:
        sets.append(f"device={device}")
    cfg = resolve_config(dataset="leakage-all", overrides=sets)
    wd = _sub_workdir(out_dir, "leakage-all", [cfg], quick)
    ctx = Context(cfg, wd, log, progress)
    prepared, _ = prepare(ctx)
    t0 = time.perf_counter()
    train(ctx)
    log(f"[replicate] leakage-all models ready in {time.perf_counter() - t0:.1f}s")
    images, labels = prepared.arrays("test")
    x = to_model_input(images)
    y = torch.from_numpy(np.array(labels))   # a copy: the prepared arrays are read-only memory maps
    signal = prepared.signal("test")
    res: dict[str, Any] = {"config": {"dataset": prepared.meta["params"], "model": cfg["model"], "train": cfg["train"],
                                      "models": cfg["models"]},
                           "workdir": str(wd.root), "attributions": list(AQ_ATTRIBUTIONS), "models": {}, "kinds": {}}
    per_image: dict[str, dict[str, list[np.ndarray]]] = {"standard": {}, "robust": {}}   # kind -> a -> per model
    for spec in cfg["models"]:
        model, ckpt = load_model(wd, spec["name"], prepared)
        entry = {"kind": "robust" if spec.get("adversary") else "standard", "seed": int(spec.get("seed", 0)),
                 **model_status(cfg, ckpt, labels, x, model), "aq": {}}
        for a in AQ_ATTRIBUTIONS:
            scores = attribute(model, x, a, labels=y).reshape(len(x), -1).detach().numpy()
            ranks = ranks_of(scores)
            entry["aq"][a] = attribution_quality(ranks, signal)
            top, bottom = aq_hits(ranks, signal)
            per_image[entry["kind"]].setdefault(a, []).append(top - bottom)
        res["models"][spec["name"]] = entry
    for kind in ("standard", "robust"):
        members = [m for m in res["models"].values() if m["kind"] == kind]
        if not members:
            continue
        res["kinds"][kind] = {"runs": len(members), "test_acc": float(np.mean([m["test_acc"] for m in members])),
                              "chance": members[0]["chance"], "aq": {}}
        for a in AQ_ATTRIBUTIONS:
            v = np.array([m["aq"][a]["aq"] for m in members])
            se = max(m["aq"][a]["aq_se"] for m in members)
            # AQ has DiffROAR's structure (a score in [-1, 1] per test point and model): the same interval,
            # over the kind's models (seeds) and the test points
            iv = differences_interval(np.stack(per_image[kind][a]))
            res["kinds"][kind]["aq"][a] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                                           "se": se,
                                           "top_hit": float(np.mean([m["aq"][a]["top_hit"] for m in members])),
                                           "bottom_hit": float(np.mean([m["aq"][a]["bottom_hit"] for m in members])),
                                           "ci": [iv.lo, iv.hi], "interval": iv.method}
    return res


# --------------------------------------------------------------------------- 3. BlockMNIST-style

def block_experiment(ctx: Context, out_dir: Path, png_name: str | None = None) -> dict[str, Any]:
    """|input gradient| of each base model of ctx's workdir (trained when absent): grid, mass share,
    localization per level and AQ (top-m vs bottom-m, m = the signal block's size). The grid is
    `png_name`, by default <dataset>_gradients.png (blockdigits_gradients.png, blockmnist_gradients.png)."""
    cfg, wd = ctx.cfg, ctx.wd
    png_name = png_name or f"{cfg['dataset']['name']}_gradients.png"
    prepared, _ = prepare(ctx)
    train(ctx)  # skips models that exist
    images, labels = prepared.arrays("test")
    signal = prepared.signal("test")
    x = to_model_input(images)
    res: dict[str, Any] = {"dataset": cfg["dataset"], "levels": list(cfg["levels"]), "models": {},
                           "chance": float(signal.sum(1).mean() / signal.shape[1]), "workdir": str(wd.root)}
    grads = {}
    for spec in cfg["models"]:
        name = spec["name"]
        model, ckpt = load_model(wd, name, prepared)
        g = signed_gradient(model, x).numpy().reshape(len(x), -1)
        grads[name] = np.abs(g)
        ranks = ranks_of(np.abs(g))
        res["models"][name] = {
            "adversary": spec.get("adversary"), "hash": ckpt["hash"], **model_status(cfg, ckpt, labels, x, model),
            "signal_share": float(np.nanmean(mass_shares(g, signal))),
            "localization": dict(zip(map(str, cfg["levels"]), localization(ranks, signal, cfg["levels"]))),
            "localization_ci": share_interval(localization_shares(ranks, signal, cfg["levels"][0])),
            "aq": attribution_quality(ranks, signal),
        }
    png = out_dir / png_name
    plot_block_grid(images, signal, grads, labels, prepared.shape, png)
    res["png"] = str(png)
    std = [n for n, m in res["models"].items() if not m["adversary"]]
    rob = [n for n, m in res["models"].items() if m["adversary"]]
    if std and rob:
        s, r = res["models"][std[0]], res["models"][rob[0]]
        res["robust_localizes_better"] = {k: r["localization"][k] > s["localization"][k] for k in s["localization"]}
        res["standard_near_chance"] = {k: abs(v - res["chance"]) < 0.1 for k, v in s["localization"].items()}
    return res


def variant_experiment(ctx: Context, out_dir: Path, quick: bool) -> dict[str, Any] | None:
    """block_experiment on the other signal-position variant of the workdir's dataset (same settings),
    trained into <out>/<variant>/<digest>."""
    other = OTHER_VARIANT.get(ctx.cfg["dataset"]["name"])
    if other is None:
        return None
    cfg = json.loads(json.dumps(ctx.cfg))
    cfg["dataset"]["name"] = other
    cfg.pop("store", None)  # the sub-workdir keeps its own rank store
    wd = _sub_workdir(out_dir, other, [cfg], quick)
    return block_experiment(Context(cfg, wd, ctx.log, ctx.progress), out_dir, f"{other}_gradients.png")


def plot_block_grid(images: np.ndarray, signal: np.ndarray, grads: dict[str, np.ndarray], labels: np.ndarray,
                    shape: Sequence[int], path: Path) -> None:
    from matplotlib.patches import Rectangle

    plt = _mpl()
    C, H, W = shape
    n = min(N_GRID, len(images))
    rows = 1 + len(grads)
    fig, axes = plt.subplots(rows, n, figsize=(1.3 * n, 2.4 * rows), dpi=110, squeeze=False)
    for j in range(n):
        img = images[j].astype(np.float32)
        img = img.transpose(1, 2, 0) if C > 1 else img[0]
        sig = signal[j].reshape(C, H, W).any(0)
        ys, xs = np.nonzero(sig)
        box = (xs.min() - 0.5, ys.min() - 0.5, xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        axes[0, j].imshow(img / (img.max() or 1), cmap="gray")
        axes[0, j].set_title(f"label {labels[j]}", fontsize=8)
        for i, (name, g) in enumerate(grads.items(), start=1):
            a = g[j].reshape(C, H, W).sum(0)
            axes[i, j].imshow(a / (a.max() or 1), cmap="hot", vmin=0, vmax=1)
            if j == 0:
                axes[i, j].set_ylabel(name, fontsize=9)
        for i in range(rows):
            axes[i, j].add_patch(Rectangle(box[:2], box[2], box[3], fill=False, ec="cyan", lw=1.2))
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=9)
    fig.suptitle("|input gradient| per model (cyan box: signal block)", fontsize=10)
    fig.tight_layout()
    _png(fig, path)


# --------------------------------------------------------------------------- 4. DiffROAR

def diffroar_experiment(ctx: Context, prepared_key: str, hashes: dict[str, str], out_dir: Path,
                        fill_missing: bool = False) -> dict[str, Any]:
    cfg, wd, log = ctx.cfg, ctx.wd, ctx.log

    def ours() -> list[dict[str, Any]]:
        return [r for r in read_results(wd.results_path).values()   # zero fill: imputed records are section 5's
                if r.get("dataset_key") == prepared_key and hashes.get(r["model"]) == r.get("model_hash")
                and not r.get("impute")]

    records = ours()
    if fill_missing and not any(r["attribution"] == "gradient" for r in records):
        t0 = time.perf_counter()
        precompute(ctx, attributions=["gradient"])
        retrain(ctx, attributions=["gradient"])
        log(f"[replicate] DiffROAR of gradient on {cfg['dataset']['name']} in {time.perf_counter() - t0:.1f}s")
        records = ours()
    if not records:
        return {"available": False,
                "note": f"no retraining results for these models in {wd.results_path}; run `fastroar run "
                        f"--workdir {wd.root}` first, then rerun `fastroar replicate`"}
    rows = diffroar_rows(records)
    paired = {(c["of"], c["a"], c["b"], c["k"]): c for c in comparison_rows(records)}
    try:  # the cheap estimate beside it (skips what `fastroar estimate` already wrote)
        quiet = Context(cfg, wd, log=lambda *a, **k: None, progress=ctx.progress)
        estimate(quiet, models=sorted(hashes), attributions=["gradient"], levels=sorted({r["k"] for r in rows}))
    except FastroarError as e:
        log(f"[replicate] no ROAD estimate: {e}")
    road = road_estimates(wd, prepared_key, records)
    for r in rows:
        if (r["model"], r["attribution"], r["k"]) in road:
            r["road"] = road[(r["model"], r["attribution"], r["k"])]
    std = [m["name"] for m in cfg["models"] if not m.get("adversary")]
    rob = [m["name"] for m in cfg["models"] if m.get("adversary")]
    comparison = []
    if std and rob:
        by = {(r["model"], r["attribution"], r["k"]): r for r in rows}
        for k in sorted({r["k"] for r in rows}):
            s, r = by.get((std[0], "gradient", k)), by.get((rob[0], "gradient", k))
            if s and r:
                test = paired_test(paired, "gradient", rob[0], std[0], k)
                comparison.append({"k": k, "standard": s["diffroar"], "standard_std": s["std"],
                                   "robust": r["diffroar"], "robust_std": r["std"],
                                   "standard_ci": [s["ci_low"], s["ci_high"]], "robust_ci": [r["ci_low"], r["ci_high"]],
                                   "difference_ci": [test["ci_low"], test["ci_high"]] if test else None,
                                   "p_two_sided": test["p_two_sided"] if test else None,
                                   "robust_higher": r["diffroar"] > s["diffroar"], "runs": min(s["runs"], r["runs"]),
                                   "standard_road": s.get("road"), "robust_road": r.get("road")})
                c = comparison[-1]
                if c["standard_road"] is not None and c["robust_road"] is not None:
                    c["road_same_order"] = (c["robust_road"] > c["standard_road"]) == c["robust_higher"]
    png = out_dir / "diffroar_standard_vs_robust.png"
    plot_curves(rows, png, f"DiffROAR on {cfg['dataset']['name']}: standard vs robust")
    return {"available": True, "rows": rows, "comparison": comparison, "png": str(png),
            "robust_higher_at_every_k": bool(comparison) and all(c["robust_higher"] for c in comparison),
            "significantly_higher": sum(1 for c in comparison if c["difference_ci"] and c["difference_ci"][0] > 0)}


def paired_test(paired: dict[tuple, dict[str, Any]], of: str, a: str, b: str, k: float) -> dict[str, Any] | None:
    """The paired comparison a - b (comparison_rows keeps one order per pair: flipped here when needed)."""
    if (of, a, b, k) in paired:
        return paired[(of, a, b, k)]
    c = paired.get((of, b, a, k))
    if c is None:
        return None
    return c | {"a": a, "b": b, "difference": -c["difference"], "ci_low": -c["ci_high"], "ci_high": -c["ci_low"]}


# --------------------------------------------------------------------------- driver

@stage("replicate")
def replicate(ctx: Context, *, quick: bool = False, instances: int = 20) -> dict[str, Any]:
    """Runs the experiments; writes <workdir>/replicate/{*.png, summary.json, summary.md}.
    The workdir's config (its device setting included) also sets the leakage models' device."""
    cfg, wd, log, progress = ctx.cfg, ctx.wd, ctx.log, ctx.progress
    device = None if cfg["device"] == "auto" else cfg["device"]
    t0 = time.perf_counter()
    if not (wd.root / "config.yaml").exists():
        save_config(ctx)
    out_dir = wd.root / "replicate"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"workdir": str(wd.root), "quick": quick, "out_dir": str(out_dir)}

    t = time.perf_counter()
    summary["leakage"] = leakage_experiment(out_dir, quick=quick, device=device, progress=progress,
                                            instances=instances, log=log)
    summary["leakage"]["seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    summary["aq"] = aq_experiment(out_dir, quick=quick, device=device, progress=progress, log=log)
    summary["aq"]["seconds"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    if _has_signal(cfg):
        summary["blockdigits"] = block_experiment(ctx, out_dir)
        summary["variant"] = variant_experiment(ctx, out_dir, quick)
        summary["blockdigits"]["seconds"] = round(time.perf_counter() - t, 1)
        key = load_prepared(cfg, wd).meta["key"]
        hashes = {n: m["hash"] for n, m in summary["blockdigits"]["models"].items()}
        summary["diffroar"] = diffroar_experiment(ctx, key, hashes, out_dir, fill_missing=not quick)
        t = time.perf_counter()
        summary["leakage_control"] = leakage_claim.leakage_control(ctx, fill_missing=not quick)
        summary["leakage_control"]["seconds"] = round(time.perf_counter() - t, 1)
    else:
        note = (f"the workdir's dataset {cfg['dataset']['name']!r} records no signal blocks; use a workdir "
                "of blockdigits / blockmnist (e.g. a fresh --workdir) for the BlockMNIST and DiffROAR experiments")
        summary["blockdigits"] = {"skipped": note}
        summary["variant"] = None
        summary["diffroar"] = {"available": False, "note": note}
    summary["claims"] = claims(summary)
    summary["warnings"] = [w for w in _all_warnings(summary)]
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    md = summary_markdown(summary)
    atomic_write_text(out_dir / "summary.md", md)
    log(md)
    return summary


def _has_signal(cfg: dict[str, Any]) -> bool:
    return cfg["dataset"]["name"] in OTHER_VARIANT


def _all_warnings(s: dict[str, Any]):
    names = {"leakage": "leakage", "aq": "leakage-all"}
    for part in ("leakage", "aq", "blockdigits", "variant"):
        res = s.get(part) or {}
        label = names.get(part) or (res.get("dataset") or {}).get("name", part)
        for m in (res.get("models") or {}).values():
            yield from (f"[{label}] {w}" for w in m.get("warnings", []))


# --------------------------------------------------------------------------- the claims table

def _pm(mean: float, std: float | None) -> str:
    return f"{mean:+.2f}" if std is None else f"{mean:+.2f} ± {std:.2f}"


def _ci(lo: float, hi: float) -> str:
    return f"[{lo:+.2f}, {hi:+.2f}]"


def _agree_interval(lo: float, hi: float, ref: float, what: str = "95% interval") -> str:
    """'yes' when the row's interval (named in the verdict) contains the reference value, else 'no' and why."""
    if any(math.isnan(v) for v in (lo, hi)):
        return "not decidable: no interval (one run)"
    if lo <= ref <= hi:
        return f"yes ({what} {_ci(lo, hi)} contains {ref:+.2f})"
    side = "above" if lo > ref else "below"
    return f"no ({what} {_ci(lo, hi)} lies {side} {ref:+.2f})"


def share_interval(shares: np.ndarray) -> list[float]:
    """95% t-interval of the mean of per-test-point shares (scipy's one-sample t; the points are independent
    draws of the test distribution); [nan, nan] for fewer than two points. A constant sample gives its value."""
    x = np.asarray(shares, dtype=float)
    if x.size < 2:
        return [math.nan, math.nan]
    if np.all(x == x[0]):
        return [float(x[0]), float(x[0])]
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    return [float(ci.low), float(ci.high)]


def _agree_localization(ci: list[float], chance: float, expect: bool) -> str:
    """Localizes = the 95% interval of the top-k signal share lies above chance; does not localize = it
    contains chance (or lies below)."""
    lo, hi = ci
    if math.isnan(lo):
        return "not decidable: no interval"
    above = lo > chance
    verdict = "yes" if above == expect else "no"
    where = "lies above" if above else "contains" if lo <= chance <= hi else "lies below"
    return f"{verdict} (95% t-interval over test points {_ci(lo, hi)} {where} chance {chance:.2f})"


def _agree_top1(count: int, n: int, ref: float) -> str:
    """Clopper-Pearson 95% interval of P(top-1 = j*) from count of n test points, against the reference."""
    ci = stats.binomtest(count, n).proportion_ci(0.95, method="exact")
    return _agree_interval(ci.low, ci.high, ref, "Clopper-Pearson 95% interval")


CONVERGED_ACC = 0.95  # the reference's models reach clean accuracy 1.0; below this a score is not comparable


def _agree_trained(kind: dict[str, Any], verdict: str) -> str:
    """The verdict, unless the models behind it did not learn the task: a score of a model at chance
    says nothing about a trained one's attribution, so it cannot agree with the reference's."""
    if kind["test_acc"] >= CONVERGED_ACC:
        return verdict
    return (f"not comparable: the models did not converge (acc {kind['test_acc']:.2f}, chance "
            f"{kind['chance']:.2f}); the number would be '{verdict}'")


def claims(s: dict[str, Any]) -> list[dict[str, str]]:
    """One row per finding: claim (and where it comes from) | setting | reference | fastroar | agrees?"""
    rows: list[dict[str, str]] = []
    aq = s["aq"]
    p = aq["config"]["dataset"]
    width, ep = aq["config"]["model"]["params"].get("width"), aq["config"]["train"]["epochs"]
    for kind, label in (("standard", "standard MLP"), ("robust", "l-inf PGD MLP")):
        k = aq["kinds"].get(kind)
        if not k:
            continue
        v = k["aq"]["gradient:loss"]
        rows.append({"claim": f"AQ of the loss gradient, {label} (notebook 02, cells 16-18)",
                     "setting": f"x = y·e_j, j over all d = {p['d']}; width {width}, {ep} epochs, {k['runs']} seeds; "
                                f"acc {k['test_acc']:.2f} (chance {k['chance']:.2f})",
                     "reference": f"{REFERENCE_AQ[kind]:+.2f}", "fastroar": f"{v['mean']:+.2f} {_ci(*v['ci'])}",
                     "agrees": _agree_trained(k, _agree_interval(*v["ci"], REFERENCE_AQ[kind]))})
    lk = s["leakage"]
    lp = lk["config"]["dataset"]
    setting = f"eq. (2), d = {lp['d']}, d~ = {lp['block_dim']}, η = {lp['eta']}; margin gradient"
    lin = lk["models"]["linear"]["by"]["gradient:margin"]
    rows.append({"claim": "Fig. 5: a linear model's gradient is the same for every instance",
                 "setting": setting + f"; acc {lk['models']['linear']['test_acc']:.2f}",
                 "reference": "spread 0", "fastroar": f"spread {lin['instance_spread']:.1e}",
                 "agrees": "yes" if lin["instance_spread"] < 1e-5 else "no"})
    std_m, rob_m = lk["models"]["standard"], lk["models"]["robust"]
    sb, rb = std_m["by"]["gradient:margin"], rob_m["by"]["gradient:margin"]
    rows.append({"claim": "Fig. 5 / Thm. 1: a standard MLP's gradient leaks over the d/2 task-relevant blocks",
                 "setting": setting + f"; acc {std_m['test_acc']:.2f} (chance {std_m['chance']:.2f})",
                 "reference": f"signal share ≈ {lk['chance_share']:.2f} (= 2/d), mass on relevant blocks",
                 "fastroar": f"signal {sb['signal_share']:.2f}, other relevant {sb['other_relevant_share']:.2f}, "
                             f"noise {sb['noise_share']:.2f}; top-1 = j* {sb['top1_on_signal']:.2f}",
                 "agrees": "yes" if lk["standard_leaks"] else "no"})
    rows.append({"claim": "Fig. 5: a robust MLP's top-1 gradient coordinate is the signal one",
                 "setting": setting + f"; acc {rob_m['test_acc']:.2f}, under attack "
                            f"{_f(rob_m['robust_test_acc'])} (chance {rob_m['chance']:.2f})",
                 "reference": "1.00", "fastroar": f"{rb['top1_on_signal']:.2f}",
                 "agrees": _agree_top1(rb["top1_count"], rb["n"], 1.0)})
    an = lk["analytic"]
    by = {(r["model"], r["attribution"], r["k"]): r for r in lk["diffroar"]}
    for name, ref, what in (("robust", an["ceiling"], "the ceiling 1 - chance"),
                            ("standard", an["perfect_leakage"], "perfect leakage (Thm. 1)")):
        r = by.get((name, "gradient:margin", an["k"]))
        if r is None:
            continue
        hits = lk["models"][name]["by"]["gradient:margin"]
        pred = leakage_diffroar_expectation(hits["aq_top_hit"], hits["aq_bottom_hit"], an["chance"])
        rows.append({"claim": f"DiffROAR(k = 1/d) of the {name} MLP = {what} (Sec. 4 analysis)",
                     "setting": setting + f"; {r['runs']} retraining seeds",
                     "reference": f"{ref:+.2f}; from its own hit rates {pred:+.2f}",
                     "fastroar": f"{r['diffroar']:+.2f} {_ci(r['ci_low'], r['ci_high'])}",
                     "agrees": _agree_interval(r["ci_low"], r["ci_high"], ref)})
    bd, var = s.get("blockdigits") or {}, s.get("variant")
    if "models" in bd and var:
        for res in (bd, var):
            name = res["dataset"]["name"]
            top = name.endswith("-top")
            k0 = str(res["levels"][0])
            for mname, m in res["models"].items():
                loc = m["localization"][k0]
                expect = bool(m["adversary"]) or top
                rows.append({"claim": f"Sec. 5: {'robust' if m['adversary'] else 'standard'} gradients "
                                      f"{'localize' if expect else 'do not localize'} on {name}",
                             "setting": f"{name}; gradient; acc {m['test_acc']:.2f} (chance {m['chance']:.2f})",
                             "reference": f"top-{k0} share "
                                          f"{'≈ 1' if expect else '≈ chance ' + format(res['chance'], '.2f')}",
                             "fastroar": f"{loc:.2f} {_ci(*m['localization_ci'])} (AQ {m['aq']['aq']:+.2f})",
                             "agrees": _agree_localization(m["localization_ci"], res["chance"], expect)})
    df = s.get("diffroar") or {}
    if df.get("available") and df["comparison"]:
        c0 = df["comparison"][0]
        rows.append({"claim": "Sec. 5: robust models' gradients have higher DiffROAR than standard ones",
                     "setting": f"{bd['dataset']['name']}; gradient; k in {[c['k'] for c in df['comparison']]}",
                     "reference": "robust > standard",
                     "fastroar": f"k = {c0['k']:g}: {c0['robust']:+.2f} vs {c0['standard']:+.2f}; higher at "
                                 f"{sum(c['robust_higher'] for c in df['comparison'])}/{len(df['comparison'])} k, "
                                 f"significantly at {df['significantly_higher']}",
                     "agrees": _agree_higher(df)})
    if leakage_claim.claim_row(s):
        rows.append(leakage_claim.claim_row(s))
    return rows


def _agree_higher(df: dict[str, Any]) -> str:
    """Robust > standard: at every k, the paired 95% interval of DiffROAR(robust) - DiffROAR(standard) (same
    test images and seeds) lies above 0."""
    n, sig = len(df["comparison"]), df["significantly_higher"]
    if sig == n:
        return f"yes (paired 95% interval of robust - standard above 0 at {sig}/{n} k)"
    return f"no (paired 95% interval of robust - standard above 0 at {sig}/{n} k)"


def _blank_or(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def claims_table(rows: list[dict[str, str]]) -> list[str]:
    out = ["| claim | setting | reference | fastroar [95% interval] | agrees? (the interval or test it follows from) |",
           "| --- | --- | --- | --- | --- |"]
    out += [f"| {r['claim']} | {r['setting']} | {r['reference']} | {r['fastroar']} | {r['agrees']} |" for r in rows]
    return out


def summary_markdown(s: dict[str, Any]) -> str:
    lk = s["leakage"]
    lines = ["# fastroar replicate", "",
             f"workdir `{s['workdir']}`{' (--quick: tiny settings, not for conclusions)' if s['quick'] else ''}; "
             f"wall time {s['seconds']:.1f}s", ""]
    if s.get("warnings"):
        lines += [f"- {w}" for w in s["warnings"]] + [""]
    lines += ["## The paper's findings, side by side", ""] + claims_table(s["claims"]) + [""]
    lines += ["## 1. Feature leakage (Fig. 5 / Theorem 1), eq. (2) data, "
              f"d = {lk['config']['dataset']['d']}, d~ = {lk['config']['dataset']['block_dim']}, "
              f"eta = {lk['config']['dataset']['eta']}", "",
              "Share of |input gradient| mass per instance (mean over the test set); chance on the signal block "
              f"among the task-relevant blocks = {lk['chance_share']:.2f}. top-1 on signal: fraction of instances "
              "whose largest |gradient| coordinate is the signal one. gradient:margin is the theory's gradient, "
              "gradient the predicted logit's.", "",
              "| model | test acc (chance) | acc under attack | attribution | signal block "
              "| other task-relevant blocks | noise blocks | top-1 on signal | AQ |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in lk["models"].values():
        for a, b in m["by"].items():
            lines.append(f"| {m['label']} | {m['test_acc']:.3f} ({m['chance']:.3f}) | "
                         f"{_f(m['robust_test_acc'])} | {a} | "
                         f"{b['signal_share']:.3f} | {b['other_relevant_share']:.3f} | {b['noise_share']:.3f} | "
                         f"{b['top1_on_signal']:.3f} | {b['aq_aq']:+.3f} |")
    lines += ["", f"![leakage]({Path(lk['png']).name})", ""]
    ldf = lk.get("diffroar") or []
    if ldf:
        an = lk["analytic"]
        lines += [f"DiffROAR on this data (retrained; k = {an['k']:g} keeps one coordinate). Analytic values at "
                  f"k = {an['k']:g} (test chance {an['chance']:.3f}): ceiling {an['ceiling']:.3f} (perfectly "
                  f"localizing attribution), {an['perfect_leakage']:.3f} (perfectly leaking, Theorem 1).",
                  "", "| model | attribution | k | acc top-k | acc bottom-k | DiffROAR | runs |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in ldf:
            lines.append(f"| {r['model']} | {r['attribution']} | {r['k']:g} | {r['acc_top']:.3f} | "
                         f"{r['acc_bottom']:.3f} | "
                         f"{r['diffroar']:.3f} {_ci(r['ci_low'], r['ci_high'])} | {r['runs']} |")
        lines.append("")
    aq = s["aq"]
    lines += ["## 2. The reference notebook's AQ (x = y·e_j, j over all d coordinates)", "",
              "AQ = P(top-1 = j*) - P(bottom-1 = j*); mean over seeds [95% interval over seeds and test points].", "",
              "| model | runs | test acc (chance) | " + " | ".join(f"AQ {a}" for a in aq["attributions"]) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in aq["attributions"]) + " |"]
    for kind, k in aq["kinds"].items():
        lines.append(f"| {kind} | {k['runs']} | {k['test_acc']:.3f} ({k['chance']:.3f}) | "
                     + " | ".join(f"{k['aq'][a]['mean']:+.2f} {_ci(*k['aq'][a]['ci'])}" for a in aq["attributions"])
                     + " |")
    lines.append("")
    lines += ["## 3. BlockMNIST-style data", ""]
    bd = s["blockdigits"]
    if "skipped" in bd:
        lines += [bd["skipped"], ""]
    else:
        for res in [bd] + ([s["variant"]] if s.get("variant") else []):
            levels = [str(k) for k in res["levels"]]
            lines += [f"dataset {res['dataset']['name']} {res['dataset']['params']}; localization = share of the "
                      f"top-k gradient-ranked coordinates inside the signal block (chance {res['chance']:.2f}); AQ at "
                      "m = the block size.", "",
                      "| model | test acc (chance) | grad mass on signal block | "
                      + " | ".join(f"loc k={k}" for k in levels) + " | AQ |",
                      "| --- | --- | --- | " + " | ".join("---" for _ in levels) + " | --- |"]
            for name, m in res["models"].items():
                lines.append(f"| {name} | {m['test_acc']:.3f} ({m['chance']:.3f}) | {m['signal_share']:.3f} | "
                             + " | ".join(f"{m['localization'][k]:.3f}" for k in levels) + f" | {m['aq']['aq']:+.3f} |")
            lines += ["", f"![grid]({Path(res['png']).name})", ""]
    df = s["diffroar"]
    lines += ["## 4. DiffROAR, standard vs robust (input gradients)", ""]
    if not df["available"]:
        lines += [df["note"], ""]
    else:
        road = any(c.get("standard_road") is not None for c in df["comparison"])
        head = ("| k | standard [95% interval] | robust [95% interval] | robust - standard, paired [95% interval] "
                "| p | runs |" + (" ROAD standard | ROAD robust |" if road else ""))
        lines += [head, "|" + " --- |" * (head.count("|") - 1)]
        for c in df["comparison"]:
            diff = (f"{c['robust'] - c['standard']:+.3f} {_ci(*c['difference_ci'])}" if c["difference_ci"]
                    else f"{c['robust'] - c['standard']:+.3f}")
            p = "" if c["p_two_sided"] is None else p_text(c["p_two_sided"])
            row = (f"| {c['k']:g} | {c['standard']:.3f} {_ci(*c['standard_ci'])} | {c['robust']:.3f} "
                   f"{_ci(*c['robust_ci'])} | {diff} | {p} | {c['runs']} |")
            if road:
                row += f" {_blank_or(c['standard_road'])} | {_blank_or(c['robust_road'])} |"
            lines.append(row)
        same = [c["k"] for c in df["comparison"] if c.get("road_same_order")]
        if road:
            lines += ["", "ROAD (`fastroar estimate`, no retraining: base model on imputed inputs) orders robust vs "
                      f"standard as DiffROAR does at k in {same or 'none'} of {[c['k'] for c in df['comparison']]}."]
        lines += ["", f"![diffroar]({Path(df['png']).name})", ""]
    if "leakage_control" in s:
        lines += leakage_claim.markdown(s)
    return "\n".join(lines)


__all__ = ["replicate", "signed_gradient", "signed_margin_gradient", "mass_shares", "summary_markdown", "claims"]
