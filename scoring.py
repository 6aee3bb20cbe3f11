"""The comparison core: run dirs -> one metrics report (per-run metrics, baselines, week-clustered
uncertainty, signal quality) and, beside it, the per-row details its CSVs and plots need.

comparison.py (the CLI) and report.py (its evaluation section) both use it; comparison_files.py writes
the files:

    from scoring import compare
    from comparison_files import write_outputs
    report, details = compare(["runs/base", "runs/lora"])   # ComparisonError / RunError: cannot be compared
    md, plots = write_outputs(report, details, "runs/compare")

`report` is exactly what metrics.json holds; `details` (latencies, per-sample rows, backtest rows, equity
curves) is what only the CSVs and plots need. Uncertainty is clustered by week (clustered_stats.py).
"""
import re
from collections import Counter, defaultdict
from typing import NamedTuple

import numpy as np

import signals
from clustered_stats import BOOTSTRAP_SAMPLES, CONFIDENCE, SEED, week_blocked_bootstrap, week_sign_flip_test
from dataset_io import load_forecast_dataset
from errors import ForecasterError
from prompt import BIN_CODES, bin_midpoint, bin_return, label_to_code
from runs import load_run
from utils import ROUGE_TYPES, SECTIONS, score_pair, summarize_pairs

# ---------------------------------------------------------------------------------------------
# Defaults (the bootstrap's, which comparison.py's flags mirror, live in clustered_stats.py)
# ---------------------------------------------------------------------------------------------
BASELINE_NAMES = ("majority", "always-up", "momentum")

PRICE_SENTENCE_RE = re.compile(
    r"From (\d{4}-\d{2}-\d{2}) to (\d{4}-\d{2}-\d{2}), .{1,200}?'s stock price "
    r"(?:(increased|decreased) from ([\d,]+(?:\.\d+)?) to ([\d,]+(?:\.\d+)?)|(was unchanged) at)")


REALISED_LABELS = "realised labels"
THINK_BLOCK_RE = re.compile(r"<think>(.*?)</think>", re.S | re.I)


class ComparisonError(ForecasterError, ValueError):
    """Runs that cannot be compared (same names, nothing shared, unknown labels): one Error line. A folder
    that is not a run dir is runs.RunError."""


class ComparisonDetails(NamedTuple):
    """What compare() returns beside the report: the per-row data only the CSVs and plots need."""
    latencies: dict      # {run name: [seconds per example]}: latency.png
    per_sample: list     # per_sample.csv rows (PER_SAMPLE_FIELDS)
    backtest: list       # backtest.csv rows
    equity: dict         # {series: {strategy: equity curve}}: equity.png


# ---------------------------------------------------------------------------------------------
# Reading run dirs (runs.load_run reads them)
# ---------------------------------------------------------------------------------------------
def decoding_differences(runs):
    """{run name: 'key a vs b, ...'} for runs whose decoding settings differ from the first run's."""
    runs = [r for r in runs if not is_imported(r)]      # imported outputs record no decoding settings
    if not runs:
        return {}
    base = runs[0]["manifest"].get("decoding", {})
    out = {}
    for run in runs[1:]:
        dec = run["manifest"].get("decoding", {})
        diffs = [f"{k} {dec.get(k)} vs {base.get(k)}" for k in sorted(set(base) | set(dec)) if dec.get(k) != base.get(k)]
        if diffs:
            out[run["name"]] = ", ".join(diffs)
    return out


def is_imported(run):
    """A run dir written by `inference.py --backend file` (outputs made elsewhere)."""
    return run["manifest"].get("backend") == "file"


def truth_of(run):
    """{source, from_dataset} of the labels a run's predictions.jsonl carries."""
    return run["manifest"].get("truth") or {"source": REALISED_LABELS, "from_dataset": True}


def import_summary(run):
    """What an imported run was made from (run.json's source, rows and truth), for the tables."""
    m = run["manifest"]
    rows = m.get("rows") or {}
    return {"file": (m.get("source") or {}).get("file"), "format": (m.get("source") or {}).get("format"),
            "sha256": (m.get("source") or {}).get("sha256"), "model": m.get("model"),
            "prompt_style": m.get("prompt_style"), "truth": truth_of(run)["source"],
            **{k: rows.get(k) for k in ("read", "joined", "unjoined", "duplicated", "no_truth")}}


def think_length(text):
    """Characters inside an answer's <think> block (0 for an empty block), or None without one. A bare
    '</think>' counts too: its opening tag was prefilled in the prompt.

    >>> think_length("<think>\\nhmm</think>\\nanswer"), think_length("x</think> y"), think_length("no block")
    (3, 1, None)
    >>> think_length("<think>still thinking")
    14
    """
    m = THINK_BLOCK_RE.search(text or "")
    if m:
        return len(m.group(1).strip())
    lower = (text or "").lower()
    if "</think>" in lower:
        return len(text[:lower.index("</think>")].strip())
    if "<think>" in lower:               # cut off while still thinking
        return len(text[lower.index("<think>") + len("<think>"):].strip())
    return None


def distribution(values):
    """{n, mean, std, median, q1, q3} of a list of numbers (None when empty)."""
    if not values:
        return {"n": 0, "mean": None, "std": None, "median": None, "q1": None, "q3": None}
    a = np.asarray(values, dtype=float)
    q1, median, q3 = np.quantile(a, [0.25, 0.5, 0.75])
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "median": float(median), "q1": float(q1), "q3": float(q3)}


def text_scores(pairs, outputs, ids, symbol_by_id):
    """ROUGE distributions per section, per-symbol mean ROUGE and the <think> share, for metrics.json."""
    rouge_distribution = {s: {t: distribution([p["rouge"][s][t] for p in pairs if s in p.get("rouge", {})])
                              for t in ROUGE_TYPES} for s in SECTIONS}
    by_symbol = defaultdict(list)
    for p, i in zip(pairs, ids):
        by_symbol[symbol_by_id[i]].append(p)
    per_symbol_rouge = {sym: {s: {t: distribution([p["rouge"][s][t] for p in ps if s in p.get("rouge", {})])["mean"]
                                  for t in ROUGE_TYPES} for s in SECTIONS} for sym, ps in sorted(by_symbol.items())}
    lengths = [think_length(o) for o in outputs]
    with_think = [n for n in lengths if n is not None]
    think = {"share": len(with_think) / len(lengths) if lengths else None,
             "mean_chars": float(np.mean(with_think)) if with_think else None, "n": len(with_think)}
    return {"rouge_distribution": rouge_distribution, "per_symbol_rouge": per_symbol_rouge, "think": think}


def load_dataset_side(path, split):
    """(rows by id of the scored split, train labels or None, note). Never raises: baselines that need
    the dataset are skipped with a note when it cannot be loaded."""
    if not path:
        return {}, None, "no dataset path in run.json"
    try:
        dd = load_forecast_dataset(path)
    except Exception as exc:  # noqa: BLE001 - any loader failure only drops the dataset-based baselines
        return {}, None, f"dataset {path} not loadable ({type(exc).__name__}: {exc})"
    rows = {}
    if split in dd:
        cols = [c for c in ("id", "prompt", "weekly_return") if c in dd[split].column_names]
        rows = {r["id"]: r for r in dd[split].select_columns(cols).to_list()}
    train = list(dd["train"]["label"]) if "train" in dd and split != "train" else None
    return rows, train, f"dataset {path} [{split}]"


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------
def last_week_move(prompt_text):
    """Bin code of the most recent past week's price move stated in a prompt, or None.

    >>> last_week_move("From 2024-01-07 to 2024-01-14, Apple Inc's stock price increased from 100.00 to 103.50. "
    ...                "From 2024-01-14 to 2024-01-21, Apple Inc's stock price decreased from 103.50 to 102.00.")
    'D2'
    """
    best = None
    for m in PRICE_SENTENCE_RE.finditer(prompt_text or ""):
        if best is None or m.group(2) >= best.group(2):
            best = m
    if best is None:
        return None
    if best.group(6):
        return "U1"
    p0, p1 = (float(best.group(i).replace(",", "")) for i in (4, 5))
    return bin_return(p1 / p0 - 1) if p0 else None


def majority_code(labels):
    """Most common direction among labels, as that direction's most common bin code."""
    codes = [label_to_code(lbl) for lbl in labels]
    ups = sum(c[0] == "U" for c in codes)
    direction = "U" if ups >= len(codes) - ups else "D"
    return Counter(c for c in codes if c[0] == direction).most_common(1)[0][0]


def baseline_predictions(ids, label_by_id, dataset_rows, train_labels):
    """{baseline name: ({id: bin code or None}, note)}."""
    out = {}
    if train_labels:
        code = majority_code(train_labels)
        share = sum(label_to_code(lbl)[0] == code[0] for lbl in train_labels) / len(train_labels)
        note = f"'{'up' if code[0] == 'U' else 'down'}' = the train split's majority ({share:.1%} of {len(train_labels)})"
    else:
        code = majority_code([label_by_id[i] for i in ids])
        note = "majority of the SCORED labels (no train split found): optimistic, in-sample"
    out["majority"] = ({i: code for i in ids}, note)
    ups = [lbl for lbl in (train_labels or []) if label_to_code(lbl)[0] == "U"]
    up_code = majority_code(ups) if ups else "U1"
    out["always-up"] = ({i: up_code for i in ids}, f"always '{up_code}'")
    if dataset_rows:
        moves = {i: last_week_move(dataset_rows.get(i, {}).get("prompt")) for i in ids}
        missing = sum(v is None for v in moves.values())
        out["momentum"] = (moves, "last past week's move in the prompt, repeated"
                           + (f" ({missing} prompts without a price sentence count as wrong)" if missing else ""))
    return out


def baseline_pairs(codes, ids, label_by_id):
    """score_pair-shaped records for a baseline's bin codes (no text, so no ROUGE)."""
    pairs = []
    for i in ids:
        code, truth = codes.get(i), label_to_code(label_by_id[i])
        direction = None if code is None else ("up" if code[0] == "U" else "down")
        pairs.append({"direction": direction, "bin_code": code,
                      "magnitude": None if code is None else bin_midpoint(code),
                      "truth_direction": "up" if truth[0] == "U" else "down", "truth_magnitude": bin_midpoint(truth),
                      "reference_direction": None, "correct": direction == ("up" if truth[0] == "U" else "down"),
                      "agrees_with_reference": None, "format_ok": code is not None, "problems": []})
    return pairs


# ---------------------------------------------------------------------------------------------
# Per-run tables: long/short returns and the confusion matrix
# ---------------------------------------------------------------------------------------------
def long_short(pairs, ids, period_by_id, return_by_id):
    """Equal-weight weekly long/short of the signals: +1 predicted up, -1 down, 0 no direction, times the
    realised return (percent); averaged over the week's stocks."""
    by_week = defaultdict(list)
    for p, i in zip(pairs, ids):
        pos = {"up": 1, "down": -1}.get(p["direction"], 0)
        by_week[period_by_id[i]].append(pos * return_by_id[i])
    weekly = np.array([np.mean(by_week[w]) for w in sorted(by_week)])
    return {"weeks": len(weekly), "mean_weekly_pct": float(weekly.mean()),
            "cumulative_pct": float((np.prod(1 + weekly / 100) - 1) * 100),
            "positive_weeks": int((weekly > 0).sum())}


def confusion(pairs, ids, label_by_id):
    """{truth bin: {predicted bin or 'none': count}} over the 12 bins."""
    table = {t: {c: 0 for c in (*BIN_CODES, "none")} for t in BIN_CODES}
    for p, i in zip(pairs, ids):
        table[label_to_code(label_by_id[i])][p["bin_code"] or "none"] += 1
    return table


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------
def _valid_label(label):
    try:
        label_to_code(label or "")
        return True
    except ValueError:
        return False


def compare(run_dirs, reference=None, dataset=None, split=None, samples=BOOTSTRAP_SAMPLES, seed=SEED,
            cost_bps=signals.COST_BPS, top_k=signals.TOP_K):
    """(report, details): the report is everything metrics.json holds; details (ComparisonDetails) holds the
    latencies, per-sample rows, backtest rows and equity curves beside it, for the CSVs and plots.
    Raises runs.RunError for a folder that is not a run dir, ComparisonError for runs that cannot be
    compared."""
    runs = [load_run(d) for d in run_dirs]
    names = [r["name"] for r in runs]
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise ComparisonError(f"two run dirs share the name {', '.join(dupes)}; run names are folder names")
    ref_run = load_run(reference) if reference else None
    id_sets = [set(r["rows"]) for r in runs] + ([set(ref_run["rows"])] if ref_run else [])
    ids = sorted(set.intersection(*id_sets))
    if not ids:
        raise ComparisonError("the runs share no example ids; were they made on the same dataset split?")
    left_out = {r["name"]: len(r["rows"]) - len(ids) for r in runs}
    first = runs[0]["manifest"].get("dataset", {})
    split = split or first.get("split") or "test"
    dataset_rows, train_labels, dataset_note = load_dataset_side(dataset or first.get("path"), split)
    fingerprints = {r["name"]: r["manifest"].get("dataset", {}).get("fingerprint") for r in runs}
    rows0 = runs[0]["rows"]
    bad = [i for i in ids if not _valid_label(rows0[i].get("label"))]
    if bad:
        raise ComparisonError(f"{len(bad)} predictions have no known label (e.g. {bad[0]!r}: "
                              f"{rows0[bad[0]].get('label')!r}); labels look like 'up by 1-2%'")
    label_by_id = {i: rows0[i]["label"] for i in ids}
    period_by_id = {i: rows0[i]["period"] for i in ids}
    symbol_by_id = {i: rows0[i]["symbol"] for i in ids}
    weeks = [period_by_id[i] for i in ids]
    if dataset_rows and all(dataset_rows.get(i, {}).get("weekly_return") is not None for i in ids):
        return_by_id = {i: 100 * float(dataset_rows[i]["weekly_return"]) for i in ids}
        return_source = "realised weekly_return"
    else:
        return_by_id = {i: bin_midpoint(label_to_code(label_by_id[i])) for i in ids}
        return_source = "label bin midpoints (approximate: the dataset has no weekly_return column)"

    results, per_sample = {}, []
    for run in runs:
        gts = [(ref_run["rows"][i]["output"] if ref_run else run["rows"][i]["reference"]) for i in ids]
        pairs = [score_pair(run["rows"][i]["output"], g, label_by_id[i]) for i, g in zip(ids, gts)]
        latencies = [run["rows"][i].get("latency_s") for i in ids]
        latencies = latencies if all(x is not None for x in latencies) else None
        m = summarize_pairs(pairs, latencies=latencies)
        m["hit_max_new_tokens"] = sum(bool(run["rows"][i].get("hit_max_new_tokens")) for i in ids)
        m["tokens_per_s"] = run["manifest"].get("tokens_per_s")
        outputs = [run["rows"][i]["output"] for i in ids]
        m.update(text_scores(pairs, outputs, ids, symbol_by_id))
        results[run["name"]] = {"kind": "run", "dir": run["dir"], "metrics": m, "pairs": pairs,
                                "latencies": latencies or []}
        if is_imported(run):
            results[run["name"]]["imported"] = import_summary(run)
        per_sample += [{**per_sample_row(run["name"], i, symbol_by_id[i], period_by_id[i], label_by_id[i], p, o),
                        "p_up": run["rows"][i].get("p_up")} for i, p, o in zip(ids, pairs, outputs)]
    baselines = baseline_predictions(ids, label_by_id, dataset_rows, train_labels)
    for name, (codes, note) in baselines.items():
        pairs = baseline_pairs(codes, ids, label_by_id)
        results[name] = {"kind": "baseline", "note": note, "metrics": summarize_pairs(pairs), "pairs": pairs}

    # week-clustered uncertainty: one bootstrap for all rows (paired), sign-flip test vs majority
    names_all = list(results)
    correct = np.array([[float(bool(p["correct"])) for p in results[n]["pairs"]] for n in names_all]).T
    majority = correct[:, names_all.index("majority")]
    diffs = correct - majority[:, None]
    lo, hi = week_blocked_bootstrap(np.hstack([correct, diffs]), weeks, samples, seed)
    k = len(names_all)
    for j, name in enumerate(names_all):
        m = results[name]["metrics"]
        m["binary_accuracy_ci"] = [float(lo[j]), float(hi[j])]
        m["vs_majority"] = {"difference": float(diffs[:, j].mean()), "ci": [float(lo[k + j]), float(hi[k + j])],
                            "p_value": week_sign_flip_test(correct[:, j], majority, weeks, seed)}
        m["long_short"] = long_short(results[name]["pairs"], ids, period_by_id, return_by_id)
        per_symbol = defaultdict(list)
        for p, i in zip(results[name]["pairs"], ids):
            per_symbol[symbol_by_id[i]].append(bool(p["correct"]))
        m["per_symbol_accuracy"] = {s: {"n": len(v), "accuracy": sum(v) / len(v)} for s, v in sorted(per_symbol.items())}
        m["confusion"] = confusion(results[name]["pairs"], ids, label_by_id)
    # signal: MCC, IC, calibration of p_up, backtest with costs (signals.py)
    run_rows = {r["name"]: r["rows"] for r in runs}
    series = {name: [dict(p, p_up=run_rows.get(name, {}).get(i, {}).get("p_up"),
                          p_bins=run_rows.get(name, {}).get(i, {}).get("p_bins")) for p, i in zip(r["pairs"], ids)]
              for name, r in results.items()}
    signal_rows, backtest_rows, equity, benchmark = signals.score_signals(
        series, ids, period_by_id, symbol_by_id, return_by_id, cost_bps, top_k, samples, seed)
    for name, sig in signal_rows.items():
        results[name]["metrics"]["signal"] = sig
    report = {
        "n_ids": len(ids), "weeks": len(set(weeks)), "symbols": len(set(symbol_by_id.values())),
        "left_out": left_out, "torn_lines_skipped": {r["name"]: r["skipped_lines"] for r in runs if r["skipped_lines"]},
        "decoding_differences": decoding_differences(runs + ([ref_run] if ref_run else [])),
        "reference": ref_run["name"] if ref_run else "dataset answers",
        "dataset": dataset_note, "dataset_fingerprints": fingerprints,
        "long_short_returns_from": return_source, "bootstrap_samples": samples, "seed": seed,
        "confidence": CONFIDENCE,
        "truth": truth_of(runs[0]),
        "imported": {n: r["imported"] for n, r in results.items() if "imported" in r},
        "rows": {n: {k: v for k, v in r.items() if k not in ("pairs", "latencies", "imported")}
                 for n, r in results.items()},
        "signal_settings": {"cost_bps": cost_bps, "top_k": top_k, "weeks": len(set(weeks)),
                            "returns_from": return_source, "warning": signals.weeks_warning(len(set(weeks)))},
        "benchmark": benchmark,
    }
    latencies = {n: r["latencies"] for n, r in results.items() if r["kind"] == "run"}
    return report, ComparisonDetails(latencies, per_sample, backtest_rows, equity)


# ---------------------------------------------------------------------------------------------
# Per-sample scores (per_sample.csv): one row per run and id. A new per-answer column (say p_up) is one
# more name in PER_SAMPLE_FIELDS and one more key in per_sample_row's dict.
# ---------------------------------------------------------------------------------------------
PER_SAMPLE_FIELDS = (["run", "id", "symbol", "period", "direction", "bin_code", "truth", "truth_direction",
                      "correct", "squared_error"]
                     + [f"rouge_{s}_{t}" for s in SECTIONS for t in ROUGE_TYPES]
                     + ["think_chars", "format_problems", "p_up"])


def per_sample_row(run_name, example_id, symbol, period, truth, pair, output):
    """One per_sample.csv row from a score_pair record. ROUGE cells are empty where the reference lacks
    the section; think_chars is empty for answers without a <think> block."""
    sq = (None if pair["magnitude"] is None or pair["truth_magnitude"] is None
          else (pair["magnitude"] - pair["truth_magnitude"]) ** 2)
    row = {"run": run_name, "id": example_id, "symbol": symbol, "period": period,
           "direction": pair["direction"], "bin_code": pair["bin_code"], "truth": truth,
           "truth_direction": pair["truth_direction"], "correct": pair["correct"], "squared_error": sq,
           "think_chars": think_length(output), "format_problems": "; ".join(pair["problems"])}
    for s in SECTIONS:
        for t in ROUGE_TYPES:
            row[f"rouge_{s}_{t}"] = pair.get("rouge", {}).get(s, {}).get(t)
    return row
