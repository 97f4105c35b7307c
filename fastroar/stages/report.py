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

from fastroar.config import Config
from fastroar.engine.results import ROAD_FIELDS, read_results
from fastroar.engine.store import RankStore
from fastroar.engine.workspace import Workdir, atomic_write
from fastroar.errors import MissingInputError
from fastroar.metrics.aq import attribution_quality, majority_rate
from fastroar.metrics.diffroar import comparison_rows, diffroar_rows
from fastroar.metrics.localization import localization
from fastroar.metrics.mask_probe import leaks
from fastroar.metrics.road import DEFAULT_NOISE
from fastroar.stages.artifacts import (
    Prepared,
    at_chance,
    checkpoint_path,
    load_prepared,
    model_families,
    model_warnings,
    reading_identity,
    seed_counts,
    sweep_records,
)
from fastroar.stages.contract import Context, stage
from fastroar.stages.mask_control import mask_controls, with_mask_columns
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
    """DiffROAR against k, one curve (with its 95% interval as a band) per (model, attribution); a
    model-independent attribution (random, edge: one retraining serves every model, the same numbers) is one
    curve labelled "any model", not one per model drawn on top of each other. Drawn on a Figure of its own
    with the Agg canvas: no pyplot (its import costs more than the plot), no global figure state."""
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
        lo = np.array([p.get("ci_low", np.nan) for p in pts], dtype=float)
        hi = np.array([p.get("ci_high", np.nan) for p in pts], dtype=float)
        (line,) = ax.plot(k, m, marker="o", label=f"{model} / {attribution}")
        known = ~(np.isnan(lo) | np.isnan(hi))   # a row without an interval draws no band
        ax.fill_between(k, np.where(known, lo, m), np.where(known, hi, m), color=line.get_color(), alpha=0.15)
        masked = [p for p in pts if p.get("mask_top") is not None and p.get("mask_bottom") is not None]
        if masked:  # the mask-only control: what DiffROAR would be from the keep-mask's shape alone
            ax.plot([p["k"] for p in masked], [p["mask_top"] - p["mask_bottom"] for p in masked], ls="--",
                    marker="x", color=line.get_color(), alpha=0.7, label=f"{model} / {attribution}: mask only")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("k (fraction of coordinates kept)")
    ax.set_ylabel("DiffROAR = acc(top-k) - acc(bottom-k), 95% interval")
    ax.set_title(title)
    if curves:  # no curve (every cell missing): no legend, and no matplotlib warning about it
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
    for e in read_results(workdir.road_path, ROAD_FIELDS).values():
        if e.get("dataset_key") != dataset_key or (e["model"], e.get("model_hash")) not in hashes:
            continue
        key = (e["model"], e["attribution"], float(e["k"]))
        rank = (e.get("rule", "fastroar") != "fastroar", e["noise"] != DEFAULT_NOISE, e["noise"], e["seed"])
        if key not in best or rank < best[key][0]:
            best[key] = (rank, float(e["road"]))
    return {k: v for k, (_, v) in best.items()}


DIFFROAR_COLUMNS = ("model", "attribution", "k", "acc_top", "acc_bottom", "diffroar", "ci_low", "ci_high", "se",
                    "p_positive", "std", "runs", "bases", "interval")
# the printed table: the interval as one cell, the p-value of DiffROAR > 0 in a readable form
PRINTED_COLUMNS = ("model", "attribution", "k", "acc_top", "acc_bottom", "diffroar", "95% interval", "p(>0)", "runs")
COMPARISON_COLUMNS = ("of", "k", "a", "b", "difference", "ci_low", "ci_high", "p_two_sided", "runs")
PRINTED_COMPARISON = ("of", "k", "a - b", "difference", "95% interval", "p", "runs")
LOCALIZATION_COLUMNS = ("model", "attribution", "k", "signal_share", "chance")
MASK_COLUMNS = ("mask_top", "mask_bottom")   # the mask-only control (fastroar.metrics.mask_probe)


AQ_COLUMNS = ("model", "attribution", "m", "top_hit", "bottom_hit", "aq")
MODEL_COLUMNS = ("model", "adversary", "test_acc", "robust_test_acc", "chance", "hash", "cpu")


def base_model_rows(cfg: Config, workdir: Workdir, prepared: Prepared) -> list[dict[str, Any]]:
    """Each trained base model's clean and adversarial test accuracy beside the test split's chance rate,
    and its WARNING lines (below train.min_test_acc, or at chance under attack)."""
    labels = prepared.arrays("test")[1]
    chance = majority_rate(labels)
    rows = []
    for spec in cfg.models:
        info = checkpoint_path(workdir, spec.name).with_name("model.json")  # the summary train wrote beside it
        if not info.exists():
            continue
        summary = json.loads(info.read_text())
        ckpt = {"summary": summary, "config": summary["config"]}   # what model_warnings reads of a checkpoint
        sm = ckpt["summary"]
        adv = summary["config"].get("adversary")   # the trained model's, not what this call's config says
        rows.append({"model": spec.name, "adversary": f"{adv['norm']} eps {adv['eps']}" if adv else "-",
                     "test_acc": sm.get("test_acc"), "robust_test_acc": sm.get("robust_test_acc", "-"),
                     "chance": chance, "hash": str(sm.get("hash", "?"))[:12], "cpu": sm.get("cpu_capability", "?"),
                     "warnings": model_warnings(cfg.train.min_test_acc, ckpt, chance, len(labels)),
                     "failed": at_chance(sm, chance, len(labels))})
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
        notes.append(f"[report] {unreadable.note(workdir.results_path)}")
    if others:
        notes.append(f"[report] {len(others)} record(s) from other settings ignored: {explain(others, jobs)}")
    beyond = beyond_note(cfg, jobs)
    if beyond:
        notes.append(beyond)
    diverged = diverged_note(mine)
    if diverged:
        notes.append(diverged)
    if not mine:
        raise MissingInputError(f"no retraining results of this config in {workdir.results_path}"
                                f"{' (' + notes[-1].removeprefix('[report] ') + ')' if others else ''}; run "
                                f"`fastroar retrain --workdir {workdir.root}` with the same settings first")
    families = model_families(cfg)
    rows = with_missing_cells(diffroar_rows(mine, families), jobs, families)
    comparisons = comparison_rows(mine, families)
    columns = DIFFROAR_COLUMNS
    cells = {(r["model"], r["attribution"], float(r["k"]), r["direction"]) for r in mine}  # retrained: ranks exist
    hashes = {r["model"]: r["model_hash"] for r in mine}
    rows = with_mask_columns(rows, mask_controls(cfg, workdir, prepared, cells, hashes, notes.append))
    road = road_estimates(workdir, prepared.meta["key"], mine)
    printed = PRINTED_COLUMNS
    if road:  # `fastroar estimate` has run: its ROAD(k) beside DiffROAR(k)
        for r in rows:
            r["road"] = road.get((r["model"], r["attribution"], r["k"]), "")
        columns, printed = DIFFROAR_COLUMNS + ("road",), PRINTED_COLUMNS + ("road",)
    columns, printed = columns + MASK_COLUMNS, printed + MASK_COLUMNS
    loc_rows, aq_rows = signal_rows(cfg, workdir, prepared, sorted({(r["model"], r["attribution"]) for r in mine}),
                                    {r["model"]: r["model_hash"] for r in mine}, notes)
    model_rows = base_model_rows(cfg, workdir, prepared)
    failed = {r["model"] for r in model_rows if r["failed"]}
    if failed:  # a base model at chance: its rows are marked, not mixed in unremarked
        for r in rows:
            r["base_model"] = "FAILED" if r["model"] in failed else ""
        columns = columns + ("base_model",)
    out = workdir.report_dir
    write_csv(rows, out / "diffroar.csv", columns)
    if comparisons:
        write_csv(comparisons, out / "comparisons.csv", COMPARISON_COLUMNS)
    png = out / "diffroar.png"
    plot_curves([r for r in rows if r["diffroar"] is not None], png, f"DiffROAR on {cfg.dataset.name}")
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
    log(format_table([printable(r) for r in rows], printed))
    log(interval_note(rows, model_rows))
    log(leakage_line(rows, prepared.arrays("test")[1], imputed=cfg.retrain.fill == "road"))
    first, _ = seed_counts(cfg)
    short = [r for r in rows if r["runs"] < first * max(1, r.get("bases") or 1)]
    if short:
        log(f"({len(short)} row(s) have fewer than retrain.seeds = {cfg.retrain.seeds} runs in both directions: "
            f"the sweep is not finished; `fastroar retrain --workdir {workdir.root}` completes it"
            f"{one_direction_note(cfg)})")
    if comparisons:
        log("\nPaired comparisons (same test images and seeds): DiffROAR(a) - DiffROAR(b), two-sided p")
        log(format_table([printable_comparison(c) for c in comparisons], PRINTED_COMPARISON))
    result: dict[str, Any] = {"diffroar": rows, "comparisons": comparisons, "csv": out / "diffroar.csv", "png": png,
                              "ignored": len(others)}
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


def p_text(p: float | None) -> str:
    """A p-value as printed: three decimals, '<0.001' below that, blank when not computed."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def interval_text(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return ""
    return f"[{lo:+.3f}, {hi:+.3f}]"


def printable(row: dict[str, Any]) -> dict[str, Any]:
    """A DiffROAR row as the table prints it (missing cells stay None: "missing")."""
    if row["diffroar"] is None:
        return row | {"95% interval": None, "p(>0)": None}
    return row | {"95% interval": interval_text(row["ci_low"], row["ci_high"]), "p(>0)": p_text(row["p_positive"])}


def printable_comparison(c: dict[str, Any]) -> dict[str, Any]:
    return c | {"a - b": f"{c['a']} - {c['b']}", "95% interval": interval_text(c["ci_low"], c["ci_high"]),
                "p": p_text(c["p_two_sided"])}


def interval_note(rows: Sequence[dict[str, Any]], model_rows: Sequence[dict[str, Any]]) -> str:
    """What the table's intervals span, in one line."""
    counts = Counter(r["interval"] for r in rows if r.get("interval"))
    spans = [f"{method} ({n} row{'s' if n > 1 else ''})" for method, n in counts.most_common()]
    cpus = sorted({str(m["cpu"]) for m in model_rows})
    bases = max((r.get("bases") or 1 for r in rows), default=1)
    scope = (f"{bases} base models per row" if bases > 1 else "this base model")
    return (f"95% interval: {'; '.join(spans) or 'none'}; it covers {scope}, trained and retrained with CPU "
            f"kernels {', '.join(cpus) or '?'} (fastroar.metrics.intervals). p(>0): one-sided p-value of "
            "DiffROAR > 0.")


def leakage_line(rows: list[dict[str, Any]], test_labels: np.ndarray, imputed: bool = False) -> str:
    """One line under the table: the rows whose keep-mask alone reaches the retrained accuracy (within two
    binomial standard errors, above chance by as much: fastroar.metrics.mask_probe.leaks), or that none does."""
    chance, n = majority_rate(test_labels), len(test_labels)
    hits: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in rows:
        for d in ("top", "bottom"):
            if leaks(r.get(f"mask_{d}"), r.get(f"acc_{d}"), chance, n):
                hits[(r["model"], r["attribution"])].append(f"{d} {r['k']:g}")
    if not hits:
        return ("mask_top / mask_bottom: test accuracy of a probe on the keep-mask alone (no pixel values); in no "
                "row does it reach the retrained accuracy")
    cells = "; ".join(f"{m}/{a} {', '.join(v)}" for (m, a), v in hits.items())
    why = ("the removed pixels are imputed here (retrain.fill road), so the retrained models do not see the mask "
           "as zeros" if imputed else "there DiffROAR measures the mask's shape as much as the kept pixels "
           "(retrain.fill road removes without showing the mask")
    return (f"LEAKAGE: the keep-mask alone reaches the retrained accuracy in {sum(map(len, hits.values()))} cell(s) "
            f"({cells}): {why}; see docs/leakage.md{'' if imputed else ')'}")


def beyond_note(cfg: Config, jobs: Sequence[Job]) -> str:
    """A line naming the levels and seeds reported beyond the config's (recorded by `retrain --k/--seeds`
    with the config's other settings; fastroar.stages.artifacts.recorded_beyond), or ""."""
    levels = sorted({j.k for j in jobs} - set(cfg.levels))
    seeds = max((j.seed for j in jobs), default=0) + 1
    parts = ([f"k = {', '.join(f'{k:g}' for k in levels)} beyond the config's levels"] if levels else []) + \
            ([f"seeds up to {seeds} beyond retrain.seeds = {cfg.retrain.seeds}"]
             if seeds > seed_counts(cfg)[1] else [])
    return f"[report] also reported, as recorded by retrain with these settings: {'; '.join(parts)}" if parts else ""


def one_direction_note(cfg: Config) -> str:
    """What a config with one retrain direction must add: DiffROAR needs both."""
    dirs = cfg.retrain.directions
    if set(dirs) == {"top", "bottom"}:
        return ""
    return (f"; DiffROAR needs both directions and retrain.directions is [{', '.join(dirs)}]: add "
            "--set 'retrain.directions=[top, bottom]' (or run retrain with --direction both)")


def with_missing_cells(rows: list[dict[str, Any]], jobs: Sequence[Job],
                       families: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """rows plus one row per (model, attribution, k) of the sweep that has no seed in both directions,
    its values None (shown as "missing")."""
    families = families or {}
    have = {(r["model"], r["attribution"], r["k"]) for r in rows}
    missing = sorted({(families.get(j.model, j.model), j.attribution, j.k) for j in jobs} - have)
    blank = dict.fromkeys(("acc_top", "acc_bottom", "diffroar", "ci_low", "ci_high", "se", "p_positive", "std",
                           "bases", "interval"))
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
        same_model = next((j for j in jobs if j.model == slot[0] and j.attribution == slot[1]), None)
        if job is None and same_model is not None:  # a level or seed beyond the config's, other settings too
            why = _difference(r, same_model, first)
            if why != "another fastroar version's job key":
                reasons[why] += 1
                continue
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
    if bool(r.get("sparse_input", False)) != job.sparse_input:
        return f"retrain.sparse_input: a {'sparse' if r.get('sparse_input') else 'dense'} first layer"
    if r.get("impute") != job.impute:
        return f"retrain.fill {'road' if r.get('impute') else 'zero'} vs {'road' if job.impute else 'zero'}"
    return "another fastroar version's job key"


def diverged_note(records: Sequence[dict[str, Any]]) -> str | None:
    """A WARNING naming the retrainings whose training loss ended not finite, or None. Such a model diverged:
    its test accuracy is a broken model's (about chance), not what the kept pixels allow, and it counts in
    its row as recorded (dropping it would bias the row the other way). Records without a loss are fine."""
    bad = {r["key"]: r for r in records
           if isinstance(r.get("loss"), float) and not math.isfinite(r["loss"])}
    if not bad:
        return None
    cells = sorted(f"{r['model'] if r['attribution'] not in MODEL_INDEPENDENT else 'any model'}/{r['attribution']} "
                   f"k={r['k']:g} {r['direction']} seed {r['seed']}" for r in bad.values())
    return (f"[report] WARNING: {len(bad)} retraining(s) diverged (training loss not finite), so their accuracy is "
            f"a broken model's, not what the kept pixels allow; they count in their rows as recorded: "
            f"{'; '.join(cells)}. A lower retraining learning rate (--set retrain.lr=...) avoids it.")


def signal_rows(cfg: Config, workdir: Workdir, prepared: Prepared, pairs: Sequence[tuple[str, str]],
                hashes: dict[str, str], notes: list[str] | None = None
                ) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """(localization rows, AQ rows) of the test split's rank maps, read once per (model, attribution) from
    the store entry of that model's hash (checksums verified): per k the signal-block share of the top-k
    ranks; AQ (fastroar.metrics.aq) per pair. (None, None) where the data record no signal blocks. `notes`
    receives a WARNING per user attribution read by its stored identity (artifacts.reading_identity)."""
    signal = prepared.signal("test")
    if signal is None:
        return None, None
    store = RankStore(str(workdir.store_path), mode="r")
    chance = float(signal.sum(1).mean() / signal.shape[1])
    warnings = notes if notes is not None else []
    loc, aq = [], []
    for model, attribution in pairs:
        ident, warning = reading_identity(cfg, prepared, hashes[model], attribution,
                                          store.stored_identity(model, attribution))
        if warning and warning not in warnings:
            warnings.append(warning)
        entry = store.open_entry(model, attribution, ident)
        ranks = entry.split("test").read("ranks")
        for k, share in zip(cfg.levels, localization(ranks, signal, cfg.levels)):
            loc.append({"model": model, "attribution": attribution, "k": k, "signal_share": share,
                        "chance": chance})
        aq.append({"model": model, "attribution": attribution, **attribution_quality(ranks, signal)})
    return loc, aq
