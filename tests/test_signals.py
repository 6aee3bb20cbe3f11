"""signals.py: synthetic forecasters with known answers, the issue's worked backtest, Sharpe and drawdown
against a direct computation, and bootstrap CIs that contain their point estimates."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import signals  # noqa: E402


def synthetic(weeks=8, tickers=6, seed=1):
    """Realised returns for weeks x tickers with both directions in every week."""
    rng = np.random.default_rng(seed)
    rows = []
    for w in range(weeks):
        rets = rng.normal(0, 0.03, tickers)
        rets[0], rets[1] = abs(rets[0]) + 0.001, -abs(rets[1]) - 0.001
        rows += [{"week": f"2024-{w + 1:02d}", "ticker": f"T{t}", "ret": float(r)} for t, r in enumerate(rets)]
    return rows


def test_a_perfect_forecaster_scores_brier_0_auc_1_ic_1_mcc_1():
    rows = synthetic()
    truth = ["up" if r["ret"] >= 0 else "down" for r in rows]
    weeks = [r["week"] for r in rows]
    up = [1 if t == "up" else 0 for t in truth]
    probs = signals.probability_metrics([float(u) for u in up], up, weeks, samples=200)
    assert probs["brier"] == 0 and probs["roc_auc"] == 1 and probs["ece"] == 0
    assert probs["log_loss"] < 1e-12
    ic = signals.information_coefficient([r["ret"] * 100 for r in rows], [r["ret"] for r in rows], weeks, samples=200)
    assert ic["mean"] == pytest.approx(1.0) and ic["weeks"] == 8 and ic["weeks_skipped"] == 0
    assert ic["positive_share"] == 1.0
    d = signals.direction_metrics(truth, truth, weeks, samples=200)
    assert d["mcc"] == 1.0 and d["mcc_parsed"] == 1.0 and d["weeks"] == 8


def test_a_constant_half_has_ece_equal_to_the_distance_from_the_up_share():
    rows = synthetic(seed=3)
    up = [1 if r["ret"] >= 0 else 0 for r in rows]
    probs = signals.probability_metrics([0.5] * len(rows), up, [r["week"] for r in rows], samples=200)
    share = sum(up) / len(up)
    assert probs["ece"] == pytest.approx(abs(0.5 - share), abs=1e-12)
    assert probs["roc_auc"] == 0.5 and probs["brier"] == pytest.approx(0.25)
    assert len(probs["reliability"]) == 1 and probs["reliability"][0]["up_share"] == pytest.approx(share)


def test_unparsed_answers_count_as_wrong_in_mcc_and_drop_out_of_the_parsed_figure():
    truth = ["up", "up", "down", "down", "up", "down"]
    pred = ["up", None, "down", None, "up", "down"]
    mcc_all, mcc_parsed = signals.direction_mcc(pred, truth)
    assert mcc_parsed == 1.0
    # over all n the two blanks are the opposite of the truth: tp 2, fn 1, tn 2, fp 1
    assert mcc_all == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    assert signals.direction_mcc(["up"] * 4, ["up", "down", "up", "down"]) == (0.0, 0.0)   # constant: undefined -> 0


def test_the_issue_worked_backtest_example_to_1e_9():
    recs = [{"week": "w1", "ticker": "A", "direction": "up", "expected": 0.5, "ret": 0.02},
            {"week": "w1", "ticker": "B", "direction": "down", "expected": -0.5, "ret": 0.01},
            {"week": "w2", "ticker": "A", "direction": "up", "expected": 0.5, "ret": -0.01},
            {"week": "w2", "ticker": "B", "direction": "up", "expected": 0.5, "ret": 0.03}]
    bt = signals.backtest(recs, cost_bps=10, samples=200)
    ls, bench = bt["strategies"]["long_short"], bt["strategies"]["benchmark"]
    expect_ls = [(0.005, 1.0, 0.004), (0.010, 1.0, 0.009)]
    expect_bench = [(0.015, 1.0, 0.014), (0.010, 0.0, 0.010)]
    for rows, expect in ((ls["rows"], expect_ls), (bench["rows"], expect_bench)):
        for row, (gross, turnover, net) in zip(rows, expect):
            assert abs(row["gross"] - gross) < 1e-9 and abs(row["turnover"] - turnover) < 1e-9
            assert abs(row["net"] - net) < 1e-9
    assert abs(ls["cumulative"] - 0.013036) < 1e-9
    assert abs(bench["cumulative"] - 0.02414) < 1e-9
    assert abs(ls["vs_benchmark"]["difference"] - ((0.004 - 0.014) + (0.009 - 0.010)) / 2) < 1e-9


def test_strategy_weights_follow_the_definitions():
    week = [{"ticker": t, "direction": d, "expected": e} for t, d, e in
            (("A", "up", 2.5), ("B", "up", 0.5), ("C", "down", -1.5), ("D", None, None), ("E", "down", -4.5))]
    assert signals.strategy_weights(week, "long_short") == {"A": 0.25, "B": 0.25, "C": -0.25, "D": 0.0, "E": -0.25}
    assert signals.strategy_weights(week, "long_only") == {"A": 0.5, "B": 0.5, "C": 0.0, "D": 0.0, "E": 0.0}
    assert signals.strategy_weights(week, "top_bottom_k", top_k=1) == {"A": 0.5, "B": 0.0, "C": 0.0, "D": 0.0,
                                                                        "E": -0.5}
    capped = signals.strategy_weights(week, "top_bottom_k", top_k=5)          # 4 with a forecast: k = 2
    assert capped["A"] == capped["B"] == 0.25 and capped["C"] == capped["E"] == -0.25 and capped["D"] == 0
    assert signals.strategy_weights(week, "benchmark") == {t: 0.2 for t in "ABCDE"}
    assert set(signals.strategy_weights([{"ticker": "A", "direction": "down"}], "long_only").values()) == {0.0}


def test_exits_and_absent_tickers_count_in_turnover():
    recs = [{"week": "w1", "ticker": "A", "direction": "up", "expected": 1, "ret": 0.0},
            {"week": "w2", "ticker": "B", "direction": "up", "expected": 1, "ret": 0.0}]
    rows = signals.backtest(recs, cost_bps=10, samples=100)["strategies"]["long_only"]["rows"]
    assert [r["turnover"] for r in rows] == [1.0, 2.0]            # enter A; exit A and enter B
    assert rows[1]["net"] == pytest.approx(-0.002)


def test_sharpe_and_drawdown_match_a_direct_computation():
    net = np.array([0.01, -0.02, 0.015, -0.03, 0.04, 0.0, -0.01])
    perf = signals.performance(net)
    sd = math.sqrt(sum((x - net.mean()) ** 2 for x in net) / (len(net) - 1))
    assert perf["sharpe"] == pytest.approx(math.sqrt(52) * net.mean() / sd, rel=1e-12)
    assert perf["annual_return"] == pytest.approx(52 * net.mean()) and perf["volatility"] == pytest.approx(math.sqrt(52) * sd)
    equity, peak, worst = 1.0, 1.0, 0.0
    for x in net:
        equity *= 1 + x
        peak = max(peak, equity)
        worst = min(worst, equity / peak - 1)
    assert perf["max_drawdown"] == pytest.approx(worst, abs=1e-12)
    assert signals.max_drawdown([-0.1]) == pytest.approx(-0.1) and signals.max_drawdown([0.1, 0.1]) == 0.0


def test_every_bootstrap_ci_contains_its_point_estimate():
    rows = synthetic(weeks=12, tickers=8, seed=7)
    rng = np.random.default_rng(0)
    weeks = [r["week"] for r in rows]
    up = [1 if r["ret"] >= 0 else 0 for r in rows]
    p_up = np.clip(np.array(up) * 0.3 + rng.uniform(0.2, 0.7, len(rows)), 0, 1).tolist()
    pred = ["up" if p > 0.5 else ("down" if p < 0.45 else None) for p in p_up]
    truth = ["up" if u else "down" for u in up]
    expected = [(p - 0.5) * 10 for p in p_up]
    probs = signals.probability_metrics(p_up, up, weeks)
    for key in ("brier", "log_loss", "ece", "roc_auc"):
        lo, hi = probs[f"{key}_ci"]
        assert lo <= probs[key] <= hi, key
    d = signals.direction_metrics(pred, truth, weeks)
    for key in ("mcc", "mcc_parsed"):
        assert d[f"{key}_ci"][0] <= d[key] <= d[f"{key}_ci"][1], key
    ic = signals.information_coefficient(expected, [r["ret"] for r in rows], weeks)
    assert ic["ci"][0] <= ic["mean"] <= ic["ci"][1]
    recs = [dict(r, direction=p, expected=e) for r, p, e in zip(rows, pred, expected)]
    bt = signals.backtest(recs, cost_bps=10, top_k=2)
    for name, s in bt["strategies"].items():
        assert s["sharpe_ci"][0] <= s["sharpe"] <= s["sharpe_ci"][1], name
        if name != "benchmark":
            vs = s["vs_benchmark"]
            assert vs["ci"][0] <= vs["difference"] <= vs["ci"][1], name


def test_ic_skips_weeks_with_fewer_than_three_tickers_and_reports_t():
    expected = [1, 2, 3, 1, 2, 3, 1, 2]
    realised = [0.1, 0.2, 0.3, 0.3, 0.1, 0.2, 0.5, 0.4]
    weeks = ["a", "a", "a", "b", "b", "b", "c", "c"]
    ic = signals.information_coefficient(expected, realised, weeks, samples=200)
    assert ic["weeks"] == 2 and ic["weeks_skipped"] == 1 and set(ic["per_week"]) == {"a", "b"}
    assert ic["per_week"]["a"] == pytest.approx(1.0) and ic["per_week"]["b"] == pytest.approx(-0.5)
    vals = np.array([1.0, -0.5])
    assert ic["t"] == pytest.approx(vals.mean() / (vals.std(ddof=1) / math.sqrt(2)))
    assert ic["positive_share"] == 0.5


def test_accuracy_against_coverage_abstains_near_one_half():
    curve = signals.accuracy_vs_coverage([0.9, 0.55, 0.45, 0.1], [1, 0, 0, 1], thresholds=(0.0, 0.1, 0.25))
    assert [c["coverage"] for c in curve] == [1.0, 0.5, 0.5]
    assert [c["accuracy"] for c in curve] == [0.5, 0.5, 0.5]
    assert signals.accuracy_vs_coverage([0.5], [0], thresholds=(0.0,), directions=["down"])[0]["accuracy"] == 1.0


def test_expected_return_weights_bins_by_their_probabilities():
    assert signals.expected_return("U2") == 1.5
    assert signals.expected_return("U2", {"U1": 0.25, "D5+": 0.75}) == pytest.approx(0.25 * 0.5 - 0.75 * 5.5)
    assert signals.expected_return(None) is None


# ---------------------------------------------------------------------------------------------
# comparison.py end to end: the signal outputs
# ---------------------------------------------------------------------------------------------
def _answer(label):
    return ("[Positive Developments]:\n1. Sales grew.\n\n[Potential Concerns]:\n1. Costs rose.\n\n"
            f"[Prediction & Analysis]:\nPrediction: {label[0].upper() + label[1:]}\nAnalysis: Demand.")


def test_comparison_writes_the_signal_figures_backtest_and_a_short_sample_warning(tmp_path, capsys):
    import csv
    import json

    import comparison
    from prompt import label_from_return, wrap_public_prompt
    weeks = [f"2024-0{m}-04 to 2024-0{m}-11" for m in (2, 3, 4, 5)]
    returns = {"AAA": [0.004, -0.012, 0.025, 0.034], "BBB": [-0.023, 0.015, -0.006, 0.011],
               "CCC": [0.012, 0.036, -0.031, -0.045]}
    test = [{"prompt": wrap_public_prompt("sys", f"{s} news."), "answer": _answer(label_from_return(r[w])),
             "period": period, "label": label_from_return(r[w]), "symbol": s, "weekly_return": r[w]}
            for w, period in enumerate(weeks) for s, r in returns.items()]
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    runs = []
    for name, predict in (("oracle", lambda r: (r["label"], float(r["weekly_return"] >= 0))),
                          ("contrarian", lambda r: ("down by 0-1%" if r["weekly_return"] >= 0 else "up by 0-1%", 0.4)),
                          ("plain", None)):
        run = tmp_path / name
        run.mkdir()
        lines = []
        for r in test:
            label, p_up = predict(r) if predict else ("up by 1-2%", None)
            row = {"id": f"{r['symbol']}|{r['period']}", "symbol": r["symbol"], "period": r["period"],
                   "label": r["label"], "reference": r["answer"], "output": _answer(label), "latency_s": 0.1,
                   "output_tokens": 9, "hit_max_new_tokens": False}
            if predict:
                row["p_up"] = p_up
            lines.append(json.dumps(row) + "\n")
        (run / "predictions.jsonl").write_text("".join(lines))
        (run / "run.json").write_text(json.dumps({"model": "m", "backend": "hf", "decoding": {"temperature": 0.0},
                                                  "dataset": {"path": str(data), "split": "test"}}))
        runs.append(str(run))
    out = tmp_path / "cmp"
    assert comparison.main([*runs, "--out", str(out), "--bootstrap", "200", "--cost_bps", "20", "--top_k", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Warning: the backtest has 4 weeks (< 26)" in printed and "| oracle | long_short |" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert report["signal_settings"]["cost_bps"] == 20 and report["signal_settings"]["top_k"] == 1
    oracle = report["rows"]["oracle"]["metrics"]["signal"]
    assert oracle["mcc"] == 1.0 and oracle["ic"]["mean"] == pytest.approx(1.0) and oracle["ic"]["weeks"] == 4
    assert oracle["probabilities"]["brier"] == 0 and oracle["probabilities"]["roc_auc"] == 1
    assert report["rows"]["contrarian"]["metrics"]["signal"]["mcc"] == -1.0
    assert "probabilities" not in report["rows"]["plain"]["metrics"]["signal"]      # no p_up: scored as before
    assert report["rows"]["plain"]["metrics"]["binary_accuracy"] is not None
    assert "signal" in report["rows"]["majority"]["metrics"]                         # baselines get MCC / IC too
    ls = oracle["backtest"]["long_short"]
    assert ls["vs_benchmark"]["difference"] > 0 and ls["sharpe_ci"][0] <= ls["sharpe"] <= ls["sharpe_ci"][1]
    with open(out / "backtest.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["strategy"] for r in rows} == {"benchmark", "long_short", "top_bottom_k", "long_only"}
    assert sum(r["strategy"] == "benchmark" for r in rows) == 4                      # once, not per run
    oracle_ls = [r for r in rows if r["series"] == "oracle" and r["strategy"] == "long_short"]
    assert float(oracle_ls[0]["turnover"]) == pytest.approx(1.0)
    assert float(oracle_ls[0]["net"]) == pytest.approx(float(oracle_ls[0]["gross"]) - 20 / 1e4 * 1.0)
    with open(out / "per_sample.csv") as fh:
        per_sample = list(csv.DictReader(fh))
    assert {r["p_up"] for r in per_sample if r["run"] == "oracle"} == {"1.0", "0.0"}
    assert {r["p_up"] for r in per_sample if r["run"] == "plain"} == {""}
    assert (out / "equity.png").stat().st_size > 0 and (out / "reliability.png").stat().st_size > 0
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "mcc" in header and "long_short_sharpe" in header and "ece" in header
    # the report's Signal subsection and findings sentence, from the same comparison
    import report
    rep = tmp_path / "report"
    assert report.main(["--comparison", str(out), "--out", str(rep)]) == 0
    md = (rep / "report.md").read_text()
    assert "### Signal: MCC, information coefficient, calibration and a backtest with costs" in md
    assert "Calibration from n = 12 is not meaningful" in md
    assert "Strategies with a higher mean weekly net return than the equal-weight benchmark after 20 bps costs " \
           "over 4 weeks: `oracle` long_short" in md
    assert "comparison_equity.png" in md and "comparison_reliability.png" in md
    assert "| oracle | run | 1.000 | 1.000 [1.000, 1.000]" in md


def test_top_k_holds_nothing_when_every_forecast_is_the_same():
    week = [{"ticker": t, "direction": "up", "expected": 1.5} for t in "ABCD"]
    assert set(signals.strategy_weights(week, "top_bottom_k", top_k=2).values()) == {0.0}
    week[0]["expected"] = 2.5                                                 # one stands out: k drops to 1
    w = signals.strategy_weights(week, "top_bottom_k", top_k=2)
    assert w["A"] == 0.5 and sum(v < 0 for v in w.values()) == 1
