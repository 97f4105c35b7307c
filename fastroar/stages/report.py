"""The report stage: DiffROAR(k) = mean acc(top-k) - mean acc(bottom-k) per (model, attribution), as a
table (stdout and CSV) and a PNG of the curves, plus the signal-block localization and attribution-quality
(AQ) scores where the dataset records where its signal lies, and the base models' accuracies beside the test
split's chance rate (with a WARNING line for an undertrained or non-robust model).
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fastroar.engine.results import read_results
from fastroar.engine.store import RankStore
from fastroar.engine.workspace import Workdir, atomic_write
from fastroar.errors import MissingInputError
from fastroar.metrics.aq import attribution_quality, majority_rate
from fastroar.metrics.diffroar import diffroar_rows
from fastroar.metrics.localization import localization
from fastroar.metrics.road import DEFAULT_NOISE
from fastroar.stages.artifacts import Prepared, checkpoint_path, identity, load_prepared, model_warnings, sweep_records
from fastroar.stages.contract import Context, stage
from fastroar.training.jobs import MODEL_INDEPENDENT, Job


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A text table; a cell that is None prints "missing", NaN (e.g. the std of one run) prints blank."""
    def fmt(v: Any) -> str:
        if v is None:
            return "missing"
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.3f}"
        return str(v)

    cells = [list(columns)] + [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path, columns: Sequence[str]) -> None:
    """rows as CSV, atomically; None and NaN cells are left empty."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows([{k: _csv_cell(v) for k, v in r.items()} for r in rows])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def _csv_cell(v: Any) -> Any:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else v


def import_plotting() -> None:
    """Imports what plot_curves draws with (matplotlib's Agg canvas and Figure: about half a second). `run`
    does it on a thread that would otherwise idle while its last retrain groups finish."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:  # a head start only: the report itself says what is missing
        pass


def curves_of(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The plot's curves: rows by (model, attribution); a model-independent attribution's rows by
    ("any model", attribution), the first model's row of each k."""
    curves: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["attribution"] in MODEL_INDEPENDENT:
            pts = curves[("any model", r["attribution"])]
            if all(p["k"] != r["k"] for p in pts):
                pts.append(r)
            continue
        curves[(r["model"], r["attribution"])].append(r)
    return curves


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """DiffROAR against k, one curve (with a +-std band) per (model, attribution); a model-independent
    attribution (random, edge: one retraining serves every model, the same numbers) is one curve labelled
    "any model", not one per model drawn on top of each other. Drawn on a Figure of its own with the Agg
    canvas: no pyplot (its import costs more than the plot), no global figure state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = curves_of(rows)
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for (model, attribution), pts in sorted(curves.items()):
        pts = sorted(pts, key=lambda r: r["k"])
        k = np.array([p["k"] for p in pts])
        m = np.array([p["diffroar"] for p in pts])
        s = np.nan_to_num(np.array([p["std"] for p in pts], dtype=float))  # one run: no band
        (line,) = ax.plot(k, m, marker="o", label=f"{model} / {attribution}")
        ax.fill_between(k, m - s, m + s, color=line.get_color(), alpha=0.15)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("k (fraction of coordinates kept)")
    ax.set_ylabel("DiffROAR = acc(top-k) - acc(bottom-k)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def road_estimates(workdir: Workdir, dataset_key: str, records: Iterable[dict[str, Any]]) -> dict[tuple, float]:
    """ROAD(k) by (model, attribution, k) from <workdir>/results/road.jsonl, for the models (by hash)
    behind `records`; where several rules, noise settings or seeds were estimated, the default rule
    (DiffROAR's masks; records without a rule are its), the default noise (0.01) and the lowest seed
    are shown."""
    hashes = {(r["model"], r.get("model_hash")) for r in records}
    best: dict[tuple, tuple] = {}
    for e in read_results(workdir.road_path).values():
        if e.get("dataset_key") != dataset_key or (e["model"], e.get("model_hash")) not in hashes:
            continue
        key = (e["model"], e["attribution"], float(e["k"]))
        rank = (e.get("rule", "fastroar") != "fastroar", e["noise"] != DEFAULT_NOISE, e["noise"], e["seed"])
        if key not in best or rank < best[key][0]:
            best[key] = (rank, float(e["road"]))
    return {k: v for k, (_, v) in best.items()}


DIFFROAR_COLUMNS = ("model", "attribution", "k", "acc_top", "acc_bottom", "diffroar", "std", "runs")
LOCALIZATION_COLUMNS = ("model", "attribution", "k", "signal_share", "chance")


AQ_COLUMNS = ("model", "attribution", "m", "top_hit", "bottom_hit", "aq")
MODEL_COLUMNS = ("model", "adversary", "test_acc", "robust_test_acc", "chance")


def base_model_rows(cfg: dict[str, Any], workdir: Workdir, prepared: Prepared) -> list[dict[str, Any]]:
    """Each trained base model's clean and adversarial test accuracy beside the test split's chance rate,
    and its WARNING lines (below train.min_test_acc, or at chance under attack)."""
    labels = prepared.arrays("test")[1]
    chance = majority_rate(labels)
    rows = []
    for spec in cfg["models"]:
        info = checkpoint_path(workdir, spec["name"]).with_name("model.json")  # the summary train wrote beside it
        if not info.exists():
            continue
        summary = json.loads(info.read_text())
        ckpt = {"summary": summary, "config": summary["config"]}   # what model_warnings reads of a checkpoint
        sm = ckpt["summary"]
        adv = spec.get("adversary")
        rows.append({"model": spec["name"], "adversary": f"{adv['norm']} eps {adv['eps']}" if adv else "-",
                     "test_acc": sm.get("test_acc"), "robust_test_acc": sm.get("robust_test_acc", "-"),
                     "chance": chance, "warnings": model_warnings(cfg, ckpt, chance, len(labels))})
    return rows


@stage("report", uses_torch=False)
def report(ctx: Context) -> dict[str, Any]:
    """Writes report/diffroar.csv, report/diffroar.png (and localization.csv); prints the tables.

    Only the records of this config's jobs count, found by job key (base-model hashes, data, recipe,
    fill, ... all enter it): results of other settings in the same log are counted and named, never
    mixed in, and a cell without both directions recorded shows as missing. Every file is written once
    everything it needs has been read and checked, so a damaged input leaves the old report as it was.
    """
    cfg, workdir, log = ctx.cfg, ctx.wd, ctx.log
    prepared = load_prepared(cfg, workdir)
    jobs, mine, others, unreadable = sweep_records(cfg, workdir, prepared)
    notes = []
    if unreadable:
        notes.append(f"[report] {len(unreadable)} unreadable line(s) of {workdir.results_path} skipped (line "
                     f"{', '.join(map(str, unreadable[:5]))}{', ...' if len(unreadable) > 5 else ''})")
    if others:
        notes.append(f"[report] {len(others)} record(s) from other settings ignored: {explain(others, jobs)}")
    if not mine:
        raise MissingInputError(f"no retraining results of this config in {workdir.results_path}"
                                f"{' (' + notes[-1].removeprefix('[report] ') + ')' if others else ''}; run "
                                f"`fastroar retrain --workdir {workdir.root}` with the same settings first")
    rows = with_missing_cells(diffroar_rows(mine), jobs)
    columns = DIFFROAR_COLUMNS
    road = road_estimates(workdir, prepared.meta["key"], mine)
    if road:  # `fastroar estimate` has run: its ROAD(k) beside DiffROAR(k)
        for r in rows:
            r["road"] = road.get((r["model"], r["attribution"], r["k"]), "")
        columns = DIFFROAR_COLUMNS + ("road",)
    loc_rows, aq_rows = signal_rows(cfg, workdir, prepared, sorted({(r["model"], r["attribution"]) for r in mine}),
                                    {r["model"]: r["model_hash"] for r in mine})
    model_rows = base_model_rows(cfg, workdir, prepared)
    out = workdir.report_dir
    write_csv(rows, out / "diffroar.csv", columns)
    png = out / "diffroar.png"
    plot_curves([r for r in rows if r["diffroar"] is not None], png, f"DiffROAR on {cfg['dataset']['name']}")
    if loc_rows is not None:
        write_csv(loc_rows, out / "localization.csv", LOCALIZATION_COLUMNS)
        write_csv(aq_rows, out / "aq.csv", AQ_COLUMNS)
    for note in notes:
        log(note)
    log("DiffROAR (acc(top-k) - acc(bottom-k); > 0: the attribution ranks discriminative pixels first)")
    shared = sorted({r["attribution"] for r in rows if r["attribution"] in MODEL_INDEPENDENT})
    if shared and len({r["model"] for r in rows}) > 1:
        log(f"({', '.join(shared)}: the ranks do not depend on the base model, so one retraining serves every "
            "model; their rows repeat the same numbers under each model)")
    if road:
        log("ROAD: the retraining-free estimate (`fastroar estimate`): acc of the base model on top-k vs "
            "bottom-k kept, the rest imputed")
    log(format_table(rows, columns))
    short = [r for r in rows if r["runs"] < cfg["retrain"]["seeds"]]
    if short:
        log(f"({len(short)} row(s) have fewer than retrain.seeds = {cfg['retrain']['seeds']} runs in both directions: "
            f"the sweep is not finished; `fastroar retrain --workdir {workdir.root}` completes it)")
    result: dict[str, Any] = {"diffroar": rows, "csv": out / "diffroar.csv", "png": png, "ignored": len(others)}
    if loc_rows is not None:
        log("\nSignal-block localization (share of top-k coordinates inside the signal block; test split)")
        log(format_table(loc_rows, LOCALIZATION_COLUMNS))
        result["localization"] = loc_rows
        log("\nAttribution quality AQ = top-m hits - bottom-m hits on the signal block (m = its size; test split)")
        log(format_table(aq_rows, AQ_COLUMNS))
        result["aq"] = aq_rows
    log("\nBase models (test split; chance = its majority-class rate)")
    log(format_table(model_rows, MODEL_COLUMNS))
    for r in model_rows:
        for w in r["warnings"]:
            log(w)
    result["models"] = model_rows
    log(f"\nreport: {out / 'diffroar.csv'}\nplot: {png}")
    return result


def with_missing_cells(rows: list[dict[str, Any]], jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """rows plus one row per (model, attribution, k) of the sweep that has no seed in both directions,
    its values None (shown as "missing")."""
    have = {(r["model"], r["attribution"], r["k"]) for r in rows}
    missing = sorted({(j.model, j.attribution, j.k) for j in jobs} - have)
    blank = dict.fromkeys(("acc_top", "acc_bottom", "diffroar", "std"))
    rows = rows + [{"model": m, "attribution": a, "k": k, **blank, "runs": 0} for m, a, k in missing]
    return sorted(rows, key=lambda r: (r["model"], r["attribution"], r["k"]))


def explain(others: Sequence[dict[str, Any]], jobs: Sequence[Job]) -> str:
    """Why records are not this config's, most common reasons first: 'retrain.epochs 4 vs 3 (16), ...'."""
    by_slot = {(j.model, j.attribution, j.k, j.direction, j.seed): j for j in jobs}
    first = jobs[0] if jobs else None
    models, attributions = {j.model for j in jobs}, {j.attribution for j in jobs}
    levels, directions, seeds = {j.k for j in jobs}, {j.direction for j in jobs}, {j.seed for j in jobs}
    reasons: Counter = Counter()
    for r in others:
        try:
            slot = (r["model"], r["attribution"], float(r["k"]), r["direction"], int(r["seed"]))
        except (KeyError, TypeError, ValueError):
            reasons["not retraining records"] += 1
            continue
        job = by_slot.get(slot)
        if job is None:
            m, a, k, d, seed = slot
            why = (f"model {m} not in the config" if m not in models else
                   f"attribution {a} not in the config" if a not in attributions else
                   f"k={k:g} not in the config's levels" if k not in levels else
                   f"direction {d} not in retrain.directions" if d not in directions else
                   f"seed {seed} beyond retrain.seeds = {len(seeds)}")
            reasons[why] += 1
            continue
        reasons[_difference(r, job, first)] += 1
    return ", ".join(f"{why} ({n})" for why, n in reasons.most_common())


def _difference(r: dict[str, Any], job: Job, first: Job | None) -> str:
    """The first setting in which record r differs from the config's job of the same slot."""
    if r.get("dataset_key") != job.dataset_key:
        return f"other data ({r.get('dataset_key')})"
    if r.get("model_hash") != job.model_hash:
        return f"base model {job.model} was retrained since"
    if r.get("arch") != job.arch or r.get("arch_params") != job.arch_params:
        return f"model.arch {r.get('arch')} {r.get('arch_params')} vs {job.arch} {job.arch_params}"
    recipe = r.get("recipe") or {}
    for key in sorted(set(recipe) | set(job.recipe)):
        if recipe.get(key) != job.recipe.get(key):
            return f"retrain.{key} {recipe.get(key)} vs {job.recipe.get(key)}"
    if float(r.get("fill", 0.0)) != job.fill:
        return f"retrain.fill {r.get('fill', 0.0):g} vs {job.fill:g}"
    return "another fastroar version's job key"


def signal_rows(cfg: dict[str, Any], workdir: Workdir, prepared: Prepared, pairs: Sequence[tuple[str, str]],
                hashes: dict[str, str]) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """(localization rows, AQ rows) of the test split's rank maps, read once per (model, attribution) from
    the store entry of that model's hash (checksums verified): per k the signal-block share of the top-k
    ranks; AQ (fastroar.metrics.aq) per pair. (None, None) where the data record no signal blocks."""
    signal = prepared.signal("test")
    if signal is None:
        return None, None
    store = RankStore(str(workdir.store_path), mode="r")
    chance = float(signal.sum(1).mean() / signal.shape[1])
    loc, aq = [], []
    for model, attribution in pairs:
        entry = store.open_entry(model, attribution, identity(cfg, prepared, hashes[model], attribution))
        ranks = entry.split("test").read("ranks")
        for k, share in zip(cfg["levels"], localization(ranks, signal, cfg["levels"])):
            loc.append({"model": model, "attribution": attribution, "k": k, "signal_share": share,
                        "chance": chance})
        aq.append({"model": model, "attribution": attribution, **attribution_quality(ranks, signal)})
    return loc, aq
