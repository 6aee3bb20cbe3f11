"""The report's sections built from what the stages recorded, apart from the evaluation: 1 hardware and
environment (environment.json, run.json), 2 dataset (the dataset dir and build.json), 3 fine-tuning
(args.json, audit.json, timing.json, trainer_state.json, W&B runs) and 5 human review (the review db, read
only, and export.json), plus the small readers report.py and report_evaluation.py share. Each section
adds its blocks to a report_document.Document, or one line naming the flag that would fill it.
"""
import json
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

import hitl_export
import models
import wandb_reader
from dataset_io import summarize
from prompt import BIN_LABELS
from review_store import RATING_SCALE, ReviewStore
from utils import fmt

HISTOGRAM_BINS = 30
NOT_RECORDED = "not recorded"


# ---------------------------------------------------------------------------------------------
# Small readers
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


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported only when a figure is drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def model_spec(name):
    """The registry entry of a registry name or hub id, or None (API models, local folders)."""
    return next((s for s in models.MODELS.values() if name and str(name).lower() in (s.name, s.hub_id.lower())), None)


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
        return models.load_tokenizer(name), f"Lengths in tokens of the `{name}` tokenizer."
    except Exception as exc:  # noqa: BLE001 - any loader failure falls back to characters, said in one line
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        return None, f"Lengths in characters: the `{name}` tokenizer could not be loaded offline ({reason})."


def count_lengths(texts, tokenizer, desc):
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
    plt = pyplot()
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
    plt = pyplot()
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
        wandb_runs = wandb_reader.find_runs(d)     # wandb_run.json and <dir>/wandb/*run-* folders; no network
        if wandb_runs:
            doc.p("Weights & Biases: " + "; ".join(wandb_reader.describe_run(r) for r in wandb_runs) + ".")


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
