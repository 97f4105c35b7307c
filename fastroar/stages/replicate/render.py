"""summary.md and summary.json of `fastroar replicate`: the claims table, then one section per experiment."""
from __future__ import annotations

import json
from pathlib import Path

from fastroar.stages import leakage_claim
from fastroar.stages.replicate.claims import ci_text, or_na
from fastroar.stages.replicate.results import (
    AqResult,
    BlockResult,
    Claim,
    DiffroarComparison,
    LeakageResult,
    RealData,
    RealDataAbsent,
    Summary,
    to_json,
)
from fastroar.stages.report import p_text


def summary_json(s: Summary) -> str:
    return json.dumps(to_json(s), indent=2, default=str)


def _blank_or(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def claims_table(rows: list[Claim]) -> list[str]:
    out = ["| claim | setting | reference | fastroar [95% interval] | agrees? (the interval or test it follows from) |",
           "| --- | --- | --- | --- | --- |"]
    out += [f"| {r.claim} | {r.setting} | {r.reference} | {r.ours} | {r.verdict} |" for r in rows]
    return out


def leakage_section(lk: LeakageResult) -> list[str]:
    p = lk.config["dataset"]
    lines = ["## 1. Feature leakage (Fig. 5 / Theorem 1), eq. (2) data, "
             f"d = {p['d']}, d~ = {p['block_dim']}, eta = {p['eta']}", "",
             "Share of |input gradient| mass per instance (mean over the test set); chance on the signal block "
             f"among the task-relevant blocks = {lk.chance_share:.2f}. top-1 on signal: fraction of instances "
             "whose largest |gradient| coordinate is the signal one. gradient:margin is the theory's gradient, "
             "gradient the predicted logit's.", "",
             "| model | test acc (chance) | acc under attack | attribution | signal block "
             "| other task-relevant blocks | noise blocks | top-1 on signal | AQ |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in lk.models.values():
        for a, b in m.by_attribution.items():
            lines.append(f"| {m.label} | {m.status.test_acc:.3f} ({m.status.chance:.3f}) | "
                         f"{or_na(m.status.robust_test_acc)} | {a} | "
                         f"{b.signal_share:.3f} | {b.other_relevant_share:.3f} | {b.noise_share:.3f} | "
                         f"{b.top1_on_signal:.3f} | {b.quality['aq']:+.3f} |")
    lines += ["", f"![leakage]({Path(lk.png).name})", ""]
    if lk.diffroar:
        an = lk.analytic
        lines += [f"DiffROAR on this data (retrained; k = {an.k:g} keeps one coordinate). Analytic values at "
                  f"k = {an.k:g} (test chance {an.chance:.3f}): ceiling {an.ceiling:.3f} (perfectly "
                  f"localizing attribution), {an.perfect_leakage:.3f} (perfectly leaking, Theorem 1).",
                  "", "| model | attribution | k | acc top-k | acc bottom-k | DiffROAR | runs |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in lk.diffroar:
            lines.append(f"| {r['model']} | {r['attribution']} | {r['k']:g} | {r['acc_top']:.3f} | "
                         f"{r['acc_bottom']:.3f} | "
                         f"{r['diffroar']:.3f} {ci_text(r['ci_low'], r['ci_high'])} | {r['runs']} |")
        lines.append("")
    return lines


def aq_section(aq: AqResult) -> list[str]:
    lines = ["## 2. The reference notebook's AQ (x = y·e_j, j over all d coordinates)", "",
             "AQ = P(top-1 = j*) - P(bottom-1 = j*); mean over seeds [95% interval over seeds and test points].", "",
             "| model | runs | test acc (chance) | " + " | ".join(f"AQ {a}" for a in aq.attributions) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in aq.attributions) + " |"]
    for kind, k in aq.kinds.items():
        lines.append(f"| {kind} | {k.runs} | {k.test_acc:.3f} ({k.chance:.3f}) | "
                     + " | ".join(f"{k.aq[a].mean:+.2f} {ci_text(*k.aq[a].ci)}" for a in aq.attributions)
                     + " |")
    lines.append("")
    return lines


def block_table(res: BlockResult) -> list[str]:
    levels = [str(k) for k in res.levels]
    lines = [f"dataset {res.dataset['name']} {res.dataset['params']}; localization = share of the "
             f"top-k gradient-ranked coordinates inside the signal block (chance {res.chance:.2f}); AQ at "
             "m = the block size.", "",
             "| model | test acc (chance) | grad mass on signal block | "
             + " | ".join(f"loc k={k}" for k in levels) + " | AQ |",
             "| --- | --- | --- | " + " | ".join("---" for _ in levels) + " | --- |"]
    for name, m in res.models.items():
        lines.append(f"| {name} | {m.status.test_acc:.3f} ({m.status.chance:.3f}) | {m.signal_share:.3f} | "
                     + " | ".join(f"{m.localization[k]:.3f}" for k in levels) + f" | {m.aq['aq']:+.3f} |")
    return lines + ["", f"![grid]({Path(res.png).name})", ""]


def diffroar_table(df: DiffroarComparison) -> list[str]:
    road = any(c.standard_road is not None for c in df.comparison)
    head = ("| k | standard [95% interval] | robust [95% interval] | robust - standard, paired [95% interval] "
            "| p | runs |" + (" ROAD standard | ROAD robust |" if road else ""))
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for c in df.comparison:
        diff = (f"{c.robust - c.standard:+.3f} {ci_text(*c.difference_ci)}" if c.difference_ci
                else f"{c.robust - c.standard:+.3f}")
        p = "" if c.p_two_sided is None else p_text(c.p_two_sided)
        row = (f"| {c.k:g} | {c.standard:.3f} {ci_text(*c.standard_ci)} | {c.robust:.3f} "
               f"{ci_text(*c.robust_ci)} | {diff} | {p} | {c.runs} |")
        if road:
            row += f" {_blank_or(c.standard_road)} | {_blank_or(c.robust_road)} |"
        lines.append(row)
    same = [c.k for c in df.comparison if c.road_same_order]
    if road:
        lines += ["", "ROAD (`fastroar estimate`, no retraining: base model on imputed inputs) orders robust vs "
                  f"standard as DiffROAR does at k in {same or 'none'} of {[c.k for c in df.comparison]}."]
    return lines + ["", f"![diffroar]({Path(df.png).name})", ""]


def summary_markdown(s: Summary) -> str:
    lines = ["# fastroar replicate", "",
             f"workdir `{s.workdir}`{' (--quick: tiny settings, not for conclusions)' if s.quick else ''}; "
             f"wall time {s.seconds:.1f}s", ""]
    if s.warnings:
        lines += [f"- {w}" for w in s.warnings] + [""]
    lines += ["## The paper's findings, side by side", ""] + claims_table(s.claims) + [""]
    lines += leakage_section(s.leakage) + aq_section(s.aq)
    lines += ["## 3. BlockMNIST-style data", ""]
    if isinstance(s.blockdigits, BlockResult):
        for res in [s.blockdigits] + ([s.variant] if s.variant else []):
            lines += block_table(res)
    else:
        lines += [s.blockdigits.skipped, ""]
    lines += ["## 4. DiffROAR, standard vs robust (input gradients)", ""]
    lines += diffroar_table(s.diffroar) if isinstance(s.diffroar, DiffroarComparison) else [s.diffroar.note, ""]
    if s.leakage_control is not None:
        lines += leakage_claim.markdown({"leakage_control": s.leakage_control})
    if s.real_data:
        lines += ["## 6. Real data (--data-root): BlockMNIST from MNIST, Fashion-MNIST", ""]
        for r in s.real_data.values():
            lines += real_data_section(r)
    return "\n".join(lines)


def real_data_section(r: RealData | RealDataAbsent) -> list[str]:
    if isinstance(r, RealDataAbsent):
        return [f"{r.dataset} (configs/{r.config}.yaml): {r.note}", ""]
    lines = [f"### {r.dataset} (configs/{r.config}.yaml, read from {r.root}; {r.seconds:.1f}s)", ""]
    for res in (r.block, r.variant):
        if res is not None:
            lines += block_table(res)
    return lines + (diffroar_table(r.diffroar) if isinstance(r.diffroar, DiffroarComparison)
                    else [r.diffroar.note, ""])
