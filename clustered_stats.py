"""Week-clustered statistics: the week-blocked bootstrap and the week sign-flip test, shared by the
comparison core (scoring.py: accuracy CIs, the test against the majority baseline) and the signal figures
(signals.py: MCC, IC, calibration and backtest CIs).

Why clustered by week: a test split is a few weeks x many stocks, and stocks move together within a week,
so 300 rows are nowhere near 300 independent trials. A CI resamples whole weeks (the same draws for every
figure of one comparison, so differences are paired); the paired test flips the sign of whole weeks'
differences.

>>> weeks = ["w1"] * 3 + ["w2"] * 3 + ["w3"] * 3
>>> week_sign_flip_test([1] * 9, [0] * 9, weeks)        # 2 of the 2^3 sign patterns are as extreme
0.25
"""
import itertools

import numpy as np

# ---------------------------------------------------------------------------------------------
# Defaults (comparison.py's --bootstrap and --seed mirror the first and third)
# ---------------------------------------------------------------------------------------------
BOOTSTRAP_SAMPLES = 2000     # week-blocked resamples for the 95 % CIs
CONFIDENCE = 0.95
SEED = 0                     # the bootstrap and (beyond EXACT_MAX_WEEKS) the sign-flip draws
EXACT_MAX_WEEKS = 16         # up to 2^16 sign patterns are enumerated exactly; more weeks are sampled
SIGN_FLIP_SAMPLES = 20000


# ---------------------------------------------------------------------------------------------
# The week-blocked bootstrap
# ---------------------------------------------------------------------------------------------
def week_index(weeks):
    """(sorted week names, row -> week position array)."""
    names = sorted(set(weeks))
    pos = {w: k for k, w in enumerate(names)}
    return names, np.array([pos[w] for w in weeks], dtype=int)


def week_draws(n_weeks, samples=BOOTSTRAP_SAMPLES, seed=SEED):
    """(samples, n_weeks) matrix: how often each week is drawn in each resample (n_weeks draws with
    replacement). The same seed gives the same draws, so all figures of one comparison are paired."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_weeks, np.full(n_weeks, 1 / n_weeks), size=samples)


def percentile_ci(values, confidence=CONFIDENCE):
    """[low, high] percentile interval of bootstrap values (NaN draws, where the figure is undefined,
    are left out); None when no draw is defined."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    alpha = (1 - confidence) / 2
    return [float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))]


def week_blocked_bootstrap(correct, weeks, samples=BOOTSTRAP_SAMPLES, seed=SEED, confidence=CONFIDENCE):
    """Percentile CI of accuracy resampling whole weeks. correct: (rows, series) 0/1 matrix; every series is
    resampled with the same weeks so differences are paired. Returns (low, high) arrays per series."""
    correct = np.asarray(correct, dtype=float)
    names, index = week_index(weeks)
    per_week = np.zeros((len(names), correct.shape[1]))
    np.add.at(per_week, index, correct)
    rows_per_week = np.bincount(index, minlength=len(names)).astype(float)
    draws = week_draws(len(names), samples, seed)
    acc = (draws @ per_week) / (draws @ rows_per_week)[:, None]
    alpha = (1 - confidence) / 2
    return np.quantile(acc, alpha, axis=0), np.quantile(acc, 1 - alpha, axis=0)


def per_week_sums(values, index, n_weeks):
    """(n_weeks, columns) sums of row values per week."""
    values = np.asarray(values, dtype=float)
    values = values.reshape(len(values), -1)
    out = np.zeros((n_weeks, values.shape[1]))
    np.add.at(out, index, values)
    return out


# ---------------------------------------------------------------------------------------------
# The week sign-flip test
# ---------------------------------------------------------------------------------------------
def week_sign_flip_test(correct_a, correct_b, weeks, seed=SEED, samples=SIGN_FLIP_SAMPLES):
    """Two-sided paired test of equal accuracy, clustered by week: the per-week sums of (a - b) have their
    signs flipped (all 2^weeks patterns when weeks <= EXACT_MAX_WEEKS, else sampled). Returns p."""
    diff = np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float)
    week_names = sorted(set(weeks))
    per_week = np.zeros(len(week_names))
    np.add.at(per_week, [week_names.index(w) for w in weeks], diff)
    observed = abs(per_week.sum())
    if observed == 0:
        return 1.0
    if len(week_names) <= EXACT_MAX_WEEKS:
        signs = np.array(list(itertools.product((1, -1), repeat=len(week_names))))
        return float(np.mean(np.abs(signs @ per_week) >= observed - 1e-9))
    signs = np.random.default_rng(seed).choice((1, -1), size=(samples, len(week_names)))
    return float((np.sum(np.abs(signs @ per_week) >= observed - 1e-9) + 1) / (samples + 1))
