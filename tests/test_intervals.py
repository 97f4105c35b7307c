"""Intervals of DiffROAR rows (fastroar/metrics/intervals.py): coverage on simulated studies with a known
truth, and agreement with independent references (hand-counted paired proportions, scipy's t interval,
mean squares summed by explicit loops)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fastroar.metrics.intervals import (
    batch_intervals,
    compare_rows,
    diffroar_interval,
    more_seeds_useful,
    seeds_only_interval,
    simulate_outcomes,
)

N = 359  # test images of the default study (blockdigits)
STUDIES = 1000


def _diffs(sim) -> np.ndarray:
    return sim.top.astype(np.int8) - sim.bottom.astype(np.int8)


def _coverage(B: int, S: int, sd_base: float, sd_seed: float, seed: int, **kw) -> tuple[float, dict, object]:
    sim = simulate_outcomes(np.random.default_rng(seed), 0.6, 0.3, B, S, N, sd_base, sd_seed, studies=STUDIES, **kw)
    r = batch_intervals(_diffs(sim))
    truth = sim.true_diffroar if B > 1 else sim.true_given_bases  # B = 1: the interval is for that base model
    return float(np.mean((r["lo"] <= truth) & (truth <= r["hi"]))), r, sim


# --- coverage -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("B,S,sd_base,sd_seed,seed", [
    (1, 5, 0.0, 0.08, 10),   # the paper's five seeds
    (1, 5, 0.1, 0.15, 11),   # a base-model shift the B = 1 interval does not claim to span
    (1, 2, 0.0, 0.08, 12),   # today's default: two seeds
    (3, 5, 0.1, 0.08, 13),   # three base models: the interval spans them
])
def test_95_interval_covers_the_truth_in_93_to_97_percent_of_simulated_studies(B, S, sd_base, sd_seed, seed):
    cov, r, sim = _coverage(B, S, sd_base, sd_seed, seed)
    assert 0.93 <= cov <= 0.97, cov
    # The simulated sizes are those measured on the default study.
    test_se = np.sqrt(np.median(r["var_image"]))
    per_seed_sd = np.median(_diffs(sim).mean(-1).std(-1, ddof=1))
    assert 0.011 <= test_se <= 0.030 and 0.01 <= per_seed_sd <= 0.03, (test_se, per_seed_sd)


def test_seeds_only_intervals_under_cover_the_same_simulation():
    """What the issue complains about: spread over seeds alone misses the test set's share."""
    sim = simulate_outcomes(np.random.default_rng(10), 0.6, 0.3, 1, 5, N, 0.0, 0.08, studies=STUDIES)
    per_seed = _diffs(sim).mean(-1)[:, 0, :]                         # (studies, S)
    lo, hi = stats.t.interval(0.95, 4, loc=per_seed.mean(1), scale=stats.sem(per_seed, axis=1))
    truth = sim.true_given_bases
    naive = np.mean((lo <= truth) & (truth <= hi))
    mean_pm_std = np.mean(np.abs(per_seed[:, :2].mean(1) - truth) <= per_seed[:, :2].std(1, ddof=1))
    assert naive < 0.85 and mean_pm_std < 0.85, (naive, mean_pm_std)
    # and seeds_only_interval is that same interval
    one = seeds_only_interval(per_seed[0])
    assert (one.lo, one.hi) == pytest.approx((lo[0], hi[0]), rel=1e-12)


def test_variance_estimate_is_unbiased_for_the_spread_of_the_row_over_studies():
    """Mean of se² over studies vs the variance of the row estimate across studies (its definition)."""
    sim = simulate_outcomes(np.random.default_rng(20), 0.6, 0.3, 1, 3, N, 0.0, 0.2, studies=4000)
    r = batch_intervals(_diffs(sim))
    err = r["mean"] - sim.true_given_bases
    ratio = np.mean(r["se"] ** 2) / np.mean(err ** 2)
    assert 0.93 <= ratio <= 1.15, ratio  # clipping at 0 may only add


@pytest.mark.parametrize("S,sd_seed", [(1, 0.0), (2, 0.08), (5, 0.08)])  # one seed: honest only without seed noise
def test_p_positive_is_calibrated_under_a_true_diffroar_of_zero(S, sd_seed):
    studies = 2000
    sim = simulate_outcomes(np.random.default_rng(30 + S), 0.45, 0.45, 1, S, N, 0.0, sd_seed, studies=studies)
    rate = np.mean(batch_intervals(_diffs(sim))["p_positive"] < 0.05)
    tol = 3 * math.sqrt(0.05 * 0.95 / studies)
    assert abs(rate - 0.05) <= tol, rate


# --- independent references ---------------------------------------------------------------------------


def test_one_seed_is_the_paired_proportions_interval_from_the_discordant_counts():
    rng = np.random.default_rng(1)
    top = rng.random((1, 1, N)) < 0.7
    bottom = np.where(rng.random((1, 1, N)) < 0.6, top, rng.random((1, 1, N)) < 0.3)
    b = int(np.sum(top & ~bottom))   # top right, bottom wrong
    c = int(np.sum(~top & bottom))
    r = diffroar_interval(top, bottom)
    # McNemar-style: the sample variance of the per-image differences is ((b+c) - (b-c)²/N)/(N-1).
    se = math.sqrt(((b + c) - (b - c) ** 2 / N) / (N - 1) / N)
    assert r.mean == pytest.approx((b - c) / N, abs=1e-15)
    assert r.se == pytest.approx(se, rel=1e-12) and r.df == pytest.approx(N - 1)
    assert r.half_width == pytest.approx(stats.t.ppf(0.975, N - 1) * se, rel=1e-12)
    # the textbook Wald interval for paired proportions (z, variance over N²) agrees to within 1 %
    wald = 1.959964 * math.sqrt((b + c) - (b - c) ** 2 / N) / N
    assert r.half_width == pytest.approx(wald, rel=0.01)
    per_image = top[0, 0].astype(int) - bottom[0, 0]
    assert r.p_positive == pytest.approx(stats.ttest_1samp(per_image, 0.0, alternative="greater").pvalue, rel=1e-10)
    assert not r.seeds_included and "not estimable" in r.method


def test_mean_squares_match_sums_written_out_by_loops():
    """The variance of the mean from the five sums of squares of the crossed-nested design, by loops."""
    rng = np.random.default_rng(2)
    B, S, n = 2, 3, 5
    d = rng.integers(-1, 2, size=(B, S, n)).astype(float)
    m = d.mean()
    mb = [d[b].mean() for b in range(B)]
    mi = [d[:, :, i].mean() for i in range(n)]
    ss_b = sum(S * n * (mb[b] - m) ** 2 for b in range(B))
    ss_s = sum(n * (d[b, s].mean() - mb[b]) ** 2 for b in range(B) for s in range(S))
    ss_i = sum(B * S * (mi[i] - m) ** 2 for i in range(n))
    ss_bi = sum(S * (d[b, :, i].mean() - mb[b] - mi[i] + m) ** 2 for b in range(B) for i in range(n))
    ss_e = sum((d[b, s, i] - d[b, s].mean() - d[b, :, i].mean() + mb[b]) ** 2
               for b in range(B) for s in range(S) for i in range(n))
    assert ss_b + ss_s + ss_i + ss_bi + ss_e == pytest.approx(((d - m) ** 2).sum())
    ms_b, ms_s, ms_i, ms_bi, ms_e = (ss_b / (B - 1), ss_s / (B * (S - 1)), ss_i / (n - 1),
                                     ss_bi / ((B - 1) * (n - 1)), ss_e / (B * (S - 1) * (n - 1)))
    # components (expected mean squares inverted), clipped at 0
    comp = {"b": (ms_b - ms_s - ms_bi + ms_e) / (S * n), "s": (ms_s - ms_e) / n, "i": (ms_i - ms_bi) / (B * S),
            "bi": (ms_bi - ms_e) / S, "e": ms_e}
    comp = {k: max(v, 0.0) for k, v in comp.items()}
    var = comp["b"] / B + comp["s"] / (B * S) + comp["i"] / n + comp["bi"] / (B * n) + comp["e"] / (B * S * n)
    r = batch_intervals(d)
    assert float(r["se"]) ** 2 == pytest.approx(var, rel=1e-12)
    parts = r["var_base"] + r["var_seed"] + r["var_image"] + r["var_residual"]
    assert float(parts) == pytest.approx(var, rel=1e-12)


def test_seeds_only_interval_is_scipys_t_interval():
    x = np.array([0.21, 0.25, 0.19, 0.27, 0.22])
    r = seeds_only_interval(x, level=0.9)
    lo, hi = stats.t.interval(0.9, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (r.lo, r.hi) == pytest.approx((lo, hi), rel=1e-12)
    assert r.p_positive == pytest.approx(stats.ttest_1samp(x, 0.0, alternative="greater").pvalue, rel=1e-10)
    assert "test-set variance not included" in r.method and r.n_images is None
    one = seeds_only_interval([0.3])
    assert one.mean == 0.3 and math.isnan(one.half_width) and math.isnan(one.lo)
    same = seeds_only_interval([0.3, 0.3])  # "± 0.000" from two seeds is what must never print
    assert math.isnan(same.half_width)


# --- comparisons --------------------------------------------------------------------------------------


def test_compare_rows_identical_rows_differ_by_zero_with_p_one():
    sim = simulate_outcomes(np.random.default_rng(3), 0.6, 0.3, 1, 5, N, 0.0, 0.05)
    c = compare_rows(sim.top, sim.bottom, sim.top, sim.bottom)
    assert c.difference == 0 and c.p_two_sided == 1.0 and c.p_a_greater == 1.0
    assert c.lo < 0 < c.hi  # not a zero-width interval
    always = np.ones_like(sim.top)  # a: top always right, bottom always wrong; b: both always right
    assert compare_rows(always, ~always, always, always).p_two_sided == pytest.approx(2 * (2 / 3) ** N)
    assert compare_rows(always, always, always, ~always).p_two_sided == pytest.approx(2 * (2 / 3) ** N)


def test_compare_rows_is_the_row_interval_of_the_paired_differences():
    """One variance implementation: comparing against an all-zero row gives the row's own interval."""
    sim = simulate_outcomes(np.random.default_rng(4), 0.6, 0.3, 2, 4, N, 0.05, 0.05)
    zero = np.zeros_like(sim.top)
    c = compare_rows(sim.top, sim.bottom, zero, zero)
    r = diffroar_interval(sim.top, sim.bottom)
    assert (c.difference, c.se, c.df, c.lo, c.hi) == pytest.approx((r.mean, r.se, r.df, r.lo, r.hi), rel=1e-12)
    assert c.p_two_sided == pytest.approx(2 * stats.t.sf(abs(r.mean) / r.se, r.df), rel=1e-12)


def test_compare_rows_detects_a_known_shift_and_is_antisymmetric():
    rng = np.random.default_rng(5)
    sim = simulate_outcomes(rng, 0.6, 0.3, 1, 5, N, 0.0, 0.05)
    # b: the same models, except that 15 % of the top-k model's correct answers turn wrong
    top_b = sim.top & (rng.random(sim.top.shape) >= 0.15)
    shift = (sim.top.astype(int) - top_b).mean()
    expected = 0.15 * 0.6                                               # 15 % of a 0.6 accuracy
    ab = compare_rows(sim.top, sim.bottom, top_b, sim.bottom)
    ba = compare_rows(top_b, sim.bottom, sim.top, sim.bottom)
    assert ab.difference == pytest.approx(shift) and ab.lo > 0 and ab.p_a_greater < 1e-3
    assert ab.lo <= expected <= ab.hi
    assert ba.difference == pytest.approx(-shift) and ba.p_a_greater == pytest.approx(1 - ab.p_a_greater)
    assert ba.p_two_sided == pytest.approx(ab.p_two_sided)


# --- degenerate inputs --------------------------------------------------------------------------------


def test_all_differences_equal_give_the_clopper_pearson_bound_not_a_zero_width_interval():
    ones = np.ones((1, 3, N), bool)
    u = 1 - 0.025 ** (1 / N)                                            # exact bound, 0 events in N
    same = diffroar_interval(ones, ones)
    assert same.mean == 0 and (same.lo, same.hi) == pytest.approx((-u, u)) and same.p_positive == 1.0
    assert 0.009 < u < 0.011 and "Clopper-Pearson" in same.method
    perfect = diffroar_interval(ones, ~ones)
    assert perfect.hi == 1.0 and perfect.lo == pytest.approx(1 - 2 * u) and perfect.p_positive == 0.5 ** N
    # the Clopper–Pearson bound is scipy's
    cp = stats.binomtest(0, N).proportion_ci(0.95, method="exact").high
    assert u == pytest.approx(cp, rel=1e-9)


def test_one_image_is_not_estimable_and_says_so():
    r = diffroar_interval(np.ones((1, 4, 1), bool), np.array([[[0], [1], [0], [0]]], bool))
    assert r.mean == 0.75 and math.isnan(r.lo) and math.isnan(r.hi) and math.isnan(r.p_positive)
    assert "one test image" in r.method


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 2), (1, 2, 1), (2, 1, 3), (1, 1, 7), (3, 2, 4), (1, 5, 9)])
def test_small_inputs_never_give_a_zero_width_interval(shape):
    rng = np.random.default_rng(6)
    for _ in range(50):
        top = rng.random(shape) < rng.random()
        bottom = rng.random(shape) < rng.random()
        r = diffroar_interval(top, bottom)
        assert math.isnan(r.half_width) or r.half_width > 0, (top, bottom, r)
        assert math.isnan(r.lo) or r.lo <= r.mean <= r.hi


def test_two_dimensional_outcomes_are_one_base_model_and_bad_shapes_raise():
    rng = np.random.default_rng(7)
    top, bottom = rng.random((3, 20)) < 0.7, rng.random((3, 20)) < 0.4
    assert diffroar_interval(top, bottom) == diffroar_interval(top[None], bottom[None])
    with pytest.raises(ValueError, match="same shape"):
        diffroar_interval(top, bottom[:, :10])
    with pytest.raises(ValueError, match="per-image correctness"):
        diffroar_interval(top * 0.5, bottom)
    with pytest.raises(ValueError, match="level"):
        diffroar_interval(top, bottom, level=95)


# --- how many seeds -----------------------------------------------------------------------------------


def test_more_seeds_only_while_they_shrink_the_interval():
    rng = np.random.default_rng(8)
    few = simulate_outcomes(rng, 0.6, 0.3, 1, 2, N, 0.0, 0.05)
    start = more_seeds_useful(few.top, few.bottom)
    assert start.more and start.add == 1 and "min_seeds" in start.reason
    # seed noise far above the test set's: more seeds, and a sensible number of them
    noisy = simulate_outcomes(rng, 0.6, 0.3, 1, 3, N, 0.0, 0.6)
    advice = more_seeds_useful(noisy.top, noisy.bottom)
    r = diffroar_interval(noisy.top, noisy.bottom)
    share = (r.var_seed + r.var_residual) / (r.var_base + r.var_image)
    assert advice.more and advice.seed_share == pytest.approx(share)
    assert advice.add == min(20, math.ceil(3 * share / 0.1)) - 3
    # every seed the same model: the seed part is the residual only, already small
    same = np.repeat(noisy.top[:, :1], 5, axis=1), np.repeat(noisy.bottom[:, :1], 5, axis=1)
    assert not more_seeds_useful(*same).more
    assert not more_seeds_useful(noisy.top, noisy.bottom, max_seeds=3).more
    assert not more_seeds_useful(noisy.top, noisy.bottom, target_half_width=1.0).more


def test_simulated_accuracies_have_the_stated_truth():
    sim = simulate_outcomes(np.random.default_rng(9), 0.7, 0.4, 2, 3, 200, 0.1, 0.1, studies=2000)
    assert sim.top.mean() == pytest.approx(0.7, abs=0.01) and sim.bottom.mean() == pytest.approx(0.4, abs=0.01)
    assert np.all(sim.true_diffroar == pytest.approx(0.3))
    assert sim.true_given_bases.mean() == pytest.approx(0.3, abs=0.005)


@pytest.mark.parametrize("shape", [(1, 4, 1), (1, 4, 30), (2, 1, 30)])
def test_seed_advice_on_degenerate_rows_does_not_crash(shape):
    ones = np.ones(shape, bool)
    advice = more_seeds_useful(ones, ones)   # all equal: nothing for more seeds to shrink once min_seeds ran
    assert advice.more == (shape[1] < 3) and advice.add == max(0, 3 - shape[1])
    mixed = more_seeds_useful(ones, np.arange(np.prod(shape)).reshape(shape) % 2 == 0)
    assert isinstance(mixed.more, bool) and mixed.add >= 0



def _run_auto(sim, studies: int) -> tuple[np.ndarray, np.ndarray]:
    """retrain.seeds: auto on simulated rows: start at 3 seeds, add what the rule asks, up to 20."""
    used, covered = [], []
    for i in range(studies):
        S = 3
        while (advice := more_seeds_useful(sim.top[i, :, :S], sim.bottom[i, :, :S])).more:
            S += advice.add
        r = diffroar_interval(sim.top[i, :, :S], sim.bottom[i, :, :S])
        used.append(S)
        covered.append(r.lo <= sim.true_given_bases[i] <= r.hi)
    return np.array(used), np.array(covered)


def test_seeds_auto_keeps_coverage_and_spends_seeds_where_they_shrink_the_interval():
    rng = np.random.default_rng(40)
    used, covered = _run_auto(simulate_outcomes(rng, 0.6, 0.3, 1, 20, N, 0.0, 0.08, studies=600), 600)
    assert 0.93 <= covered.mean() <= 0.97, covered.mean()
    assert np.median(used) <= 5 and used.mean() <= 8, np.bincount(used)       # the measured noise sizes
    clear, _ = _run_auto(simulate_outcomes(rng, 0.6, 0.3, 1, 20, N, 0.0, 0.03, sd_image=4.0, studies=200), 200)
    noisy, _ = _run_auto(simulate_outcomes(rng, 0.6, 0.3, 1, 20, N, 0.0, 0.4, studies=200), 200)
    assert np.mean(clear == 3) > 0.5 and noisy.mean() > 15, (np.bincount(clear), np.bincount(noisy))
