"""From text to signal: direction probabilities scored as forecasts, and a weekly backtest with costs.

    from signals import direction_mcc, information_coefficient, probability_metrics, backtest
    mcc_all, mcc_parsed = direction_mcc(predicted, truth)          # "up" / "down" / None per row
    ic = information_coefficient(expected, realised, weeks)         # per-week Spearman, mean, t
    probs = probability_metrics(p_up, truth_up, weeks)               # Brier, log loss, ECE, AUC, coverage
    bt = backtest(records, cost_bps=10, top_k=3)                      # long/short, top-k, long-only, benchmark

The statistics behind the comparison's signal figures (scoring.compare calls score_signals; their tables and
plots are written by comparison_files.py). Every function takes plain lists; nothing reads a file or a model.

Why week blocks: a test split is a few weeks x many stocks that move together within a week, so a CI
resamples whole weeks (clustered_stats.py; the same draws for every figure of one comparison, so
differences are paired). In the backtest a week is one observation, so resampling weeks is the ordinary
bootstrap of weekly returns.
"""
import math
from collections import defaultdict

import numpy as np

from clustered_stats import BOOTSTRAP_SAMPLES, CONFIDENCE, SEED, percentile_ci, per_week_sums, week_draws, week_index
from prompt import bin_midpoint

# ---------------------------------------------------------------------------------------------
# Defaults (comparison.py's flags mirror the ones a user sets)
# ---------------------------------------------------------------------------------------------
ECE_BINS = 10                # equal-width bins of p_up for ECE and the reliability diagram
COVERAGE_THRESHOLDS = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25)   # abstain when |p_up - 0.5| < t
MIN_TICKERS_PER_WEEK = 3     # IC: a Spearman correlation over fewer tickers is noise
WEEKS_PER_YEAR = 52
COST_BPS = 10.0              # one-way cost per unit of turnover, in basis points
TOP_K = 3                    # top-k / bottom-k: 3 of the Dow's 30 per side; capped at half the week's tickers
MIN_WEEKS = 26               # fewer weeks than this: a printed warning (the public test split has 10)
LOG_LOSS_EPS = 1e-15         # p_up is clipped to [eps, 1 - eps] so one confident miss is finite
STRATEGIES = ("long_short", "top_bottom_k", "long_only")
BENCHMARK = "benchmark"


# ---------------------------------------------------------------------------------------------
# Direction: MCC
# ---------------------------------------------------------------------------------------------
def mcc_from_counts(tp, fp, tn, fn):
    """Matthews correlation from confusion counts (arrays work too); 0 where it is undefined (a row or
    column of the confusion matrix is empty), as scikit-learn does.

    >>> round(float(mcc_from_counts(5, 0, 5, 0)), 3), round(float(mcc_from_counts(1, 3, 1, 3)), 3)
    (1.0, -0.5)
    """
    tp, fp, tn, fn = (np.asarray(x, dtype=float) for x in (tp, fp, tn, fn))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(denom > 0, (tp * tn - fp * fn) / np.where(denom > 0, denom, 1), 0.0)
    return value


def confusion_counts(predicted, truth, unparsed_wrong=True):
    """Rows of (tp, fp, tn, fn) indicators, 'up' = positive. With unparsed_wrong a row without a predicted
    direction counts as the opposite of the truth (as binary accuracy counts it wrong); without it the row
    is all zeros (left out)."""
    rows = []
    for p, t in zip(predicted, truth):
        if p is None:
            if not unparsed_wrong:
                rows.append((0, 0, 0, 0))
                continue
            p = "down" if t == "up" else "up"
        rows.append((p == "up" and t == "up", p == "up" and t == "down", p == "down" and t == "down",
                     p == "down" and t == "up"))
    return np.array(rows, dtype=float).reshape(len(rows), 4)


def direction_mcc(predicted, truth):
    """(MCC over all n with no-direction = wrong, MCC over rows with a direction) of 'up'/'down' lists.

    >>> direction_mcc(["up", "down", None, "up"], ["up", "down", "down", "up"])
    (0.5773502691896258, 1.0)
    """
    out = []
    for wrong in (True, False):
        c = confusion_counts(predicted, truth, wrong).sum(axis=0)
        out.append(float(mcc_from_counts(*c)))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Cross-section: the information coefficient
# ---------------------------------------------------------------------------------------------
def ranks(values):
    """Ranks 1..n with ties given their average rank (what Spearman's correlation needs).

    >>> ranks([10, 20, 20, 5]).tolist()
    [2.0, 3.5, 3.5, 1.0]
    """
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    out = np.empty(len(values))
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_vals[end] != sorted_vals[start]:
            out[order[start:end]] = (start + end + 1) / 2
            start = end
    return out


def spearman(x, y):
    """Spearman rank correlation; None when either side is constant (undefined)."""
    rx, ry = ranks(x), ranks(y)
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return None
    return float(np.mean((rx - rx.mean()) * (ry - ry.mean())) / (sx * sy))


def expected_return(bin_code=None, p_bins=None):
    """Expected weekly return in percent: the p_bins-weighted bin midpoint when p_bins ({bin code: p})
    is given, else the signed midpoint of the predicted bin, else None.

    >>> expected_return("D3"), expected_return(p_bins={"U1": 0.5, "D2": 0.5})
    (-2.5, -0.5)
    """
    if p_bins:
        total = sum(p_bins.values())
        if total > 0:
            return sum(p * bin_midpoint(code) for code, p in p_bins.items()) / total
    return bin_midpoint(bin_code) if bin_code else None


def information_coefficient(expected, realised, weeks, min_tickers=MIN_TICKERS_PER_WEEK, samples=BOOTSTRAP_SAMPLES,
                            seed=SEED, confidence=CONFIDENCE):
    """Per week with >= min_tickers forecasts (expected not None), the Spearman correlation of expected
    and realised returns. Returns {mean, ci, t (= mean / (sd / sqrt(W))), positive_share, weeks (used),
    weeks_skipped, per_week {week: IC}}. Weeks with too few forecasts, or where either side is constant
    (the correlation is undefined), are skipped and counted."""
    by_week = defaultdict(list)
    for e, r, w in zip(expected, realised, weeks):
        by_week[w].append((e, r))
    per_week, skipped = {}, 0
    for w in sorted(by_week):
        pairs = [(e, r) for e, r in by_week[w] if e is not None and r is not None]
        ic = spearman(*zip(*pairs)) if len(pairs) >= min_tickers else None
        if ic is None:
            skipped += 1
        else:
            per_week[w] = ic
    values = np.array(list(per_week.values()))
    out = {"mean": None, "ci": None, "t": None, "positive_share": None, "weeks": len(values),
           "weeks_skipped": skipped, "per_week": per_week}
    if len(values):
        out["mean"] = float(values.mean())
        out["positive_share"] = float((values > 0).mean())
        sd = values.std(ddof=1) if len(values) > 1 else 0.0
        out["t"] = float(values.mean() / (sd / math.sqrt(len(values)))) if sd > 0 else None
        draws = week_draws(len(values), samples, seed)
        out["ci"] = percentile_ci(draws @ values / len(values), confidence)
    return out


# ---------------------------------------------------------------------------------------------
# Probabilities: Brier, log loss, ECE + reliability, ROC-AUC, accuracy vs coverage
# ---------------------------------------------------------------------------------------------
def brier(p, y):
    """Mean squared error of p_up against the 0/1 outcome (1 = up)."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    return float(np.mean((p - y) ** 2))


def log_loss(p, y, eps=LOG_LOSS_EPS):
    p, y = np.clip(np.asarray(p, float), eps, 1 - eps), np.asarray(y, float)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _bin_of(p, bins):
    return np.minimum((np.asarray(p, float) * bins).astype(int), bins - 1)   # p = 1 joins the last bin


def reliability(p, y, bins=ECE_BINS):
    """Per equal-width bin of p_up: {low, high, n, mean_p, up_share} (bins with rows only)."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    b = _bin_of(p, bins)
    out = []
    for k in range(bins):
        sel = b == k
        if sel.any():
            out.append({"low": k / bins, "high": (k + 1) / bins, "n": int(sel.sum()),
                        "mean_p": float(p[sel].mean()), "up_share": float(y[sel].mean())})
    return out


def ece(p, y, bins=ECE_BINS):
    """Expected calibration error: sum over bins of (n_bin / n) * |mean p - up share|."""
    n = len(p)
    return float(sum(r["n"] / n * abs(r["mean_p"] - r["up_share"]) for r in reliability(p, y, bins)))


def roc_auc(p, y):
    """Area under the ROC curve (the chance a random up week scores above a random down week, ties
    half); None with only one class."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    n_up, n_down = int(y.sum()), int(len(y) - y.sum())
    if not n_up or not n_down:
        return None
    r = ranks(p)
    return float((r[y == 1].sum() - n_up * (n_up + 1) / 2) / (n_up * n_down))


def accuracy_vs_coverage(p, y, thresholds=COVERAGE_THRESHOLDS, directions=None):
    """For each t: abstain when |p_up - 0.5| < t; [{threshold, coverage, n, accuracy}] over the rest.
    The call is up when p_up > 0.5, down below; at exactly 0.5 the text's direction (`directions`) when
    given, else up."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    tie = np.array([d != "down" for d in directions], dtype=float) if directions is not None else np.ones(len(p))
    call_up = np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, tie))
    out = []
    for t in thresholds:
        keep = np.abs(p - 0.5) >= t - 1e-12
        out.append({"threshold": float(t), "coverage": float(keep.mean()) if len(p) else None, "n": int(keep.sum()),
                    "accuracy": float((call_up[keep] == y[keep]).mean()) if keep.any() else None})
    return out


def probability_metrics(p_up, truth_up, weeks, directions=None, bins=ECE_BINS, thresholds=COVERAGE_THRESHOLDS,
                        samples=BOOTSTRAP_SAMPLES, seed=SEED, confidence=CONFIDENCE):
    """Brier, log loss, ECE, ROC-AUC (each with a week-blocked CI), the reliability table and accuracy vs
    coverage, over the rows that have a p_up (None elsewhere). truth_up: 1 = the week went up."""
    keep = [k for k, p in enumerate(p_up) if p is not None]
    p = np.array([p_up[k] for k in keep], dtype=float)
    y = np.array([truth_up[k] for k in keep], dtype=float)
    w = [weeks[k] for k in keep]
    out = {"n": len(keep), "weeks": len(set(w))}
    if not keep:
        return out
    names, index = week_index(w)
    draws = week_draws(len(names), samples, seed)
    rows_w = per_week_sums(np.ones(len(p)), index, len(names))[:, 0]
    n_draw = draws @ rows_w
    with np.errstate(invalid="ignore", divide="ignore"):
        sq = per_week_sums((p - y) ** 2, index, len(names))[:, 0]
        pc = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        ll = per_week_sums(-(y * np.log(pc) + (1 - y) * np.log(1 - pc)), index, len(names))[:, 0]
        b = _bin_of(p, bins)
        onehot = np.eye(bins)[b]
        sp = draws @ per_week_sums(onehot * p[:, None], index, len(names))
        sy = draws @ per_week_sums(onehot * y[:, None], index, len(names))
        ece_draws = np.abs(sp - sy).sum(axis=1) / n_draw        # sum_b n_b/n |mean_p - share| = sum_b |Σp - Σy| / n
    week_rows = [np.flatnonzero(index == k) for k in range(len(names))]
    auc_draws = []
    for d in draws:
        rows = np.concatenate([np.repeat(week_rows[k], c) for k, c in enumerate(d) if c] or [np.array([], int)])
        a = roc_auc(p[rows], y[rows])
        auc_draws.append(np.nan if a is None else a)
    out.update({
        "up_share": float(y.mean()),
        "brier": brier(p, y), "brier_ci": percentile_ci((draws @ sq) / n_draw, confidence),
        "log_loss": log_loss(p, y), "log_loss_ci": percentile_ci((draws @ ll) / n_draw, confidence),
        "ece": ece(p, y, bins), "ece_ci": percentile_ci(ece_draws, confidence), "ece_bins": bins,
        "roc_auc": roc_auc(p, y), "roc_auc_ci": percentile_ci(auc_draws, confidence),
        "reliability": reliability(p, y, bins),
        "accuracy_vs_coverage": accuracy_vs_coverage(
            p, y, thresholds, None if directions is None else [directions[k] for k in keep]),
    })
    return out


def direction_metrics(predicted, truth, weeks, samples=BOOTSTRAP_SAMPLES, seed=SEED, confidence=CONFIDENCE):
    """{mcc, mcc_ci, mcc_parsed, mcc_parsed_ci, weeks} of 'up'/'down'/None predictions."""
    names, index = week_index(weeks)
    draws = week_draws(len(names), samples, seed)
    out = {"weeks": len(names)}
    for key, wrong in (("mcc", True), ("mcc_parsed", False)):
        per_week = per_week_sums(confusion_counts(predicted, truth, wrong), index, len(names))
        out[key] = float(mcc_from_counts(*per_week.sum(axis=0)))
        out[f"{key}_ci"] = percentile_ci(mcc_from_counts(*(draws @ per_week).T), confidence)
    return out


# ---------------------------------------------------------------------------------------------
# The backtest
# ---------------------------------------------------------------------------------------------
def strategy_weights(rows, strategy, top_k=TOP_K):
    """{ticker: weight} of one week. rows: [{ticker, direction ('up'/'down'/None), expected (or None)}].

    long_short: sign / N (N = tickers with a direction; gross exposure 1). top_bottom_k: +1/(2k) on the k
    highest expected returns, -1/(2k) on the k lowest (k capped at half the tickers with one, and lowered
    until every long is expected above every short, so a week of equal forecasts holds nothing). long_only: 1/n_up on up forecasts. benchmark: 1/M on every ticker of the week.
    A ticker with no direction (or no expected return, for top-k) weighs 0.

    >>> strategy_weights([{"ticker": "A", "direction": "up"}, {"ticker": "B", "direction": "down"}], "long_short")
    {'A': 0.5, 'B': -0.5}
    """
    w = {r["ticker"]: 0.0 for r in rows}
    if strategy == BENCHMARK:
        return {t: 1 / len(w) for t in w} if w else w
    if strategy == "long_short":
        signed = [(r["ticker"], 1 if r["direction"] == "up" else -1) for r in rows if r["direction"] in ("up", "down")]
        for t, s in signed:
            w[t] = s / len(signed)
    elif strategy == "long_only":
        ups = [r["ticker"] for r in rows if r["direction"] == "up"]
        for t in ups:
            w[t] = 1 / len(ups)
    elif strategy == "top_bottom_k":
        ranked = sorted((r for r in rows if r.get("expected") is not None), key=lambda r: (-r["expected"], r["ticker"]))
        k = min(top_k, len(ranked) // 2)
        while k and ranked[k - 1]["expected"] <= ranked[len(ranked) - k]["expected"]:
            k -= 1                               # every long must be expected above every short: ties rank nothing
        for r in ranked[:k]:
            w[r["ticker"]] = 1 / (2 * k)
        for r in ranked[len(ranked) - k:] if k else []:
            w[r["ticker"]] = -1 / (2 * k)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return w


def max_drawdown(net):
    """Largest fall of the equity curve prod(1 + net) from its running peak (starting at 1), as a
    negative fraction (0 when it never falls)."""
    equity = np.concatenate([[1.0], np.cumprod(1 + np.asarray(net, float))])
    return float(np.min(equity / np.maximum.accumulate(equity) - 1))


def performance(net, periods=WEEKS_PER_YEAR):
    """Annualised return (periods * mean), volatility (sqrt(periods) * sd), Sharpe (risk-free 0),
    max drawdown and cumulative return of weekly net returns."""
    net = np.asarray(net, float)
    sd = float(net.std(ddof=1)) if len(net) > 1 else None
    mean = float(net.mean()) if len(net) else None
    return {"weeks": len(net), "mean_weekly": mean,
            "annual_return": None if mean is None else periods * mean,
            "volatility": None if sd is None else math.sqrt(periods) * sd,
            "sharpe": math.sqrt(periods) * mean / sd if sd else None,
            "max_drawdown": max_drawdown(net) if len(net) else None,
            "cumulative": float(np.prod(1 + net) - 1) if len(net) else None}


def _sharpe_draws(draws, net, periods=WEEKS_PER_YEAR):
    n = draws.sum(axis=1)
    mean = draws @ net / n
    var = (draws @ net ** 2 - n * mean ** 2) / (n - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.maximum(var, 0))
        return np.where(sd > 1e-15, math.sqrt(periods) * mean / np.where(sd > 1e-15, sd, 1), np.nan)


def backtest(records, cost_bps=COST_BPS, top_k=TOP_K, strategies=STRATEGIES, samples=BOOTSTRAP_SAMPLES,
             seed=SEED, confidence=CONFIDENCE):
    """Weekly backtest of one forecaster's signals and the equal-weight benchmark.

    records: [{week, ticker, direction, expected, ret}] with ret the realised weekly return as a
    fraction. Weights per strategy_weights(); R_t = sum w r; TO_t = sum |w_t - w_(t-1)| with w_0 = 0
    (entries and exits both count; a ticker absent in a week weighs 0); net = R - cost_bps/1e4 * TO.
    Returns {weeks: [...], strategies: {name: {rows: [{week, turnover, gross, cost, net}], ...performance,
    sharpe_ci, vs_benchmark: {difference, ci}}}} (the benchmark has no vs_benchmark).
    """
    by_week = defaultdict(list)
    for r in records:
        by_week[r["week"]].append(r)
    weeks = sorted(by_week)
    out = {"weeks": weeks, "cost_bps": cost_bps, "top_k": top_k, "strategies": {}}
    draws = week_draws(len(weeks), samples, seed) if weeks else None
    nets = {}
    for name in (BENCHMARK, *strategies):
        previous, rows = {}, []
        for week in weeks:
            w = strategy_weights(by_week[week], name, top_k)
            ret = {r["ticker"]: r["ret"] for r in by_week[week]}
            gross = sum(wi * ret[t] for t, wi in w.items())
            turnover = sum(abs(w.get(t, 0.0) - previous.get(t, 0.0)) for t in set(w) | set(previous))
            cost = cost_bps / 1e4 * turnover
            rows.append({"week": week, "turnover": turnover, "gross": gross, "cost": cost, "net": gross - cost,
                         "positions": sum(1 for v in w.values() if v)})
            previous = w
        net = np.array([r["net"] for r in rows])
        nets[name] = net
        entry = {"rows": rows, **performance(net),
                 "mean_turnover": float(np.mean([r["turnover"] for r in rows])) if rows else None,
                 "total_cost": float(sum(r["cost"] for r in rows))}
        entry["sharpe_ci"] = percentile_ci(_sharpe_draws(draws, net), confidence) if len(net) > 1 else None
        if name != BENCHMARK and len(net):
            diff = net - nets[BENCHMARK]
            entry["vs_benchmark"] = {"difference": float(diff.mean()),
                                     "ci": percentile_ci(draws @ diff / len(diff), confidence)}
        out["strategies"][name] = entry
    return out


# ---------------------------------------------------------------------------------------------
# One comparison's signal figures (scoring.compare calls these; plain records in, plain dicts out)
# ---------------------------------------------------------------------------------------------
def score_signals(series, ids, week_by_id, ticker_by_id, return_pct_by_id, cost_bps=COST_BPS, top_k=TOP_K,
                  samples=BOOTSTRAP_SAMPLES, seed=SEED, confidence=CONFIDENCE):
    """Signal figures of every run and baseline of a comparison.

    series: {name: [{direction, bin_code, truth_direction, p_up (or None), p_bins (or None)}]} aligned with
    ids. return_pct_by_id: realised weekly return in percent. Returns ({name: signal metrics}, backtest rows
    for backtest.csv, {name: equity curve by strategy}, benchmark summary)."""
    weeks = [week_by_id[i] for i in ids]
    realised = [return_pct_by_id[i] for i in ids]
    kw = dict(samples=samples, seed=seed, confidence=confidence)
    out, csv_rows, curves, benchmark = {}, [], {}, None
    for name, rows in series.items():
        predicted = [r["direction"] for r in rows]
        truth = [r["truth_direction"] for r in rows]
        expected = [expected_return(r["bin_code"], r.get("p_bins")) if r["direction"] else None for r in rows]
        m = direction_metrics(predicted, truth, weeks, **kw)
        m["ic"] = information_coefficient(expected, realised, weeks, **kw)
        m["ic"]["expected_from"] = ("p_bins-weighted bin midpoints" if any(r.get("p_bins") for r in rows)
                                    else "signed bin midpoints")
        if any(r.get("p_up") is not None for r in rows):
            m["probabilities"] = probability_metrics([r.get("p_up") for r in rows],
                                                     [1 if t == "up" else 0 for t in truth], weeks,
                                                     directions=predicted, **kw)
        records = [{"week": week_by_id[i], "ticker": ticker_by_id[i], "direction": d, "expected": e,
                    "ret": return_pct_by_id[i] / 100} for i, d, e in zip(ids, predicted, expected)]
        bt = backtest(records, cost_bps, top_k, **kw)
        m["backtest"] = {s: {k: v for k, v in e.items() if k != "rows"} for s, e in bt["strategies"].items()
                         if s != BENCHMARK}
        benchmark = {k: v for k, v in bt["strategies"][BENCHMARK].items() if k != "rows"}
        curves[name] = {}
        for s, e in bt["strategies"].items():
            if s == BENCHMARK and csv_rows:
                continue                         # the benchmark is the same for every series: once
            for r in e["rows"]:
                csv_rows.append({"series": BENCHMARK if s == BENCHMARK else name, "strategy": s, **r})
            curves[name][s] = np.cumprod([1 + r["net"] for r in e["rows"]]).tolist()
        out[name] = m
    return out, csv_rows, curves, benchmark


def weeks_warning(n_weeks, min_weeks=MIN_WEEKS):
    """The printed warning for short backtests, or None."""
    if n_weeks >= min_weeks:
        return None
    return (f"the backtest has {n_weeks} weeks (< {min_weeks}): Sharpe ratios, drawdowns and their CIs from so "
            "few weeks say little")
