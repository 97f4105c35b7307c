"""Confidence intervals and tests for DiffROAR rows from per-image outcomes.

A DiffROAR row is D̄, the mean of D[b, s, i] = top[b, s, i] - bottom[b, s, i] (values -1, 0, 1) over
B base models b, S retraining seeds s per base model (seed s of the top-k model paired with seed s of the
bottom-k one) and N test images i (the same images, in the same order, for every model). What the row
estimates is the expectation of D over retraining seeds *and* over the population the test images were
drawn from (and over base models when B > 1): all three are samples, and on a few hundred test images
the test set usually carries most of the uncertainty.

Method: variance components of the crossed random-effects design "images crossed with seeds nested in
base models", estimated by the ANOVA method of moments (expected mean squares), and a t interval with
Welch–Satterthwaite degrees of freedom:

    Var(D̄) = σ²_base/B + σ²_seed/(B·S) + σ²_image/N + σ²_base×image/(B·N) + σ²_resid/(B·S·N)

Each σ² is a linear combination of the five mean squares (base, seed within base, image, base×image,
residual = seed×image within base), clipped at 0 (so the estimate is never below the unbiased one; with
no component clipped it equals the unbiased (MS_base + MS_image - MS_base×image)/(B·S·N)). The
moment estimators need no normality: the expected mean squares hold for any exchangeable array
(Hoeffding/ANOVA decomposition). References: Searle, Casella & McCulloch, "Variance Components" (Wiley
1992), ch. 4 (ANOVA estimation, expected mean squares of crossed and nested designs); Satterthwaite,
"An approximate distribution of estimates of variance components", Biometrics Bulletin 2(6), 1946;
for the same crossed-sampling problem and why naive (one-factor) resampling under-covers, Owen, "The
pigeonhole bootstrap", Ann. Appl. Stat. 1(2), 2007. The coverage of this interval on simulated studies
(tests/test_intervals.py, tools/interval_coverage.py --simulate) is 94–96 % at S = 5 (B = 1 or 3) and 95–97 %
at S = 2, where the seed part rests on one degree of freedom and its clipping makes the interval a little
conservative.

What a row's interval covers: with B = 1, the expectation for *this* base model (over retraining seeds
and test images); with B > 1, over base models too. Special cases, each named in the result's ``method``:

- S = 1 (and B = 1): the seed part is not estimable; the interval comes from the test images alone
  (the paired-proportions / McNemar-style interval: the sample variance of the N per-image differences
  over N, with N - 1 df) and ``seeds_included`` is False: it is too narrow by the seed part.
- S = 1 and B > 1: seed and base variance are not separable; both are in the base part (the interval
  is still valid: one seed per base model).
- N = 1: the test-set variance cannot be estimated: lo, hi, se and p are NaN.
- every D equal to one value v (e.g. both models right on every image): the moment estimate of the
  variance is 0, which would print a zero-width interval. Instead the interval bounds the population
  share of (image, seed) cells that differ from v by the exact Clopper–Pearson bound for 0 events in N
  images, u = 1 - (α/2)^(1/N) (about 3.7/N), and lets each such cell take any value in the range:
  [v - u·(v - low), v + u·(high - v)]; p_positive is the sign-test bound over images
  (P(D ≥ v) ≤ -low/(v - low) under H0: E[D] ≤ 0, by Markov's inequality on D - low), all conditional
  on the models trained.

No I/O: arrays in, frozen dataclasses out. ``batch_intervals`` is the vectorized core (any leading
dimensions: many rows or many simulated studies at once); everything else calls it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import stats

# Names of the mean squares, in the order of the coefficient vectors below.
_TERMS = ("base", "seed", "image", "base_image", "resid")


@dataclass(frozen=True)
class RowInterval:
    """A row's estimate with its confidence interval and where its variance comes from.

    var_* are the parts of se² (they sum to it): var_base = σ²_base/B, var_seed = σ²_seed/(B·S),
    var_image = σ²_image/N + σ²_base×image/(B·N) (the test set's share), var_residual = σ²_resid/(B·S·N)
    (seed×image interaction; shrinks with seeds and images). NaN where not estimated (seeds-only intervals
    know nothing of the test set). half_width is the larger distance from mean to lo or hi (both are equal
    for a t interval). p_positive: one-sided p-value of H0: E[D] <= 0 against E[D] > 0. seeds_included:
    whether the interval spans retraining-seed variance (False for one seed of one base model).
    n_images is None where unknown (seeds-only intervals). method: what the interval spans, in words.
    """

    mean: float
    lo: float
    hi: float
    half_width: float
    se: float
    df: float
    p_positive: float
    level: float
    var_base: float
    var_seed: float
    var_image: float
    var_residual: float
    n_base: int
    n_seeds: int
    n_images: int | None
    seeds_included: bool
    method: str


@dataclass(frozen=True)
class Comparison:
    """DiffROAR_a - DiffROAR_b, paired on the same test images and seeds: estimate, interval, p-values.

    p_two_sided: H0 E[D_a - D_b] = 0; p_a_greater: one-sided, H0 E[D_a - D_b] <= 0. ``interval`` holds
    the variance parts and counts.
    """

    difference: float
    lo: float
    hi: float
    half_width: float
    se: float
    df: float
    p_two_sided: float
    p_a_greater: float
    level: float
    method: str
    interval: RowInterval


class SeedAdvice(NamedTuple):
    """Whether a row wants more retraining seeds, how many to add next, and why."""

    more: bool
    add: int
    seed_share: float
    reason: str


class Simulated(NamedTuple):
    """Simulated per-image outcomes (boolean, shape (..., B, S, N)) and the truths they estimate.

    true_diffroar: expectation over base models, seeds and test images (what an interval over B > 1 base
    models covers); true_given_bases: the same for the B base models drawn, averaged over them (what an
    interval of one base model covers: with B = 1, the truth of that base model). Shape: the leading dims.
    """

    top: np.ndarray
    bottom: np.ndarray
    true_diffroar: np.ndarray
    true_given_bases: np.ndarray


# ---------------------------------------------------------------------------------------------------
# The core: variance components of D (..., B, S, N) and the t interval


def _mean_squares(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean squares (..., 5), degrees of freedom (5,)) of the terms in _TERMS; NaN where df = 0."""
    B, S, N = d.shape[-3:]
    m = d.mean(axis=(-3, -2, -1), keepdims=True)
    mb = d.mean(axis=(-2, -1), keepdims=True)       # per base model
    mbs = d.mean(axis=-1, keepdims=True)            # per (base, seed)
    mi = d.mean(axis=(-3, -2), keepdims=True)       # per image
    mbi = d.mean(axis=-2, keepdims=True)            # per (base, image)
    axes = (-3, -2, -1)
    ss = np.stack([
        S * N * ((mb - m) ** 2).sum(axis=axes),
        N * ((mbs - mb) ** 2).sum(axis=axes),
        B * S * ((mi - m) ** 2).sum(axis=axes),
        S * ((mbi - mb - mi + m) ** 2).sum(axis=axes),
        ((d - mbs - mbi + mb) ** 2).sum(axis=axes),
    ], axis=-1)
    df = np.array([B - 1, B * (S - 1), N - 1, (B - 1) * (N - 1), B * (S - 1) * (N - 1)], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ms = np.where(df > 0, ss / np.where(df > 0, df, 1.0), np.nan)
    return ms, df


def _component_rows(B: int, S: int, N: int) -> dict[str, np.ndarray]:
    """Each variance component as coefficients over the mean squares (expected mean squares inverted).

    Components that the design cannot separate are folded into the one that absorbs them (see the module
    docstring) and the other is left at zero.
    """
    z = np.zeros(5)

    def row(*c: float) -> np.ndarray:
        return np.array(c, dtype=float)

    if B > 1 and S > 1:
        return {"base": row(1, -1, 0, -1, 1) / (S * N), "seed": row(0, 1, 0, 0, -1) / N,
                "image": row(0, 0, 1, -1, 0) / (B * S), "base_image": row(0, 0, 0, 1, -1) / S,
                "resid": row(0, 0, 0, 0, 1)}
    if B == 1 and S > 1:  # base×image is part of the image effect of this one base model
        return {"base": z, "seed": row(0, 1, 0, 0, -1) / N, "image": row(0, 0, 1, 0, -1) / S,
                "base_image": z, "resid": row(0, 0, 0, 0, 1)}
    if B > 1:  # S == 1: seed variance is inside the base part, the residual inside base×image
        return {"base": row(1, 0, 0, -1, 0) / N, "seed": z, "image": row(0, 0, 1, -1, 0) / B,
                "base_image": row(0, 0, 0, 1, 0), "resid": z}
    return {"base": z, "seed": z, "image": row(0, 0, 1, 0, 0), "base_image": z, "resid": z}


def batch_intervals(diffs: Any, level: float = 0.95, low: float = -1.0, high: float = 1.0) -> dict[str, Any]:
    """The interval of every row in ``diffs`` (shape (..., B, S, N), numbers in [low, high]), vectorized.

    Returns a dict of arrays of the leading shape: mean, lo, hi, half_width, se, df, p_positive, var_base,
    var_seed, var_image, var_residual, degenerate (all D equal: the Clopper–Pearson rule), and the scalars
    n_base, n_seeds, n_images, seeds_included. ``low``/``high`` are the range a single D can take (±1 for
    a DiffROAR, ±2 for a difference of two); only the all-equal rule uses them.
    """
    _check_level(level)
    d = np.asarray(diffs, dtype=float)
    if d.ndim < 3 or 0 in d.shape[-3:]:
        raise ValueError(f"per-image differences must have shape (..., B, S, N) with B, S, N >= 1; got {d.shape}")
    B, S, N = d.shape[-3:]
    mean = d.mean(axis=(-3, -2, -1))
    ms, df_terms = _mean_squares(d)
    msz = np.nan_to_num(ms)  # terms with df = 0 carry coefficient 0 below

    comps = {}
    coef = {}
    for name, c in _component_rows(B, S, N).items():
        est = msz @ c
        keep = est > 0                                   # clip at 0: drop the component's coefficients
        comps[name] = np.where(keep, est, 0.0)
        coef[name] = np.where(keep[..., None], c, 0.0)
    w = {"base": 1 / B, "seed": 1 / (B * S), "image": 1 / N, "base_image": 1 / (B * N), "resid": 1 / (B * S * N)}
    var_base = comps["base"] * w["base"]
    var_seed = comps["seed"] * w["seed"]
    var_image = comps["image"] * w["image"] + comps["base_image"] * w["base_image"]
    var_resid = comps["resid"] * w["resid"]
    var = var_base + var_seed + var_image + var_resid
    c_var = sum(coef[k] * w[k] for k in w)                    # Var(D̄) as coefficients over the mean squares
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = ((c_var * msz) ** 2 / np.where(df_terms > 0, df_terms, np.inf)).sum(axis=-1)
        df = var ** 2 / denom                                 # Welch–Satterthwaite
        se = np.sqrt(var)
        q = stats.t.ppf(0.5 + level / 2, df)
        half = q * se
        p_pos = stats.t.sf(mean / se, df)

    # Every D equal (the moment variance is exactly 0): Clopper–Pearson bound on the share that differs.
    degenerate = ~(var > 0)
    if np.any(degenerate):
        u = 1.0 - ((1.0 - level) / 2) ** (1.0 / N)
        v = mean
        lo_d = v - u * (v - low)
        hi_d = v + u * (high - v)
        with np.errstate(invalid="ignore", divide="ignore"):
            p_sign = np.where(v > 0, (-low / (v - low)) ** N, 1.0)
        lo = np.where(degenerate, lo_d, mean - half)
        hi = np.where(degenerate, hi_d, mean + half)
        half = np.where(degenerate, np.maximum(v - lo_d, hi_d - v), half)
        se = np.where(degenerate, np.nan, se)
        df = np.where(degenerate, np.nan, df)
        p_pos = np.where(degenerate, p_sign, p_pos)
    else:
        lo, hi = mean - half, mean + half
    if N < 2:  # no test-set variance to estimate
        nan = np.full(np.shape(mean), np.nan)
        lo = hi = half = se = df = p_pos = nan
        var_image = nan
    return {"mean": mean, "lo": lo, "hi": hi, "half_width": half, "se": se, "df": df, "p_positive": p_pos,
            "var_base": var_base, "var_seed": var_seed, "var_image": var_image, "var_residual": var_resid,
            "degenerate": degenerate, "n_base": B, "n_seeds": S, "n_images": N, "seeds_included": S > 1 or B > 1}


def _method(B: int, S: int, N: int, degenerate: bool) -> str:
    if N < 2:
        return "not estimable: one test image (test-set variance unknown)"
    if degenerate:
        return (f"all differences equal: Clopper-Pearson bound on the share of differing images (N={N}); "
                "sign-test p")
    if B == 1 and S == 1:
        return (f"test images only (paired proportions, N={N}); seed variance not estimable from one seed: "
                "interval too narrow by it")
    spans = f"{S} seeds x {N} test images" + (f" x {B} base models" if B > 1 else " (this base model)")
    if B > 1 and S == 1:
        spans += "; seed variance inside base-model variance"
    return f"variance components (ANOVA moments) + Satterthwaite t: {spans}"


def _check_level(level: float) -> None:
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"confidence level must be strictly between 0 and 1; got {level}")


def _as_outcomes(top: Any, bottom: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(top)
    b = np.asarray(bottom)
    if t.ndim == 2:  # (S, N): one base model
        t, b = t[None], b[None]
    if t.shape != b.shape or t.ndim != 3:
        raise ValueError(f"top and bottom outcomes must have the same shape (B, S, N) or (S, N); "
                         f"got {t.shape} and {b.shape}")
    for x in (t, b):
        if x.dtype != bool and not np.isin(x, (0, 1)).all():
            raise ValueError("outcomes must be per-image correctness (booleans or 0/1), not accuracies or scores")
    return t.astype(np.int8), b.astype(np.int8)


def _row(r: dict[str, Any], level: float) -> RowInterval:
    B, S, N = r["n_base"], r["n_seeds"], r["n_images"]
    return RowInterval(
        mean=float(r["mean"]), lo=float(r["lo"]), hi=float(r["hi"]), half_width=float(r["half_width"]),
        se=float(r["se"]), df=float(r["df"]), p_positive=float(r["p_positive"]), level=float(level),
        var_base=float(r["var_base"]), var_seed=float(r["var_seed"]), var_image=float(r["var_image"]),
        var_residual=float(r["var_residual"]), n_base=B, n_seeds=S, n_images=N,
        seeds_included=bool(r["seeds_included"]), method=_method(B, S, N, bool(r["degenerate"])))


# ---------------------------------------------------------------------------------------------------
# Public API


def diffroar_interval(top: Any, bottom: Any, level: float = 0.95) -> RowInterval:
    """DiffROAR row with its interval, from per-image outcomes of the top-k and bottom-k models.

    top, bottom: boolean (B, S, N) (or (S, N) for one base model): B base models, S retraining seeds
    (seed s of top paired with seed s of bottom), N test images in the same order for all. The interval
    spans seeds, test images and (B > 1) base models; see the module docstring for the method.
    """
    t, b = _as_outcomes(top, bottom)
    return _row(batch_intervals(t - b, level), level)


def differences_interval(diffs: Any, level: float = 0.95, low: float = -1.0, high: float = 1.0) -> RowInterval:
    """The same interval for any per-image score of (B, S, N) (or (S, N)) runs with values in [low, high],
    e.g. an attribution-quality score top_i - bottom_i per test point and model."""
    d = np.asarray(diffs, dtype=float)
    return _row(batch_intervals(d[None] if d.ndim == 2 else d, level, low, high), level)


def seeds_only_interval(diffs: Any, level: float = 0.95) -> RowInterval:
    """t interval over per-seed DiffROARs, for records without per-image outcomes.

    mean ± t_{S-1} · sd/√S (Student). It ignores the test set's variance (the same test images serve
    every seed), so it is too narrow for the population; the method text says so. One seed, or seeds
    that all agree exactly, give NaN ends: there is no spread to estimate, and a zero-width interval
    would claim certainty.
    """
    _check_level(level)
    x = np.asarray(diffs, dtype=float).reshape(-1)
    if x.size == 0:
        raise ValueError("seeds_only_interval needs at least one per-seed DiffROAR")
    S = int(x.size)
    mean = float(x.mean())
    nan = float("nan")
    sd = float(x.std(ddof=1)) if S > 1 else nan
    se = sd / math.sqrt(S) if S > 1 and sd > 0 else nan
    df = float(S - 1) if S > 1 else nan
    half = float(stats.t.ppf(0.5 + level / 2, df) * se) if se == se else nan
    p = float(stats.t.sf(mean / se, df)) if se == se else nan
    return RowInterval(mean=mean, lo=mean - half, hi=mean + half, half_width=half, se=se, df=df, p_positive=p,
                       level=float(level), var_base=nan, var_seed=se * se, var_image=nan, var_residual=nan,
                       n_base=1, n_seeds=S, n_images=None, seeds_included=S > 1,
                       method=f"seeds only (Student t over {S} seeds); test-set variance not included")


def compare_rows(top_a: Any, bottom_a: Any, top_b: Any, bottom_b: Any, level: float = 0.95) -> Comparison:
    """DiffROAR_a - DiffROAR_b of two models or attributions on the same test images and seeds, paired.

    The per-(base, seed, image) differences D_a - D_b (values -2..2) go through the same variance
    components as a single row (``batch_intervals``), so the comparison accounts for seeds, test images
    and base models exactly as a row does, and pairing removes what the two share (image difficulty).
    """
    ta, ba = _as_outcomes(top_a, bottom_a)
    tb, bb = _as_outcomes(top_b, bottom_b)
    if ta.shape != tb.shape:
        raise ValueError(f"rows compared must share base models, seeds and test images; got {ta.shape} and {tb.shape}")
    r = batch_intervals((ta - ba) - (tb - bb), level, low=-2.0, high=2.0)
    row = _row(r, level)
    p_greater = row.p_positive
    if r["degenerate"]:  # the sign-test bound of the all-equal rule, on whichever side the difference lies
        p_two = 1.0 if row.mean == 0 else min(1.0, 2 * (2.0 / (abs(row.mean) + 2.0)) ** row.n_images)
    else:
        p_two = float(2 * stats.t.sf(abs(row.mean) / row.se, row.df)) if row.se > 0 else float("nan")
    return Comparison(difference=row.mean, lo=row.lo, hi=row.hi, half_width=row.half_width, se=row.se,
                      df=row.df, p_two_sided=p_two, p_a_greater=p_greater, level=row.level,
                      method="paired difference; " + row.method, interval=row)


def more_seeds_useful(top: Any, bottom: Any, level: float = 0.95, *, max_seed_share: float = 0.2,
                      target_half_width: float | None = None, min_seeds: int = 3,
                      max_seeds: int = 20) -> SeedAdvice:
    """The rule behind ``retrain.seeds: auto``: add seeds to a row only while they still shrink its interval.

    More seeds shrink only the seed-dependent part of Var(D̄), var_seed + var_residual; the rest (base
    models, test images) stays whatever the number of seeds. So a row stops when
      - it has max_seeds seeds (a cap on cost), or, once it has at least min_seeds (3: two degrees of
        freedom for the seed component, whose estimate from fewer seeds is too noisy to act on),
      - the seed-dependent part is at most ``max_seed_share`` of the rest (0.2: the half-width is then
        within √1.2 - 1 ≈ 10 % of what infinitely many seeds would give; each further seed would narrow
        it by about 1 % or less), or
      - its half-width is at most ``target_half_width`` (when given).
    ``add`` is how many seeds to run next: the S at which the current estimates meet the share or the
    target (whichever comes first), capped at max_seeds, minus the seeds already run.

    The rule looks at variances only, never at the row's mean, so stopping early does not bias the
    estimate or make the p-value optimistic (no "stop once significant"); on simulated studies the
    interval after ``auto`` stops covers the truth as often as a fixed number of seeds
    (tests/test_intervals.py). Seeds whose per-image outcomes vary most (accuracies near 0.5, unstable
    training) get more seeds; rows the test set dominates stop at min_seeds.
    """
    if not 1 <= min_seeds <= max_seeds:
        raise ValueError(f"need 1 <= min_seeds <= max_seeds; got {min_seeds}, {max_seeds}")
    if not max_seed_share > 0:
        raise ValueError(f"max_seed_share must be positive; got {max_seed_share}")
    r = diffroar_interval(top, bottom, level)
    S = r.n_seeds
    seed_part = r.var_seed + r.var_residual
    rest = r.var_base + r.var_image
    if rest != rest:
        share = math.nan
    else:
        share = seed_part / rest if rest > 0 else (0.0 if seed_part == 0 else math.inf)
    if S >= max_seeds:
        return SeedAdvice(False, 0, share, f"reached max_seeds={max_seeds}")
    if S < min_seeds:
        return SeedAdvice(True, min_seeds - S, share, f"fewer than min_seeds={min_seeds}")
    if share != share:  # one test image: the test-set part is unknown, seeds cannot be weighed against it
        return SeedAdvice(False, 0, share, "test-set variance not estimable (one test image)")
    if share <= max_seed_share:
        return SeedAdvice(False, 0, share, f"seed part {share:.0%} of the rest <= {max_seed_share:.0%}")
    if target_half_width is not None and r.half_width <= target_half_width:
        return SeedAdvice(False, 0, share, f"half-width {r.half_width:.4f} <= target {target_half_width}")
    # The seed-dependent part scales as 1/S: the S that meets the share, or the target half-width.
    need = S * share / max_seed_share
    if target_half_width is not None and r.se == r.se:
        q = stats.t.ppf(0.5 + level / 2, max(r.df, 1.0))
        room = (target_half_width / q) ** 2 - rest
        if room > 0:
            need = min(need, S * seed_part / room)
    wanted = max_seeds if need >= max_seeds else max(S + 1, math.ceil(need))
    return SeedAdvice(True, wanted - S, share,
                      f"seed part {share:.0%} of the rest > {max_seed_share:.0%}: about {wanted} seeds meet it")


def simulate_outcomes(rng: np.random.Generator, true_top_acc: float, true_bottom_acc: float, B: int, S: int,
                      N: int, sd_base: float, sd_seed: float, *, sd_image: float = 3.0, rho_image: float = 0.5,
                      sd_base_image: float = 0.0, rho_seed: float = 0.0, studies: int | None = None) -> Simulated:
    """Per-image outcomes of simulated DiffROAR studies with a known truth (probit random-effects model).

    Model i of direction t (top or bottom), base model b, seed s answers image i correctly with probability
    Φ(a_t + β_tb + σ_tbs + z_ti + γ_tbi): base-model shifts β ~ N(0, sd_base²), seed shifts σ ~ N(0,
    sd_seed²) (top and bottom correlated rho_seed), image difficulties z ~ N(0, sd_image²) shared by all
    seeds and base models and correlated rho_image between top and bottom, base×image γ ~ N(0,
    sd_base_image²). All sds are on the probit scale. a_t = Φ⁻¹(acc_t)·√(1 + τ²) (τ² the sum of the
    variances) makes the expected accuracy exactly acc_t, so the truth is known in closed form. Each study
    draws a fresh test set (the images are a sample of the population, which is what an interval must
    cover). ``studies`` adds a leading dimension of independent studies.

    With the defaults, N = 359, accuracies 0.6/0.3 and sd_seed = 0.08, a row has a test-set SE of 0.024,
    an sd over seeds of 0.023, and the test set carries 73 % of a 2-seed row's variance: the sizes measured
    on the default study (0.011-0.030, 0.01-0.03, 68-94 %).
    """
    lead = () if studies is None else (int(studies),)
    norm = rng.standard_normal
    tau2 = sd_base ** 2 + sd_seed ** 2 + sd_image ** 2 + sd_base_image ** 2
    a = stats.norm.ppf([true_top_acc, true_bottom_acc]) * math.sqrt(1 + tau2)

    def pair(shape: tuple[int, ...], sd: float, rho: float) -> tuple[np.ndarray, np.ndarray]:
        x = norm(shape)
        y = rho * x + math.sqrt(1 - rho * rho) * norm(shape)
        return sd * x, sd * y

    base_t, base_b = pair(lead + (B, 1, 1), sd_base, 0.0)
    seed_t, seed_b = pair(lead + (B, S, 1), sd_seed, rho_seed)
    img_t, img_b = pair(lead + (1, 1, N), sd_image, rho_image)
    bi_t, bi_b = pair(lead + (B, 1, N), sd_base_image, 0.0)
    shape = lead + (B, S, N)
    top = rng.random(shape) < stats.norm.cdf(a[0] + base_t + seed_t + img_t + bi_t)
    bottom = rng.random(shape) < stats.norm.cdf(a[1] + base_b + seed_b + img_b + bi_b)
    scale = math.sqrt(1 + tau2 - sd_base ** 2)
    given = (stats.norm.cdf((a[0] + base_t) / scale) - stats.norm.cdf((a[1] + base_b) / scale))
    truth = np.full(lead, float(true_top_acc - true_bottom_acc))
    return Simulated(top, bottom, truth, given.mean(axis=(-3, -2, -1)))
