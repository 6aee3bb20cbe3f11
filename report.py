r"""Research report: dataset + training logs + inference runs (+ comparison, reviews) -> report.md,
a self-contained report.html and the figures beside them.

    python report.py --dataset data/sample-demo --train_dirs runs/demo/lora \
        --runs runs/demo/base-test runs/demo/lora-test --out report/
    python report.py --dataset DIR --comparison runs/compare --reviews runs/demo/reviews.sqlite --out report/

Sections: 1 hardware and environment, 2 dataset, 3 fine-tuning, 4 evaluation, 5 human review, 6 findings.
Every number is read from what the stages recorded (environment.json / run.json, build.json, args.json,
audit.json, timing.json, trainer_state.json, metrics.json, the review db); the machine the report runs on
is described only with --describe_this_machine. A section without its input is left out with one line
naming the flag that would fill it. report.html embeds its figures as data URIs: no external URL.
"""
import argparse
import json
import math
import shutil
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from errors import ForecasterError, check_args, cli
import hitl_export
import tracking
from report_document import Document, to_html, to_markdown
from review_store import RATING_SCALE, HitlError, ReviewStore
from utils import fmt, fmt_p

# ---------------------------------------------------------------------------------------------
# Defaults (CLI flags mirror these one to one)
# ---------------------------------------------------------------------------------------------
OUT = "report"
TOKENIZER = "auto"          # auto = the first model's tokenizer (first train dir, else first run); chars = characters
FIGURE_DPI = 110
HISTOGRAM_BINS = 30
EXAMPLE_CHARS = 1500        # per answer in the side-by-side examples; full texts stay in predictions.jsonl
SIGNIFICANCE = 0.05         # the level the findings paragraph states significance at
SPLITS = ("train", "validation", "test")
SECTION_TITLES = {1: "Hardware and environment", 2: "Dataset", 3: "Fine-tuning", 4: "Evaluation",
                  5: "Human review (HITL)", 6: "Findings"}
NOT_RECORDED = "not recorded"


class ReportError(ForecasterError, ValueError):
    """A user mistake or unusable input: printed as one `Error:` line."""


# ---------------------------------------------------------------------------------------------
# Small readers and formatters
# ---------------------------------------------------------------------------------------------
def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _stats_row(values):
    if not values:
        return ["0", "—", "—", "—", "—"]
    return [str(len(values)), str(min(values)), f"{statistics.fmean(values):.1f}",
            f"{statistics.median(values):g}", str(max(values))]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def model_spec(name):
    """The registry entry of a registry name or hub id, or None (API models, local folders)."""
    from models import MODELS
    return next((s for s in MODELS.values() if name and str(name).lower() in (s.name, s.hub_id.lower())), None)


def first_model(train_dirs, runs):
    for d in train_dirs:
        args = (read_json(Path(d) / "args.json") or {}).get("args", {})
        if args.get("base_model"):
            return args["base_model"]
    for r in runs:
        if (read_json(Path(r) / "run.json") or {}).get("model"):
            return read_json(Path(r) / "run.json")["model"]
    return None


# ---------------------------------------------------------------------------------------------
# 1. Hardware and environment
# ---------------------------------------------------------------------------------------------
ENV_FIELDS = [("GPU", None), ("CUDA", "cuda"), ("driver", "driver"), ("CPU", "cpu"), ("CPU cores", "cpu_count"),
              ("RAM GiB", "ram_gib"), ("OS", "os"), ("python", "python"), ("torch", "torch"),
              ("transformers", "transformers"), ("peft", "peft"), ("accelerate", "accelerate"),
              ("datasets", "datasets"), ("trl", "trl"), ("deepspeed", "deepspeed"), ("bitsandbytes", "bitsandbytes")]


def _env_value(env, key):
    if key is None:                               # GPU: model x count (memory), or none
        if "gpu" not in env:
            return NOT_RECORDED
        if not env["gpu"]:
            return "none (CPU)"
        return f"{env['gpu']} ×{env.get('gpu_count') or 1}" + (f" ({env['gpu_memory_gib']} GiB)"
                                                               if env.get("gpu_memory_gib") else "")
    if key not in env:
        return NOT_RECORDED
    return "none" if env[key] is None else str(env[key])


def hardware_section(doc, train_dirs, runs, build, describe):
    sources = []
    for d in train_dirs:
        env = read_json(Path(d) / "environment.json")
        if env:
            sources.append((f"training: {Path(d).name}", env))
    for r in runs:
        m = read_json(Path(r) / "run.json") or {}
        env = {**(m.get("hardware") or {}), **(m.get("versions") or {})}
        if env:
            sources.append((f"inference: {Path(r).name}", env))
    if describe:
        import models
        sources.append(("this machine (report)", models.environment_info()))
    if not doc.section(1, None if sources else "pass --train_dirs (environment.json) or --runs (run.json "
                       "hardware), or --describe_this_machine"):
        return
    doc.p("As recorded by the stages that ran (training: `environment.json`; inference: the `hardware` and "
          "`versions` of `run.json`)" + (", plus the machine this report was built on." if describe else
                                         "; the machine this report was built on is not described."))
    rows = [[label] + [_env_value(env, key) for _, env in sources] for label, key in ENV_FIELDS]
    rows = [r for r in rows if any(v != NOT_RECORDED for v in r[1:])]
    doc.table(["", *[name for name, _ in sources]], rows)
    if build and build.get("versions"):
        doc.p("Dataset built with: " + ", ".join(f"{k} {v}" for k, v in build["versions"].items()) + ".")


# ---------------------------------------------------------------------------------------------
# 2. Dataset
# ---------------------------------------------------------------------------------------------
def length_unit(choice, model_name):
    """(tokenizer or None, one line saying what lengths are counted in)."""
    if choice == "chars":
        return None, "Lengths in characters (--tokenizer chars)."
    name = model_name if choice == "auto" else choice
    if not name:
        return None, "Lengths in characters: no model named by --train_dirs or --runs."
    try:
        import models
        return models.load_tokenizer(name), f"Lengths in tokens of the `{name}` tokenizer."
    except Exception as exc:  # noqa: BLE001 - any loader failure falls back to characters, said in one line
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        return None, f"Lengths in characters: the `{name}` tokenizer could not be loaded offline ({reason})."


def count_lengths(texts, tokenizer, desc):
    from tqdm import tqdm
    if tokenizer is None:
        return [len(t or "") for t in texts]
    out = []
    for k in tqdm(range(0, len(texts), 256), desc=desc, unit="batch", leave=False):
        out += map(len, tokenizer([t or "" for t in texts[k:k + 256]], add_special_tokens=False)["input_ids"])
    return out


def news_items(row):
    return row["n_news"] if row.get("n_news") is not None else (row["prompt"] or "").count("[Headline]:")


def has_financials(row):
    if "financials_period" in row:
        return bool(row["financials_period"])
    prompt = row["prompt"] or ""
    return "[Basic Financials]:" in prompt and "No basic financial reported" not in prompt


def dataset_section(doc, path, dd, build, tokenizer_choice, model_name):
    from dataset_io import summarize
    from prompt import BIN_LABELS
    if not doc.section(2, None if dd is not None else "pass --dataset DIR (data_pipeline.py output)"):
        return
    summary = summarize(dd, path)
    splits = list(summary["splits"])
    if build:
        cut = build.get("cutoffs") or {}
        doc.p(f"Source `{build.get('source')}`, teacher `{build.get('teacher')}` ({build.get('teacher_mode')} mode); "
              f"{build.get('prompts_built')} prompts built, {build.get('embargoed', 0)} embargoed at the split "
              f"boundaries, {len(build.get('teacher_failures') or {})} teacher failures; cutoffs: validation from "
              f"{cut.get('val_start')}, test from {cut.get('test_start')}. Tickers: "
              f"{', '.join(build.get('tickers') or [])}" + (f"; skipped: {', '.join(build['ticker_errors'])}"
                                                           if build.get("ticker_errors") else "") + ".")
        if build.get("description"):
            doc.p(build["description"])
    else:
        doc.p(f"No build.json beside `{path}`: source, teacher and cutoffs are not recorded.")
    doc.table(["split", "rows", "tickers", "weeks", "first week", "last week", "up-share"],
              [[s, v["rows"], v["symbols"], v["weeks"], v["first_period"], v["last_period"], fmt(v["up_share"])]
               for s, v in summary["splits"].items()])
    doc.h3("Labels")
    doc.table(["label", *splits], [[lbl, *[summary["splits"][s]["labels"].get(lbl, 0) for s in splits]]
                                   for lbl in BIN_LABELS])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / len(splits)
    for j, s in enumerate(splits):
        v = summary["splits"][s]
        shares = [v["labels"].get(lbl, 0) / max(1, v["rows"]) for lbl in BIN_LABELS]
        ax.bar([k + j * width for k in range(len(BIN_LABELS))], shares, width,
               label=f"{s} (n={v['rows']}, up-share {fmt(v['up_share'], '.2f')})")
    ax.set_xticks([k + width * (len(splits) - 1) / 2 for k in range(len(BIN_LABELS))], BIN_LABELS, rotation=35,
                  ha="right", fontsize=8)
    ax.set_ylabel("share of the split")
    ax.legend(fontsize=8, ncol=len(splits), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    doc.figure(fig, "labels.png", "Label distribution (12 bins) per split, as a share of the split's rows.")

    rows_by_split = {s: dd[s].to_list() for s in splits}
    tokenizer, unit_line = length_unit(tokenizer_choice, model_name)
    unit = "characters" if tokenizer is None else "tokens"
    doc.h3("Lengths, news and financials")
    doc.p(unit_line)
    lengths = {(s, part): count_lengths([r[part] for r in rows], tokenizer, f"{part} {unit} [{s}]")
               for s, rows in rows_by_split.items() for part in ("prompt", "answer")}
    doc.table(["split", "text", "n", "min", "mean", "median", "max"],
              [[s, part, *_stats_row(lengths[(s, part)])] for s in splits for part in ("prompt", "answer")])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, part in zip(axes, ("prompt", "answer")):
        for s in splits:
            ax.hist(lengths[(s, part)], bins=HISTOGRAM_BINS, histtype="step", linewidth=1.5, label=s)
        ax.set_xlabel(f"{part} length ({unit})")
        ax.set_ylabel("examples")
        ax.legend(fontsize=8)
    doc.figure(fig, "lengths.png", f"Prompt and answer lengths in {unit} per split.")
    news = {s: [news_items(r) for r in rows] for s, rows in rows_by_split.items()}
    doc.table(["split", "news items per prompt: n", "min", "mean", "median", "max", "prompts with financials",
               "without"],
              [[s, *_stats_row(news[s]), sum(map(has_financials, rows_by_split[s])),
                sum(not has_financials(r) for r in rows_by_split[s])] for s in splits])
    fig, ax = plt.subplots(figsize=(7, 3))
    top = max((max(v) for v in news.values() if v), default=0)
    for j, s in enumerate(splits):
        counts = Counter(news[s])
        ax.bar([k + j * width for k in range(top + 1)], [counts.get(k, 0) for k in range(top + 1)], width, label=s)
    ax.set_xlabel("news items in the prompt")
    ax.set_ylabel("prompts")
    ax.legend(fontsize=8)
    doc.figure(fig, "news_per_prompt.png", "News items per prompt, per split.")
    doc.h3("Problems found by the validator")
    problems = [[s, kind, p["count"], ", ".join(p["examples"])] for s, v in summary["splits"].items()
                for kind, p in v["problems"].items()]
    doc.table(["split", "problem", "rows", "e.g."], problems) if problems else doc.p("None (`dataset_io.summarize`).")
    if not summary["hindsight_checked"]:
        doc.p("Label vs Prediction-line agreement not checked: not a hindsight dataset, or its mode is unknown.")


# ---------------------------------------------------------------------------------------------
# 3. Fine-tuning
# ---------------------------------------------------------------------------------------------
HYPERPARAMETERS = ["base_model", "dataset", "max_length", "overlong", "batch_size", "gradient_accumulation_steps",
                   "learning_rate", "num_epochs", "max_steps", "warmup_ratio", "weight_decay", "lora_r",
                   "lora_alpha", "lora_dropout", "target_modules", "load_in_8bit", "load_in_4bit",
                   "gradient_checkpointing", "seed"]


def adapter_parameter_count(folder):
    """Elements in adapter_model.safetensors, read from its JSON header (no torch needed), or None."""
    path = Path(folder) / "adapter_model.safetensors"
    try:
        with open(path, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    except (OSError, ValueError):
        return None
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def training_section(doc, train_dirs):
    if not doc.section(3, None if train_dirs else "pass --train_dirs ADAPTER_DIR... (train_lora.py output)"):
        return
    plt = _pyplot()
    for d in map(Path, train_dirs):
        resolved, audit = read_json(d / "args.json") or {}, read_json(d / "audit.json")
        timing, state = read_json(d / "timing.json") or {}, read_json(d / "trainer_state.json") or {}
        args, model = resolved.get("args", {}), resolved.get("model", {})
        doc.h3(f"{d.name}")
        values = {k: args.get(k) for k in HYPERPARAMETERS}
        if values["target_modules"] is None and model.get("lora_targets"):
            values["target_modules"] = ",".join(model["lora_targets"]) + " (the model's default)"
        if args.get("batch_size") and args.get("gradient_accumulation_steps"):
            values["effective batch"] = args["batch_size"] * args["gradient_accumulation_steps"]
        values.update({"dtype": resolved.get("dtype"), "scheduler": resolved.get("scheduler"),
                       "prompt style": resolved.get("prompt_style")})
        counted = adapter_parameter_count(d)
        estimate = (resolved.get("memory_estimate") or {}).get("lora_parameters")
        values["trainable parameters"] = (f"{counted:,} (counted in adapter_model.safetensors)" if counted else
                                          f"{estimate:,} (estimated from the architecture)" if estimate else None)
        doc.table(["setting", "value"], [[k, NOT_RECORDED if v is None else v] for k, v in values.items()
                                         if v is not None or k in ("base_model", "trainable parameters")])
        if audit:
            doc.p(f"Supervision audit (`audit.json`): tokenizer {audit.get('tokenizer')}, max_length "
                  f"{audit.get('max_length')}, over-long examples: {audit.get('overlong')}.")
            doc.table(["split", "in", "out", "over max_length", "news trimmed", "answers cut", "dropped",
                       "supervised tokens/example (mean)", "tokens/example (mean / max)"],
                      [[s, a["examples_in"], a["examples_out"], a["over_max_length"], a["trimmed_news"],
                        a["answers_cut"], a["dropped"], a["supervised_tokens_per_example"].get("mean", "—"),
                        f"{a['tokens_per_example'].get('mean', '—')} / {a['tokens_per_example'].get('max', '—')}"]
                       for s, a in (audit.get("splits") or {}).items()])
        else:
            doc.p("No audit.json in this folder.")
        history = state.get("log_history") or []
        train = [(e["step"], e["loss"]) for e in history if "loss" in e and "step" in e]
        evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e and "step" in e]
        if train or evals:
            fig, ax = plt.subplots(figsize=(7, 3.2))
            for points, label, style in ((train, "train loss", "-"), (evals, "validation loss", "o--")):
                if points:
                    ax.plot(*zip(*points), style, label=label)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("loss")
            ax.legend()
            doc.figure(fig, f"loss_{d.name}.png", f"{d.name}: loss curves from trainer_state.json "
                       f"({len(train)} train logs, {len(evals)} evaluations).")
        else:
            doc.p("No loss logged in trainer_state.json.")
        # transformers logs a running train_runtime with every loss: the last one is the whole run
        wall = timing.get("train_wall_s") or next((e["train_runtime"] for e in reversed(history)
                                                   if "train_runtime" in e), None)
        facts = [f"wall time {fmt(wall, '.1f')} s" if wall else f"wall time {NOT_RECORDED}",
                 f"{timing.get('global_step', state.get('global_step', '—'))} optimizer steps"]
        if timing.get("train_tokens_seen"):
            facts.append(f"{timing['train_tokens_seen']:,} tokens seen, "
                         f"{fmt(timing.get('train_tokens_per_s'), '.1f')} tokens/s")
        if timing.get("training_loss") is not None:
            facts.append(f"mean train loss {fmt(timing['training_loss'], '.4f')}")
        for key, label in (("host_peak_gib", "peak host memory"), ("gpu_peak_gib", "peak GPU memory")):
            if timing.get(key) is not None:
                facts.append(f"{label} {timing[key]} GiB")
        doc.p("Timing (`timing.json`): " + "; ".join(facts) + ".")
        wandb_runs = tracking.find_runs(d)     # wandb_run.json and <dir>/wandb/*run-* folders; no network
        if wandb_runs:
            doc.p("Weights & Biases: " + "; ".join(tracking.describe_run(r) for r in wandb_runs) + ".")


# ---------------------------------------------------------------------------------------------
# 4. Evaluation
# ---------------------------------------------------------------------------------------------
def load_metrics(comparison_dir, runs, out):
    """metrics.json of --comparison, or compare() over --runs written to OUT/comparison. Returns (metrics, dir)."""
    import scoring
    if comparison_dir:
        return read_json(Path(comparison_dir) / "metrics.json"), Path(comparison_dir)
    target = Path(out) / "comparison"
    try:
        result = scoring.compare(runs)
    except scoring.ComparisonError as exc:
        raise ReportError(f"--runs: {exc}") from None
    scoring.write_outputs(result, target)
    return read_json(target / "metrics.json"), target


def pick_examples(run_dirs):
    """(rule, [(kind, id)], runs): best/worst/typical answers of the first run, chosen by mean ROUGE-L."""
    import scoring
    from utils import score_pair
    runs = [scoring.load_run(d) for d in run_dirs]
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
    from utils import ROUGE_TYPES, SECTIONS
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
    plt = _pyplot()
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
# 4 (cont.). Signal: calibration, MCC, IC and the backtest beside accuracy (comparison.py via signals.py)
# ---------------------------------------------------------------------------------------------
MEANINGFUL_CALIBRATION_N = 100      # below this many p_up values, a reliability diagram is mostly noise


def _ci_text(ci, spec=".3f"):
    return "" if not ci else f" [{format(ci[0], spec)}, {format(ci[1], spec)}]"


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
        table.append([name, row["kind"], fmt(row["metrics"]["binary_accuracy"]), f"{fmt(s['mcc'])}{_ci_text(s['mcc_ci'])}",
                      f"{fmt(s['mcc_parsed'])}{_ci_text(s['mcc_parsed_ci'])}", f"{fmt(ic['mean'])}{_ci_text(ic['ci'])}",
                      fmt(ic["t"], ".2f"), f"{ic['weeks']} / {ic['weeks_skipped']}", fmt(ic["positive_share"], ".0%")])
    doc.table(["model", "kind", "binary accuracy", "MCC all n [95% CI]", "MCC parsed [95% CI]", "IC mean [95% CI]",
               "IC t", "IC weeks used / skipped", "weeks with IC > 0"], table)
    probs = {n: r["metrics"]["signal"]["probabilities"] for n, r in rows.items()
             if (r["metrics"].get("signal") or {}).get("probabilities")}
    if probs:
        doc.table(["model (p_up)", "n", "Brier [95% CI]", "log loss", "ECE, 10 bins [95% CI]", "ROC-AUC [95% CI]",
                   "accuracy at coverage (abstain when |p_up − 0.5| < t)"],
                  [[n, p["n"], f"{fmt(p['brier'])}{_ci_text(p['brier_ci'])}", fmt(p["log_loss"]),
                    f"{fmt(p['ece'])}{_ci_text(p['ece_ci'])}", f"{fmt(p['roc_auc'])}{_ci_text(p['roc_auc_ci'])}",
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
              f"{fmt(bench.get('sharpe'), '.2f')}{_ci_text(bench.get('sharpe_ci'), '.2f')}",
              fmt(bench.get("max_drawdown")), fmt(bench.get("cumulative"), "+.4f"), fmt(bench.get("mean_turnover"), ".2f"),
              "—"]]
    for name, row in rows.items():
        for strategy, e in ((row["metrics"].get("signal") or {}).get("backtest") or {}).items():
            vs = e.get("vs_benchmark") or {}
            table.append([name, strategy, fmt(e["annual_return"], "+.3f"), fmt(e["volatility"]),
                          f"{fmt(e['sharpe'], '.2f')}{_ci_text(e['sharpe_ci'], '.2f')}", fmt(e["max_drawdown"]),
                          fmt(e["cumulative"], "+.4f"), fmt(e["mean_turnover"], ".2f"),
                          f"{fmt(vs.get('difference'), '+.4f')}{_ci_text(vs.get('ci'), '+.4f')}"])
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
                             f"{_ci_text(ci, '+.4f')}, {'excludes' if ci and ci[0] > 0 else 'includes'} zero)")
    costs = f"after {settings['cost_bps']:g} bps costs over {settings['weeks']} weeks"
    if not beats:
        return [f"No run's strategy had a higher mean weekly net return than the equal-weight benchmark {costs}."]
    return [f"Strategies with a higher mean weekly net return than the equal-weight benchmark {costs}: "
            + "; ".join(beats) + "."]


# ---------------------------------------------------------------------------------------------
# 5. Human review
# ---------------------------------------------------------------------------------------------
def find_export(db, explicit):
    if explicit:
        return Path(explicit)
    candidates = [Path(db).parent / "export.json", *sorted(Path(db).parent.glob("*/export.json"))]
    return next((c for c in candidates if c.is_file()), None)


def hitl_section(doc, db, export_path):
    if not doc.section(5, None if db else "pass --reviews REVIEWS.sqlite (hitl.py serve --db)"):
        return
    store = ReviewStore.read_only(db)   # read only: never touches reviews
    runs = {r["slot"]: r["name"] for r in store.runs()}
    splits = Counter(store.example_splits().values())
    reviews = store.reviews()
    reviewers = Counter(r["reviewer"] for r in reviews)
    doc.p(f"{len(reviews)} reviews by {len(reviewers)} reviewer(s) of {len({r['example_id'] for r in reviews})} "
          f"of {sum(splits.values())} examples ({', '.join(f'{k} {v}' for k, v in splits.items())}); runs: "
          + ", ".join(f"{s} = `{n}`" for s, n in runs.items()) + ".")
    doc.table(["reviewer", "reviews"], sorted(reviewers.items()))
    table = []
    for slot, name in runs.items():
        ratings = [r[f"rating_{slot}"] for r in reviews if r.get(f"rating_{slot}")]
        dist = Counter(ratings)
        table.append([f"{slot}: {name}", len(ratings), fmt(statistics.fmean(ratings) if ratings else None, ".2f"),
                      " ".join(f"{k}:{dist.get(k, 0)}" for k in RATING_SCALE),
                      sum(r.get("preference") == slot for r in reviews),
                      sum(r.get(f"direction_{slot}") == "right" for r in reviews),
                      sum(r.get(f"direction_{slot}") == "wrong" for r in reviews),
                      sum(bool(r.get(f"edit_{slot}")) for r in reviews)])
    doc.table(["model", "ratings", "mean rating (1-5)", "distribution", "preferred", "marked right", "marked wrong",
               "edits"], table)
    doc.p(f"Ties: {sum(r.get('preference') == 'tie' for r in reviews)}.")
    preferences, ratings = defaultdict(dict), defaultdict(dict)
    for r in reviews:
        if r.get("preference"):
            preferences[r["example_id"]][r["reviewer"]] = r["preference"]
        for slot in runs:
            if r.get(f"rating_{slot}"):
                ratings[f"{r['example_id']}|{slot}"][r["reviewer"]] = r[f"rating_{slot}"]
    rows = []
    for what, agreement in (("preference", hitl_export.agreement(preferences)), ("rating (exact)", hitl_export.agreement(ratings))):
        rows += [[what, "/".join(p["reviewers"]), p["examples"], p["percent_agreement"], fmt(p["cohen_kappa"])]
                 for p in agreement["pairs"]]
    doc.table(["agreement on", "reviewers", "shared", "% agreement", "Cohen's kappa"], rows) if rows else \
        doc.p("Agreement: no example was reviewed by more than one reviewer.")
    export = read_json(export_path) if export_path else None
    if export:
        doc.p(f"Export (`{export_path}`, {export.get('exported_at', 'time not recorded')}): {export.get('sft_rows')} "
              f"SFT rows and {export.get('dpo_pairs')} DPO pairs; {len(export.get('flagged_edits') or [])} edits "
              "flagged as Prediction-only changes after the reveal.")
        doc.table(["export count", "value"], sorted((export.get("counts") or {}).items()))
    else:
        doc.p("No export.json next to the review db (run `hitl.py export`, or pass --hitl_export).")


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


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", help="dataset folder from data_pipeline.py (build.json beside it is read too)")
    ap.add_argument("--train_dirs", nargs="+", default=[], metavar="DIR", help="adapter folders from train_lora.py")
    ap.add_argument("--runs", nargs="+", default=[], metavar="RUN_DIR", help="run dirs from inference.py; scored "
                    "with scoring.compare() (comparison.py's core) into OUT/comparison unless --comparison is given")
    ap.add_argument("--comparison", metavar="DIR", help="a comparison.py --out folder (metrics.json and plots)")
    ap.add_argument("--reviews", metavar="DB", help="review SQLite file from hitl.py serve (read only)")
    ap.add_argument("--hitl_export", metavar="JSON", help="export.json of hitl.py export (default: one found "
                    "next to --reviews or in a folder beside it)")
    ap.add_argument("--out", default=OUT, help="report folder: report.md, report.html and the PNG figures")
    ap.add_argument("--tokenizer", default=TOKENIZER, help="lengths in tokens of this model (registry name, hub id, "
                    "folder); auto = the first model's; chars = characters")
    ap.add_argument("--describe_this_machine", action="store_true",
                    help="also describe the machine building the report (section 1 otherwise shows only what "
                         "training/inference recorded)")
    ap.add_argument("--title", default="Stock-movement forecasting with LoRA: research report", help="report title")
    return ap.parse_args(argv)


def check_inputs(args):
    """Every problem with the inputs, at once, before anything is computed. Returns (problems, dataset, build)."""
    problems = []
    if not any([args.dataset, args.train_dirs, args.runs, args.comparison, args.reviews, args.describe_this_machine]):
        problems.append("nothing to report: pass --dataset, --train_dirs, --runs, --comparison or --reviews")
    for d in args.train_dirs:
        if not any((Path(d) / f).is_file() for f in ("args.json", "trainer_state.json", "timing.json")):
            problems.append(f"--train_dirs {d}: no args.json, trainer_state.json or timing.json (a train_lora.py "
                            "--output_dir)")
    for r in args.runs:
        missing = [f for f in ("predictions.jsonl", "run.json") if not (Path(r) / f).is_file()]
        if missing:
            problems.append(f"--runs {r}: no {' or '.join(missing)} (an inference.py --out folder)")
    if args.comparison and not (Path(args.comparison) / "metrics.json").is_file():
        problems.append(f"--comparison {args.comparison}: no metrics.json (a comparison.py --out folder)")
    if args.reviews:
        try:
            ReviewStore.read_only(args.reviews)
        except HitlError as exc:
            problems.append(f"--reviews {exc}")
    if args.hitl_export and not Path(args.hitl_export).is_file():
        problems.append(f"--hitl_export {args.hitl_export}: no such file")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        problems.append(f"--out {args.out}: is a file, not a folder")
    dd = build = None
    if args.dataset:
        from dataset_io import DatasetError, load_forecast_dataset
        try:
            dd = load_forecast_dataset(args.dataset)
            build = read_json(Path(args.dataset) / "build.json")
        except DatasetError as exc:
            problems.append(f"--dataset: {exc}")
    return problems, dd, build


@cli
def main(argv=None):
    started = time.time()
    args = parse_args(argv)
    problems, dd, build = check_inputs(args)
    check_args(problems)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = Document(out, SECTION_TITLES, FIGURE_DPI, EXAMPLE_CHARS)
    hardware_section(doc, args.train_dirs, args.runs, build, args.describe_this_machine)
    dataset_section(doc, args.dataset, dd, build, args.tokenizer, first_model(args.train_dirs, args.runs))
    training_section(doc, args.train_dirs)
    metrics, comparison_dir = (load_metrics(args.comparison, args.runs, out)
                               if args.comparison or args.runs else (None, None))
    contamination = evaluation_section(doc, metrics, comparison_dir, args.runs, args.train_dirs, dd, build)
    signal_section(doc, metrics, comparison_dir)
    hitl_section(doc, args.reviews, find_export(args.reviews, args.hitl_export) if args.reviews else None)
    findings_section(doc, metrics, contamination)
    (out / "report.md").write_text(to_markdown(doc, args.title))
    (out / "report.html").write_text(to_html(doc, args.title))
    print(f"{out / 'report.md'}\n{out / 'report.html'}")
    print(f"report: sections {', '.join(map(str, doc.sections))}" + (f" (left out: {', '.join(map(str, doc.omitted))})"
                                                                     if doc.omitted else "")
          + f", {len(doc.figures)} figures, in {time.time() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
