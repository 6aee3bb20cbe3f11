"""The files of one comparison: metrics.json, metrics.md (the tables comparison.py prints), metrics.csv (one
row per run and baseline), per_sample.csv (one row per run and id), backtest.csv, confusion_<run>.csv
(12 bins) and the plots (accuracy, rouge, rouge_distribution, latency, reliability, equity).

    from scoring import compare
    from comparison_files import write_outputs
    report, details = compare(["runs/base", "runs/lora"])
    md, plots = write_outputs(report, details, "runs/compare")

scoring.py computes the report (everything metrics.json holds) and the per-row details beside it; this
module only formats and writes them. report.py reads the files back.
"""
import csv
import json
from pathlib import Path

import numpy as np

from clustered_stats import EXACT_MAX_WEEKS
from prompt import BIN_CODES
from scoring import PER_SAMPLE_FIELDS
from signals import BENCHMARK, ECE_BINS, STRATEGIES
from utils import ROUGE_TYPES, SECTIONS, fmt, fmt_p

# ---------------------------------------------------------------------------------------------
# metrics.md: the tables comparison.py prints
# ---------------------------------------------------------------------------------------------

def markdown(report):
    head = ["run", "n", "parsed", "format fail", "binary acc [95% CI]", "acc (parsed only)",
            "Δ vs majority [95% CI], p", "agree w/ ref", "MSE (coverage)"]
    head += [f"ROUGE-1/2/L {s}" for s in SECTIONS] + ["latency s mean/median", "long/short %/wk"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    flag = truth_flag(report)
    for name, row in report["rows"].items():
        m = row["metrics"]
        vs = m["vs_majority"]
        delta = "—" if name == "majority" else (f"{vs['difference']:+.3f} [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}], "
                                                 f"p={fmt_p(vs['p_value'])}")
        rouge = [("/".join(fmt(m["rouge"][s][t], ".2f") for t in ROUGE_TYPES) if "rouge" in m else "—")
                 for s in SECTIONS]
        lat = m.get("latency_s")
        cells = [(name if row["kind"] == "run" else f"*{name} (baseline)*") + flag, str(m["n"]), str(m["parsed"]),
                 str(m["format_failures"]),
                 f"{fmt(m['binary_accuracy'])} [{fmt(m['binary_accuracy_ci'][0])}, {fmt(m['binary_accuracy_ci'][1])}]",
                 fmt(m["binary_accuracy_parsed"]), delta, fmt(m["reference_agreement"]),
                 f"{fmt(m['mse'], '.2f')} ({fmt(m['mse_coverage'], '.0%')})", *rouge,
                 f"{fmt(lat['mean'], '.2f')}/{fmt(lat['median'], '.2f')}" if lat else "—",
                 fmt(m["long_short"]["mean_weekly_pct"], "+.2f")]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Scored on {report['n_ids']} ids shared by all runs: {report['weeks']} weeks × "
             f"{report['symbols']} symbols. CIs: week-blocked bootstrap ({report['bootstrap_samples']} resamples, "
             f"seed {report['seed']}); p: week-clustered sign-flip test against the majority baseline "
             f"({report['weeks']} weeks, so p cannot go below {2 / 2 ** report['weeks']:.3g})."
             if report["weeks"] <= EXACT_MAX_WEEKS else
             f"Scored on {report['n_ids']} ids shared by all runs: {report['weeks']} weeks × {report['symbols']} "
             f"symbols. CIs: week-blocked bootstrap; p: week-clustered sign-flip test against the majority baseline.",
             f"Reference texts: {report['reference']}; {truth_sentence(report)} {report['dataset']}."]
    for name, imp in (report.get("imported") or {}).items():
        notes.append(f"Imported run {name}: {imp['file']} ({imp['format']}; {imp['joined']} of {imp['read']} rows "
                     f"imported, {imp['unjoined']} unjoined, {imp['duplicated']} duplicates; truth: {imp['truth']}; "
                     "decoding settings not recorded).")
    think = {n: r["metrics"]["think"] for n, r in report["rows"].items() if (r["metrics"].get("think") or {}).get("n")}
    if think:
        notes.append("Answers with a <think> block: " + ", ".join(
            f"{n} {t['share']:.0%} (mean {t['mean_chars']:.0f} chars)" for n, t in think.items()) + ".")
    left = {k: v for k, v in report["left_out"].items() if v}
    notes.append("Left out (ids not in every run): " + (", ".join(f"{k}: {v}" for k, v in left.items()) or "none") + ".")
    if report["torn_lines_skipped"]:
        notes.append("Torn lines skipped: " + ", ".join(f"{k}: {v}" for k, v in report["torn_lines_skipped"].items()))
    if report["decoding_differences"]:
        notes.append("**Decoding settings differ** from the first run: " + "; ".join(
            f"{k} ({v})" for k, v in report["decoding_differences"].items()) + ".")
    if len({v for v in report["dataset_fingerprints"].values()}) > 1:
        notes.append("**Dataset fingerprints differ** between runs: " + ", ".join(
            f"{k}: {v}" for k, v in report["dataset_fingerprints"].items()) + ".")
    truncated = {n: r["metrics"]["hit_max_new_tokens"] for n, r in report["rows"].items()
                 if r["kind"] == "run" and r["metrics"]["hit_max_new_tokens"]}
    if truncated:
        notes.append("Outputs cut at max_new_tokens: " + ", ".join(f"{k}: {v}" for k, v in truncated.items()) + ".")
    for name, row in report["rows"].items():
        if row["kind"] == "baseline":
            notes.append(f"Baseline {name}: {row['note']}.")
    notes.append(f"Long/short: equal-weight weekly mean of sign(prediction) × return, using "
                 f"{report['long_short_returns_from']}.")
    symbols = sorted({s for r in report["rows"].values() for s in r["metrics"]["per_symbol_accuracy"]})
    names = list(report["rows"])
    sym = ["", "Per-symbol binary accuracy" + flag + " / mean ROUGE-L over the reference's sections (runs):", "",
           "| symbol | " + " | ".join(n + flag for n in names) + " |", "|" + "---|" * (len(names) + 1)]
    for s in symbols:
        sym.append(f"| {s} | " + " | ".join(_per_symbol_cell(report["rows"][n]["metrics"], s) for n in names) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes] + sym) + "\n"


def truth_flag(report):
    """' ‡' on every row of a table whose truth is not the dataset's realised labels, else ''."""
    return "" if (report.get("truth") or {}).get("from_dataset", True) else " ‡"


def truth_sentence(report):
    truth = report.get("truth") or {}
    if truth.get("from_dataset", True):
        return "accuracy is against the realised labels."
    return (f"‡ **accuracy is against {truth.get('source')}**, not realised labels: the first run was imported "
            "without --dataset, so 'correct' means agreeing with the reference answer's prediction.")


def _per_symbol_cell(m, symbol):
    acc = fmt(m["per_symbol_accuracy"].get(symbol, {}).get("accuracy"), ".2f")
    rouge = (m.get("per_symbol_rouge") or {}).get(symbol)
    if not rouge:
        return acc
    values = [v["rougeL"] for v in rouge.values() if v.get("rougeL") is not None]
    return f"{acc} / {fmt(float(np.mean(values)) if values else None, '.2f')}"


def ci_text(ci, spec=".3f"):
    """' [low, high]' after a figure, formatted with spec; '' without a CI.

    >>> ci_text([0.1, 0.25]), ci_text(None, ".2f")
    (' [0.100, 0.250]', '')
    """
    return "" if not ci else f" [{format(ci[0], spec)}, {format(ci[1], spec)}]"


def signal_markdown(report):
    """metrics.md's Signal tables: MCC and IC for every row; calibration for rows with p_up; the backtest."""
    sig = report.get("signal_settings")
    if not sig:
        return ""
    rows = report["rows"]
    out = ["", f"Signal ({sig['weeks']} weeks; CIs: week-blocked bootstrap, 95%):", "",
           "| run | MCC (all n) | MCC (parsed) | IC mean [CI] | IC t | IC weeks (skipped) | IC > 0 share |",
           "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        s = row["metrics"].get("signal")
        if not s:
            continue
        ic = s["ic"]
        out.append(f"| {name} | {fmt(s['mcc'])}{ci_text(s['mcc_ci'])} | {fmt(s['mcc_parsed'])}{ci_text(s['mcc_parsed_ci'])} | "
                   f"{fmt(ic['mean'])}{ci_text(ic['ci'])} | {fmt(ic['t'], '.2f')} | {ic['weeks']} ({ic['weeks_skipped']}) | "
                   f"{fmt(ic['positive_share'], '.0%')} |")
    probs = {n: r["metrics"]["signal"]["probabilities"] for n, r in rows.items()
             if (r["metrics"].get("signal") or {}).get("probabilities")}
    if probs:
        out += ["", "| run (p_up) | n | Brier | log loss | ECE (10 bins) | ROC-AUC | accuracy at coverage |",
                "|---|---|---|---|---|---|---|"]
        for name, p in probs.items():
            cov = ", ".join(f"{c['coverage']:.0%}: {fmt(c['accuracy'], '.2f')}" for c in p["accuracy_vs_coverage"]
                            if c["coverage"] is not None)
            out.append(f"| {name} | {p['n']} | {fmt(p['brier'])}{ci_text(p['brier_ci'])} | {fmt(p['log_loss'])}"
                       f"{ci_text(p['log_loss_ci'])} | {fmt(p['ece'])}{ci_text(p['ece_ci'])} | {fmt(p['roc_auc'])}"
                       f"{ci_text(p['roc_auc_ci'])} | {cov} |")
    else:
        out += ["", "No run has a p_up value (inference.py's hf backend writes one where an answer's Prediction line "
                "has a direction word): no calibration figures."]
    out += ["", f"Backtest (cost {sig['cost_bps']:g} bps per unit of turnover; top-k k = {sig['top_k']}; returns: "
            f"{sig['returns_from']}):", "",
            "| run | strategy | ann. return | vol | Sharpe [CI] | max drawdown | cumulative | mean turnover | "
            "Δ mean weekly net vs benchmark [CI] |", "|---|---|---|---|---|---|---|---|---|"]
    bench = report.get("benchmark") or {}
    out.append(f"| *benchmark* | equal weight | {fmt(bench.get('annual_return'), '+.1%')} | "
               f"{fmt(bench.get('volatility'), '.1%')} | {fmt(bench.get('sharpe'), '.2f')}"
               f"{ci_text(bench.get('sharpe_ci'), '.2f')} | {fmt(bench.get('max_drawdown'), '.1%')} | "
               f"{fmt(bench.get('cumulative'), '+.2%')} | {fmt(bench.get('mean_turnover'), '.2f')} | — |")
    for name, row in rows.items():
        for strategy, e in ((row["metrics"].get("signal") or {}).get("backtest") or {}).items():
            vs = e.get("vs_benchmark") or {}
            out.append(f"| {name} | {strategy} | {fmt(e['annual_return'], '+.1%')} | {fmt(e['volatility'], '.1%')} | "
                       f"{fmt(e['sharpe'], '.2f')}{ci_text(e['sharpe_ci'], '.2f')} | {fmt(e['max_drawdown'], '.1%')} | "
                       f"{fmt(e['cumulative'], '+.2%')} | {fmt(e['mean_turnover'], '.2f')} | "
                       f"{fmt(vs.get('difference'), '+.4f')}{ci_text(vs.get('ci'), '+.4f')} |")
    if sig.get("warning"):
        out += ["", f"- **Warning:** {sig['warning']}."]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# metrics.csv and backtest.csv
# ---------------------------------------------------------------------------------------------

SIGNAL_CSV_FIELDS = ["mcc", "mcc_ci_low", "mcc_ci_high", "mcc_parsed", "ic_mean", "ic_ci_low", "ic_ci_high", "ic_t",
                     "ic_weeks", "ic_weeks_skipped", "brier", "log_loss", "ece", "roc_auc",
                     *[f"{s}_{k}" for s in STRATEGIES for k in ("sharpe", "annual_return", "max_drawdown",
                                                                 "diff_vs_benchmark")]]


def signal_csv(m):
    """metrics.csv cells of one row's signal metrics."""
    s = m.get("signal") or {}
    if not s:
        return {}
    ic, p = s["ic"], s.get("probabilities") or {}
    out = {"mcc": s["mcc"], "mcc_ci_low": (s["mcc_ci"] or [None])[0], "mcc_ci_high": (s["mcc_ci"] or [None, None])[1],
           "mcc_parsed": s["mcc_parsed"], "ic_mean": ic["mean"], "ic_ci_low": (ic["ci"] or [None])[0],
           "ic_ci_high": (ic["ci"] or [None, None])[1], "ic_t": ic["t"], "ic_weeks": ic["weeks"],
           "ic_weeks_skipped": ic["weeks_skipped"], **{k: p.get(k) for k in ("brier", "log_loss", "ece", "roc_auc")}}
    for strategy, e in s["backtest"].items():
        out.update({f"{strategy}_sharpe": e["sharpe"], f"{strategy}_annual_return": e["annual_return"],
                    f"{strategy}_max_drawdown": e["max_drawdown"],
                    f"{strategy}_diff_vs_benchmark": (e.get("vs_benchmark") or {}).get("difference")})
    return out


CSV_FIELDS = (["name", "kind", "n", "parsed", "format_failures", "binary_accuracy", "ci_low", "ci_high",
               "binary_accuracy_parsed", "diff_vs_majority", "diff_ci_low", "diff_ci_high", "p_vs_majority",
               "reference_agreement", "mse", "mse_coverage"]
              + [f"rouge_{s}_{t}" for s in SECTIONS for t in ROUGE_TYPES]
              + ["latency_mean_s", "latency_median_s", "tokens_per_s", "hit_max_new_tokens",
                 "longshort_mean_weekly_pct", "longshort_cumulative_pct"]
              + SIGNAL_CSV_FIELDS)


def csv_rows(report):
    for name, row in report["rows"].items():
        m = row["metrics"]
        out = {"name": name, "kind": row["kind"], **{k: m.get(k) for k in ("n", "parsed", "format_failures",
               "binary_accuracy", "binary_accuracy_parsed", "reference_agreement", "mse", "mse_coverage",
               "tokens_per_s", "hit_max_new_tokens")}}
        out["ci_low"], out["ci_high"] = m["binary_accuracy_ci"]
        out["diff_vs_majority"] = m["vs_majority"]["difference"]
        out["diff_ci_low"], out["diff_ci_high"] = m["vs_majority"]["ci"]
        out["p_vs_majority"] = m["vs_majority"]["p_value"]
        for s in SECTIONS:
            for t in ROUGE_TYPES:
                out[f"rouge_{s}_{t}"] = m["rouge"][s][t] if "rouge" in m else None
        lat = m.get("latency_s") or {}
        out["latency_mean_s"], out["latency_median_s"] = lat.get("mean"), lat.get("median")
        out["longshort_mean_weekly_pct"] = m["long_short"]["mean_weekly_pct"]
        out["longshort_cumulative_pct"] = m["long_short"]["cumulative_pct"]
        out.update(signal_csv(m))
        yield out


BACKTEST_CSV_FIELDS = ["series", "strategy", "week", "positions", "turnover", "gross", "cost", "net"]


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

def plot(report, latencies, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    names = list(report["rows"])
    rows = [report["rows"][n]["metrics"] for n in names]
    acc = np.array([m["binary_accuracy"] or 0 for m in rows])
    err = np.array([[a - m["binary_accuracy_ci"][0], m["binary_accuracy_ci"][1] - a] for a, m in zip(acc, rows)]).T
    colors = ["tab:blue" if report["rows"][n]["kind"] == "run" else "tab:gray" for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names, acc, xerr=err, color=colors, capsize=4)
    ax.axvline(report["rows"]["majority"]["metrics"]["binary_accuracy"], ls="--", color="k", lw=1, label="majority")
    ax.invert_yaxis()
    ax.set_xlabel(f"binary accuracy (95% CI, week-blocked bootstrap, {report['weeks']} weeks)")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    written.append("accuracy.png")
    plt.close(fig)
    runs = [n for n in names if report["rows"][n]["kind"] == "run"]
    fig, axes = plt.subplots(1, len(SECTIONS), figsize=(4 * len(SECTIONS), 3.5), sharey=True)
    width = 0.8 / max(1, len(runs))
    for ax, s in zip(axes, SECTIONS):
        for j, n in enumerate(runs):
            vals = [report["rows"][n]["metrics"]["rouge"][s][t] or 0 for t in ROUGE_TYPES]
            ax.bar(np.arange(len(ROUGE_TYPES)) + j * width, vals, width, label=n)
        ax.set_xticks(np.arange(len(ROUGE_TYPES)) + width * (len(runs) - 1) / 2, ROUGE_TYPES)
        ax.set_title(s)
    axes[0].set_ylabel("F1 vs reference")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rouge.png", dpi=120)
    written.append("rouge.png")
    plt.close(fig)
    with_lat = [n for n in runs if latencies.get(n)]
    if with_lat:
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(with_lat) + 1.5))
        ax.boxplot([latencies[n] for n in with_lat], vert=False, tick_labels=with_lat)
        ax.set_xlabel("latency per example, s (batch wall time ÷ batch size)")
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=120)
        written.append("latency.png")
        plt.close(fig)
    return written


def plot_rouge_distribution(per_sample, out):
    """rouge_distribution.png: per answer section, a box per run and ROUGE type of the per-answer F1
    (answers whose reference has the section). Returns the file names written."""
    runs = list(dict.fromkeys(r["run"] for r in per_sample))
    if not runs:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(SECTIONS), figsize=(4 * len(SECTIONS), 3.8), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / len(runs)
    for ax, s in zip(axes, SECTIONS):
        for j, name in enumerate(runs):
            data = [[r[f"rouge_{s}_{t}"] for r in per_sample if r["run"] == name and r[f"rouge_{s}_{t}"] is not None]
                    for t in ROUGE_TYPES]
            positions = np.arange(len(ROUGE_TYPES)) + (j - (len(runs) - 1) / 2) * width
            keep = [k for k, d in enumerate(data) if d]
            if keep:
                box = ax.boxplot([data[k] for k in keep], positions=positions[keep], widths=width * 0.85,
                                 patch_artist=True, manage_ticks=False,
                                 medianprops={"color": "black"})
                for patch in box["boxes"]:
                    patch.set_facecolor(colors[j % len(colors)])
        ax.set_xticks(np.arange(len(ROUGE_TYPES)), ROUGE_TYPES)
        ax.set_title(s)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("F1 per answer vs reference")
    axes[-1].legend([plt.Rectangle((0, 0), 1, 1, color=colors[j % len(colors)]) for j in range(len(runs))], runs,
                    fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(out) / "rouge_distribution.png", dpi=120)
    plt.close(fig)
    return ["rouge_distribution.png"]


def plot_signals(report, curves, out):
    """reliability.png (runs with p_up) and equity.png (cumulative net of each run's strategies and the
    benchmark). Returns the file names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out, written = Path(out), []
    sig = report.get("signal_settings") or {}
    probs = {n: r["metrics"]["signal"]["probabilities"] for n, r in report["rows"].items()
             if (r["metrics"].get("signal") or {}).get("probabilities")}
    if probs:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], ls="--", color="k", lw=1, label="perfectly calibrated")
        for name, p in probs.items():
            rel = p["reliability"]
            ax.plot([r["mean_p"] for r in rel], [r["up_share"] for r in rel], marker="o",
                    label=f"{name} (n={p['n']}, ECE {p['ece']:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"p_up (mean in each of {ECE_BINS} equal-width bins)")
        ax.set_ylabel("share of weeks that went up")
        ax.set_title(f"Reliability ({next(iter(probs.values()))['weeks']} weeks)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        fig.savefig(out / "reliability.png", dpi=120)
        plt.close(fig)
        written.append("reliability.png")
    runs = [n for n, r in report["rows"].items() if r["kind"] == "run" and n in curves]
    if runs and sig.get("weeks"):
        fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False, sharey=True)
        for ax, name in zip(axes[0], runs):
            for strategy, curve in curves[name].items():
                ax.plot(range(len(curve) + 1), [1.0, *curve], label=strategy,
                        **({"color": "k", "ls": "--"} if strategy == BENCHMARK else {}))
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("week")
        bench = curves[runs[0]].get(BENCHMARK)
        for ax, name in zip(axes[0][1:], runs[1:]):
            if bench and BENCHMARK not in curves[name]:
                ax.plot(range(len(bench) + 1), [1.0, *bench], color="k", ls="--", label=BENCHMARK)
        axes[0][0].set_ylabel(f"equity, net of {sig['cost_bps']:g} bps costs")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "equity.png", dpi=120)
        plt.close(fig)
        written.append("equity.png")
    return written


# ---------------------------------------------------------------------------------------------
# Writing it all
# ---------------------------------------------------------------------------------------------

def write_outputs(report, details, out):
    """Every file of one comparison into the folder `out`, from compare()'s (report, details). Returns
    (metrics.md text, [plot file names])."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    with open(out / "per_sample.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, PER_SAMPLE_FIELDS)
        writer.writeheader()
        writer.writerows(details.per_sample)
    md = markdown(report) + signal_markdown(report)
    (out / "metrics.md").write_text(md)
    with open(out / "backtest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, BACKTEST_CSV_FIELDS)
        writer.writeheader()
        writer.writerows(details.backtest)
    with open(out / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(report))
    for name, row in report["rows"].items():
        if row["kind"] != "run":
            continue
        with open(out / f"confusion_{name}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["truth \\ predicted", *BIN_CODES, "none"])
            for t, counts in row["metrics"]["confusion"].items():
                writer.writerow([t, *counts.values()])
    plots = plot(report, details.latencies, out)
    plots += plot_rouge_distribution(details.per_sample, out)
    plots += plot_signals(report, details.equity, out)
    return md, plots
