"""Experiment 1 of `fastroar replicate`: feature leakage (Fig. 5 / Theorem 1) on the synthetic data of eq. (2)
(configs/leakage.yaml): a linear model, a standard and a PGD-trained MLP, their gradients' mass per region
and DiffROAR beside its analytic value."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from fastroar.method import to_model_input
from fastroar.metrics.aq import attribution_quality, leakage_diffroar_expectation
from fastroar.metrics.diffroar import diffroar_rows
from fastroar.stages.artifacts import load_model
from fastroar.stages.contract import Context, resolve_config
from fastroar.stages.precompute import precompute
from fastroar.stages.prepare import prepare
from fastroar.stages.replicate.measures import SIGNED, mass_shares, model_status, ranks_of, sub_workdir
from fastroar.stages.replicate.plots import plot_leakage
from fastroar.stages.replicate.results import GradientMass, LeakageAnalytic, LeakageModel, LeakageResult
from fastroar.stages.retrain import retrain
from fastroar.stages.train import train

QUICK_LEAKAGE = ["dataset.params.n_train=400", "dataset.params.n_test=200", "model.params.width=64",
                 "train.epochs=4"]
LEAKAGE_ATTRIBUTIONS = ("gradient:margin", "gradient")  # the theory's gradient first
LEAKAGE_MODELS = (("linear", "linear"), ("standard", "standard MLP"), ("robust", "PGD-trained MLP"))


def gradient_mass(g: np.ndarray, signal: np.ndarray, relevant: np.ndarray) -> GradientMass:
    """Mass shares, the top-1 view and AQ of signed gradients g (N, d*d~) against the signal coordinates."""
    n = len(g)
    share = mass_shares(g, signal)
    a_abs = np.abs(g)
    top1 = signal[np.arange(n), a_abs.argmax(1)]
    return GradientMass(
        signal_share=float(np.nanmean(share)),
        other_relevant_share=float(np.nanmean(mass_shares(g, relevant[None] & ~signal))),
        noise_share=float(np.nanmean(mass_shares(g, np.broadcast_to(~relevant, signal.shape)))),
        zero_gradient_instances=int(np.isnan(share).sum()),
        # the paper's k = 1 block view: how often the largest |gradient| lies on the signal block
        top1_on_signal=float(np.mean(top1)), top1_count=int(top1.sum()), n=int(n),
        # spread of |gradient| across instances (0: the same attribution for every instance)
        instance_spread=float(np.max(np.abs(a_abs - a_abs[:1])) / max(float(np.abs(a_abs[0]).max()), 1e-30)),
        quality=attribution_quality(ranks_of(a_abs), signal))


def leakage_experiment(out_dir: Path, *, quick: bool, device: str | None, progress: bool, instances: int,
                       log: Callable) -> LeakageResult:
    sets = list(QUICK_LEAKAGE if quick else [])
    if device:
        sets.append(f"device={device}")
    cfg_mlp = resolve_config(dataset="leakage", overrides=sets + ["loader=resident"])
    cfg_lin = resolve_config(dataset="leakage", overrides=sets + [
        "loader=resident", "model.arch=linear", "model.params={}", "models=[{name: linear}]"])
    wd = sub_workdir(out_dir, "leakage", [cfg_lin, cfg_mlp], quick)
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
    d, block_dim = int(p["d"]), int(p["block_dim"])
    relevant = np.zeros(dd, bool)
    relevant[: (d // 2) * block_dim] = True               # blocks 0 .. d/2-1 can hold the signal
    adversaries = {m["name"]: m.get("adversary") for m in cfg_mlp.saved()["models"]}
    models: dict[str, LeakageModel] = {}
    grads: dict[str, dict[str, np.ndarray]] = {a: {} for a in LEAKAGE_ATTRIBUTIONS}
    for name, label in LEAKAGE_MODELS:
        model, ckpt = load_model(wd, name, prepared)
        entry = LeakageModel(label=label, hash=ckpt["hash"],
                             status=model_status(cfg_lin if name == "linear" else cfg_mlp, ckpt, labels, x, model))
        for a in LEAKAGE_ATTRIBUTIONS:
            g = SIGNED[a](model, x).numpy().reshape(n, dd)
            grads[a][name] = g
            entry.by_attribution[a] = gradient_mass(g, signal, relevant)
        models[name] = entry
    theory = models["standard"].by_attribution[LEAKAGE_ATTRIBUTIONS[0]], \
        models["robust"].by_attribution[LEAKAGE_ATTRIBUTIONS[0]]
    chance = models["standard"].status.chance
    png = out_dir / "leakage_gradients.png"
    res = LeakageResult(
        config={"dataset": prepared.meta["params"], "mlp": cfg_mlp.model.saved(), "train": cfg_mlp.train.saved(),
                "adversaries": adversaries},
        workdir=str(wd.root), models=models, attributions=list(LEAKAGE_ATTRIBUTIONS),
        chance_share=1.0 / (d // 2),
        robust_more_concentrated=theory[1].signal_share > theory[0].signal_share,
        robust_concentrates=theory[1].signal_share > 0.5,   # most of its mass on the signal block
        standard_leaks=theory[0].other_relevant_share > theory[0].noise_share and theory[0].signal_share < 0.5,
        diffroar=leakage_diffroar(ctx_mlp),
        analytic=LeakageAnalytic(ceiling=leakage_diffroar_expectation(1.0, 0.0, chance),
                                 perfect_leakage=leakage_diffroar_expectation(1.0 / (d // 2), 0.0, chance),
                                 chance=chance, k=1.0 / (d * block_dim)),
        png=str(png))
    plot_leakage(grads[LEAKAGE_ATTRIBUTIONS[0]], signal, [lbl for _, lbl in LEAKAGE_MODELS],
                 [nm for nm, _ in LEAKAGE_MODELS],
                 {nm: m.by_attribution[LEAKAGE_ATTRIBUTIONS[0]].signal_share for nm, m in models.items()},
                 instances, d, block_dim, png)
    return res


def leakage_diffroar(ctx: Context) -> list[dict]:
    """DiffROAR of the standard and robust MLPs' margin and logit gradients on the leakage data (the config's
    levels, retrain settings and seeds; k = 1/d keeps one coordinate), by the precompute and retrain stages."""
    t0 = time.perf_counter()
    precompute(ctx, attributions=list(LEAKAGE_ATTRIBUTIONS))
    records = retrain(ctx, attributions=list(LEAKAGE_ATTRIBUTIONS))
    ctx.log(f"[replicate] leakage DiffROAR in {time.perf_counter() - t0:.1f}s")
    return diffroar_rows(records)
