"""The report's evaluation, built from a comparison (metrics.json and the plots of comparison.py, or
scoring.compare run by report.py): section 4 (direction accuracy against the baselines with week-clustered
CIs, magnitude, ROUGE, latency, long/short, confusion matrices, per-symbol accuracy, example answers,
knowledge cutoff against the test period, and the signal subsection: MCC, IC, calibration, backtest) and
section 6 (findings: fact sentences generated from those numbers, nothing else).
"""
import shutil
import statistics
from pathlib import Path

from comparison_files import ci_text
from report_sections import model_spec, pyplot, read_json
from runs import load_run
from utils import ROUGE_TYPES, SECTIONS, fmt, fmt_p, score_pair

SIGNIFICANCE = 0.05                 # the level the tables and the findings state significance at
MEANINGFUL_CALIBRATION_N = 100      # below this many p_up values, a reliability diagram is mostly noise


# ---------------------------------------------------------------------------------------------
# 4. Evaluation
# ---------------------------------------------------------------------------------------------
def pick_examples(run_dirs):
    """(rule, [(kind, id)], runs): best/worst/typical answers of the first run, chosen by mean ROUGE-L."""
    runs = [load_run(d) for d in run_dirs]
    ids = sorted(set.intersection(*(set(r["rows"]) for r in runs)))
    if not ids:
        return "The run dirs share no example ids: no examples to show.", [], runs
    scored = []
    for i in ids:
        row = runs[0]["rows"][i]
        s = score_pair(row["output"], row["reference"], row["label"])
        rouge_l = [v["rougeL"] for v in s["rouge"].values()]
        scored.append((i, bool(s["correct"]), statistics.fmean(rouge_l) if rouge_l else 0.0))
    right, wrong = [x for x in scored if x[1]] or scored, [x for x in scored if not x[1]] or scored
    best = max(right, key=lambda x: (x[2], x[0]))
    worst = min(wrong, key=lambda x: (x[2], x[0]))
    median = statistics.median(x[2] for x in scored)
    rest = [x for x in scored if x[0] not in (best[0], worst[0])] or scored
    typical = min(rest, key=lambda x: (abs(x[2] - median), x[0]))
    rule = (f"Chosen on the first run (`{runs[0]['name']}`) by the mean ROUGE-L F1 of its answer against the "
            "reference over the reference's sections: best = the highest among answers with the right direction, "
            "worst = the lowest among answers with the wrong direction or none, typical = the one closest to the "
            f"median ({median:.3f}); ties broken by id.")
    return rule, [("best", best), ("worst", worst), ("typical", typical)], runs


def contamination_rows(model_names, test_start):
    rows = []
    for source, name in model_names:
        spec = model_spec(name)
        cutoff = spec.knowledge_cutoff if spec else None
        if not cutoff or not test_start:
            flag = "unknown (cutoff not in the registry)" if not cutoff else "unknown (no test start)"
        else:
            flag = "**yes**: cutoff after the test period starts" if cutoff >= test_start[:7] else "no"
        rows.append([source, name, cutoff or "—", test_start or "—", flag])
    return rows


def evaluation_section(doc, metrics, comparison_dir, runs, train_dirs, dd, build):
    if not doc.section(4, None if metrics else "pass --runs RUN_DIR... (inference.py output) or --comparison DIR"):
        return None
    rows = metrics["rows"]
    truth = metrics.get("truth") or {"from_dataset": True}
    flag = "" if truth.get("from_dataset", True) else " ‡"
    truth_text = ("accuracy is against the realised labels" if not flag else
                  f"‡ **accuracy is against {truth.get('source')}**, not realised labels (the first run was imported "
                  "without a dataset)")
    doc.p(f"Scored on {metrics['n_ids']} examples shared by all runs: {metrics['weeks']} weeks × {metrics['symbols']} "
          f"symbols. Reference texts: {metrics['reference']}; {truth_text}. Binary "
          f"accuracy CIs ({metrics['confidence']:.0%}): week-blocked bootstrap ({metrics['bootstrap_samples']} "
          f"resamples); p: week-clustered sign-flip test against the majority baseline"
          + (f" (with {metrics['weeks']} weeks p cannot go below {2 / 2 ** metrics['weeks']:.3g})." if
             metrics["weeks"] <= 16 else "."))
    imported = metrics.get("imported") or {}
    if imported:
        doc.p("Imported runs (outputs made outside this pipeline, read by `inference.py --backend file`): " + "; ".join(
            f"**{name}** from `{imp['file']}` ({imp['format']}, sha256 {str(imp.get('sha256'))[:12]}…; "
            f"{imp['joined']} of {imp['read']} rows imported, {imp['unjoined']} joined no dataset row, "
            f"{imp['duplicated']} duplicates; model: {imp.get('model') or 'not named'}; truth: {imp['truth']})"
            for name, imp in imported.items()) + ". Their decoding settings and hardware were not recorded.")
    doc.h3("Direction accuracy")
    table = []
    for name, row in rows.items():
        m, vs = row["metrics"], row["metrics"]["vs_majority"]
        lo, hi = m["binary_accuracy_ci"]
        is_majority = name == "majority"
        table.append([name + flag, row["kind"], m["n"], m["parsed"], m["format_failures"],
                      m.get("hit_max_new_tokens", "—") if row["kind"] == "run" else "—",
                      f"{fmt(m['binary_accuracy'])} [{fmt(lo)}, {fmt(hi)}]",
                      "—" if is_majority else f"{vs['difference']:+.3f} [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}]",
                      "—" if is_majority else fmt_p(vs["p_value"]),
                      "—" if is_majority else ("yes" if vs["p_value"] < SIGNIFICANCE else "no")])
    doc.table(["model", "kind", "n", "parsed", "format failures", "cut at max_new_tokens", "binary accuracy [95% CI]",
               "Δ vs majority [95% CI]", "p vs majority", f"significant at {SIGNIFICANCE:.0%}"], table)
    doc.h3("Magnitude, text overlap and inference time")
    table = []
    for name, row in rows.items():
        m = row["metrics"]
        rouge = ["/".join(fmt(m["rouge"][s][t]) for t in ROUGE_TYPES) if "rouge" in m else "—" for s in SECTIONS]
        lat = m.get("latency_s") or {}
        table.append([name + flag, f"{fmt(m['mse'], '.2f')} ({fmt(m['mse_coverage'], '.0%')})", *rouge,
                      f"{fmt(lat.get('mean'))} / {fmt(lat.get('median'))}" if lat else "—",
                      fmt(m.get("tokens_per_s"), ".1f")])
    doc.table(["model", "MSE (coverage)", *[f"ROUGE-1/2/L {s}" for s in SECTIONS],
               "inference s/sample mean / median", "tokens/s"], table)
    for png, caption in (("accuracy.png", "Binary accuracy with week-blocked 95% CIs (from comparison.py)."),
                         ("rouge.png", "ROUGE F1 per answer section (from comparison.py)."),
                         ("rouge_distribution.png", "ROUGE F1 per answer: the distribution over answers per "
                          "section (box = quartiles, line = median; from comparison.py's per_sample.csv)."),
                         ("latency.png", "Inference time per sample (from comparison.py).")):
        if (comparison_dir / png).is_file():
            target = doc.out / f"comparison_{png}"
            shutil.copyfile(comparison_dir / png, target)
            doc.add_png(target, caption)
    doc.h3("Baselines and long/short")
    for name, row in rows.items():
        if row["kind"] == "baseline":
            doc.p(f"Baseline **{name}**: {row.get('note', '')}.")
    long_short = {n: r["metrics"]["long_short"] for n, r in rows.items()}
    doc.table(["model", "mean weekly return %", "cumulative %", "positive weeks"],
              [[n + flag, f"{ls['mean_weekly_pct']:+.3f}", f"{ls['cumulative_pct']:+.3f}",
                f"{ls['positive_weeks']} / {ls['weeks']}"] for n, ls in long_short.items()])
    doc.p("Long/short: equal-weight weekly mean of sign(prediction) × return, using "
          f"{metrics['long_short_returns_from']}.")
    doc.h3("Confusion matrices and per-symbol accuracy")
    run_names = [n for n, r in rows.items() if r["kind"] == "run"]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(run_names), figsize=(5.2 * len(run_names), 4.6), squeeze=False)
    for ax, name in zip(axes[0], run_names):
        conf = rows[name]["metrics"]["confusion"]
        truth = list(conf)
        predicted = list(conf[truth[0]])
        grid = [[conf[t][p] for p in predicted] for t in truth]
        ax.imshow(grid, cmap="Blues")
        for a, line in enumerate(grid):
            for b, v in enumerate(line):
                if v:
                    ax.text(b, a, v, ha="center", va="center", fontsize=7,
                            color="white" if v > max(map(max, grid)) / 2 else "black")
        ax.set_xticks(range(len(predicted)), predicted, rotation=90, fontsize=7)
        ax.set_yticks(range(len(truth)), truth, fontsize=7)
        ax.set_xlabel("predicted bin")
        ax.set_ylabel("realised bin")
        ax.set_title(name, fontsize=9)
    doc.figure(fig, "confusion.png", "Confusion matrices over the 12 bins (U = up, D = down; 'none' = no prediction).")
    symbols = sorted({s for r in rows.values() for s in r["metrics"]["per_symbol_accuracy"]})
    doc.table(["symbol", "n", *[n + flag for n in rows]],
              [[s, next(r["metrics"]["per_symbol_accuracy"][s]["n"] for r in rows.values()
                                                if s in r["metrics"]["per_symbol_accuracy"]),
                                        *[fmt(r["metrics"]["per_symbol_accuracy"].get(s, {}).get("accuracy"))
                                          for r in rows.values()]] for s in symbols])
    run_dirs = [Path(r) for r in runs] or [Path(r["dir"]) for r in rows.values()
                                           if r["kind"] == "run" and (Path(r.get("dir", "")) / "run.json").is_file()]
    test_start, examples_runs = None, []
    doc.h3("Example answers")
    if run_dirs:
        rule, chosen, examples_runs = pick_examples(run_dirs)
        doc.p(rule)
        for kind, (i, _, rouge_l) in chosen:
            row0 = examples_runs[0]["rows"][i]
            doc.p(f"**{kind}**: `{i}`, {'truth ‡' if flag else 'realised'} {row0['label']}; mean ROUGE-L of the "
                  f"first run {rouge_l:.3f}.")
            doc.side_by_side(["reference", *[r["name"] for r in examples_runs]],
                             [row0["reference"], *[r["rows"][i]["output"] for r in examples_runs]])
        test_start = min((p["period"][:10] for p in examples_runs[0]["rows"].values()), default=None)
    else:
        doc.p("Left out: the run dirs named in metrics.json are not on this machine; pass --runs to show answers.")
    if not test_start and dd is not None and "test" in dd:
        test_start = min(p[:10] for p in dd["test"]["period"])
    test_start = test_start or ((build or {}).get("cutoffs") or {}).get("test_start")
    doc.h3("Knowledge cutoff vs test period")
    names = [(f"run {r['name']}", r["manifest"].get("model")) for r in examples_runs]
    names += [(f"training {Path(d).name}", ((read_json(Path(d) / "args.json") or {}).get("args") or {})
               .get("base_model")) for d in train_dirs]
    contamination = contamination_rows([n for n in names if n[1]], test_start)
    doc.table(["used by", "model", "knowledge cutoff", "test period starts", "contamination risk"], contamination)
    doc.p("A model whose knowledge cutoff falls after the test period starts may have read about the test weeks "
          "during pre-training; its scores on them are not out-of-sample.")
    return contamination


# ---------------------------------------------------------------------------------------------
# 4 (cont.). Signal: calibration, MCC, IC and the backtest beside accuracy (signals.py, via metrics.json)
# ---------------------------------------------------------------------------------------------
def signal_section(doc, metrics, comparison_dir):
    """The Signal subsection of the evaluation: nothing when metrics.json predates the signal figures."""
    settings = (metrics or {}).get("signal_settings")
    if not settings:
        return
    rows = metrics["rows"]
    doc.h3("Signal: MCC, information coefficient, calibration and a backtest with costs")
    doc.p(f"{settings['weeks']} weeks. MCC treats an answer without a direction as wrong (as binary accuracy "
          "does); the parsed-only figure is the upstream-comparable one. IC: per week with at least 3 tickers "
          "forecast, the Spearman correlation between the expected return (signed bin midpoint, or the "
          "p_bins-weighted midpoint) and the realised return; t = mean / (sd / √weeks). CIs: week-blocked "
          f"bootstrap ({metrics['bootstrap_samples']} resamples).")
    table = []
    for name, row in rows.items():
        s = row["metrics"].get("signal")
        if not s:
            continue
        ic = s["ic"]
        table.append([name, row["kind"], fmt(row["metrics"]["binary_accuracy"]), f"{fmt(s['mcc'])}{ci_text(s['mcc_ci'])}",
                      f"{fmt(s['mcc_parsed'])}{ci_text(s['mcc_parsed_ci'])}", f"{fmt(ic['mean'])}{ci_text(ic['ci'])}",
                      fmt(ic["t"], ".2f"), f"{ic['weeks']} / {ic['weeks_skipped']}", fmt(ic["positive_share"], ".0%")])
    doc.table(["model", "kind", "binary accuracy", "MCC all n [95% CI]", "MCC parsed [95% CI]", "IC mean [95% CI]",
               "IC t", "IC weeks used / skipped", "weeks with IC > 0"], table)
    probs = {n: r["metrics"]["signal"]["probabilities"] for n, r in rows.items()
             if (r["metrics"].get("signal") or {}).get("probabilities")}
    if probs:
        doc.table(["model (p_up)", "n", "Brier [95% CI]", "log loss", "ECE, 10 bins [95% CI]", "ROC-AUC [95% CI]",
                   "accuracy at coverage (abstain when |p_up − 0.5| < t)"],
                  [[n, p["n"], f"{fmt(p['brier'])}{ci_text(p['brier_ci'])}", fmt(p["log_loss"]),
                    f"{fmt(p['ece'])}{ci_text(p['ece_ci'])}", f"{fmt(p['roc_auc'])}{ci_text(p['roc_auc_ci'])}",
                    "; ".join(f"t={c['threshold']:.2f}: {c['coverage']:.0%} → {fmt(c['accuracy'], '.2f')}"
                              for c in p["accuracy_vs_coverage"])] for n, p in probs.items()])
        small = sorted({p["n"] for p in probs.values() if p["n"] < MEANINGFUL_CALIBRATION_N})
        if small:
            doc.p(f"Calibration from n = {', '.join(map(str, small))} is not meaningful: a reliability diagram and "
                  "ECE need hundreds of forecasts per run before they say more than noise.")
        if (comparison_dir / "reliability.png").is_file():
            target = doc.out / "comparison_reliability.png"
            shutil.copyfile(comparison_dir / "reliability.png", target)
            doc.add_png(target, "Reliability of p_up: mean p_up against the share of up weeks per bin (from "
                                "comparison.py).")
    else:
        doc.p("No run has a p_up value (inference.py's hf backend writes one where an answer's Prediction line has a "
              "direction word), so there are no calibration figures.")
    bench = metrics.get("benchmark") or {}
    table = [["benchmark", "equal weight", fmt(bench.get("annual_return"), "+.3f"), fmt(bench.get("volatility")),
              f"{fmt(bench.get('sharpe'), '.2f')}{ci_text(bench.get('sharpe_ci'), '.2f')}",
              fmt(bench.get("max_drawdown")), fmt(bench.get("cumulative"), "+.4f"), fmt(bench.get("mean_turnover"), ".2f"),
              "—"]]
    for name, row in rows.items():
        for strategy, e in ((row["metrics"].get("signal") or {}).get("backtest") or {}).items():
            vs = e.get("vs_benchmark") or {}
            table.append([name, strategy, fmt(e["annual_return"], "+.3f"), fmt(e["volatility"]),
                          f"{fmt(e['sharpe'], '.2f')}{ci_text(e['sharpe_ci'], '.2f')}", fmt(e["max_drawdown"]),
                          fmt(e["cumulative"], "+.4f"), fmt(e["mean_turnover"], ".2f"),
                          f"{fmt(vs.get('difference'), '+.4f')}{ci_text(vs.get('ci'), '+.4f')}"])
    doc.table(["model", "strategy", "annualised return", "volatility", "Sharpe [95% CI]", "max drawdown",
               "cumulative", "mean turnover", "Δ mean weekly net vs benchmark [95% CI]"], table)
    doc.p(f"Backtest: weekly weights over each week's tickers — long/short by sign (±1/N), top-k/bottom-k by "
          f"expected return (±1/2k, k = {settings['top_k']}), long-only on up forecasts (1/n_up) — against an "
          f"equal-weight benchmark; net = gross − {settings['cost_bps']:g} bps × turnover (entries and exits both "
          f"count); annualised with 52 weeks, risk-free rate 0. Returns: {settings['returns_from']}. Per-week "
          "turnover, gross, cost and net: comparison.py's backtest.csv.")
    if settings.get("warning"):
        doc.p(f"**Warning:** {settings['warning']}.")
    if (comparison_dir / "equity.png").is_file():
        target = doc.out / "comparison_equity.png"
        shutil.copyfile(comparison_dir / "equity.png", target)
        doc.add_png(target, f"Equity curves net of {settings['cost_bps']:g} bps costs (from comparison.py).")


def signal_findings(metrics):
    """Fact sentences: does any run's strategy beat the benchmark after costs, and does that CI exclude zero."""
    settings = (metrics or {}).get("signal_settings")
    if not settings:
        return []
    beats = []
    for name, row in metrics["rows"].items():
        if row["kind"] != "run":
            continue
        for strategy, e in ((row["metrics"].get("signal") or {}).get("backtest") or {}).items():
            vs = e.get("vs_benchmark") or {}
            if vs.get("difference") is not None and vs["difference"] > 0:
                ci = vs.get("ci")
                beats.append(f"`{name}` {strategy} ({vs['difference']:+.4f} per week, 95% CI"
                             f"{ci_text(ci, '+.4f')}, {'excludes' if ci and ci[0] > 0 else 'includes'} zero)")
    costs = f"after {settings['cost_bps']:g} bps costs over {settings['weeks']} weeks"
    if not beats:
        return [f"No run's strategy had a higher mean weekly net return than the equal-weight benchmark {costs}."]
    return [f"Strategies with a higher mean weekly net return than the equal-weight benchmark {costs}: "
            + "; ".join(beats) + "."]


# ---------------------------------------------------------------------------------------------
# 6. Findings: facts only, generated from the numbers above
# ---------------------------------------------------------------------------------------------
def findings_section(doc, metrics, contamination):
    if not doc.section(6, None if metrics else "needs the evaluation (--runs or --comparison)"):
        return
    rows = metrics["rows"]
    runs = [n for n, r in rows.items() if r["kind"] == "run"]
    baselines = [n for n, r in rows.items() if r["kind"] == "baseline"]
    sentences = []

    def listed(names):
        return ", ".join(f"{b} ({fmt(rows[b]['metrics']['binary_accuracy'])})" for b in names)

    for name in runs:
        m = rows[name]["metrics"]
        acc = m["binary_accuracy"] or 0.0
        beat = [b for b in baselines if acc > (rows[b]["metrics"]["binary_accuracy"] or 0.0)]
        lost = [b for b in baselines if acc < (rows[b]["metrics"]["binary_accuracy"] or 0.0)]
        level = [b for b in baselines if b not in beat and b not in lost]
        vs = m["vs_majority"]
        sentences.append(
            f"`{name}` reached binary accuracy {fmt(acc)} on {m['n']} examples"
            + (f"; above {listed(beat)}" if beat else "") + (f"; below {listed(lost)}" if lost else "")
            + (f"; level with {listed(level)}" if level else "")
            + f". Its difference from the majority baseline is {vs['difference']:+.3f} (p = {fmt_p(vs['p_value'])}, "
            f"week-clustered), {'significant' if vs['p_value'] < SIGNIFICANCE else 'not significant'} at the "
            f"{SIGNIFICANCE:.0%} level. It had {m['format_failures']} format failure(s) and "
            f"{m.get('hit_max_new_tokens', 0)} answer(s) cut at max_new_tokens.")
    if len(runs) > 1:
        best = max(runs, key=lambda n: rows[n]["metrics"]["binary_accuracy"] or 0.0)
        sentences.append(f"Highest binary accuracy among the runs: `{best}`.")
    truth = metrics.get("truth") or {}
    if not truth.get("from_dataset", True):
        sentences.append(f"‡ These accuracies are against {truth.get('source')}, not realised labels: pass "
                         "--dataset when importing to score against what the market did.")
    flagged = sorted({r[1] for r in contamination or [] if r[4].startswith("**yes")})
    if flagged:
        sentences.append(f"Knowledge cutoff after the test period starts: {', '.join(flagged)}.")
    sentences += signal_findings(metrics)
    doc.p(" ".join(sentences))
