"""Build a weekly news + financials forecasting dataset, or check one.

    python data_pipeline.py --source sample --teacher offline --out data/sample-demo
    python data_pipeline.py --check data/sample-demo

Stages: source (prices, profile, news, financials; sources.py) -> Sunday-to-Sunday weekly windows ->
leak-free prompt records (records.py, shared with inference.py's live forecast: it owns the leak rules)
-> teacher answers (teachers.py; journaled, resumable) -> train / validation / test by global date
cutoffs -> a DatasetDict folder + build.json manifest. Every source takes the same path. Every flag is
checked before the first call (validate_args); a user mistake is one `Error:` line and exit 1.
"""
import argparse
import csv
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from dotenv import find_dotenv, load_dotenv
from tqdm import tqdm

from errors import ForecasterError, cli
import market_calendar
import prompt as P
import records
import sources
from dataset_io import format_summary, load_forecast_dataset, summarize
from indices import get_index
from models import package_versions
from records import first_past_sunday, format_coverage, news_coverage, record_id
from sources import (CACHE_DIR_ENV, FINNHUB_KEY_ENV, PRICES_CSV_COLUMNS, SAMPLE_FIRST_DATE, SAMPLE_LAST_DATE,
                     SAMPLE_TICKERS, SOURCES, open_source)
from teachers import (PRICES_PER_M_TOKENS, TEACHERS, OpenAITeacher, TeacherFatalError, estimate_cost,
                      openai_api_key)

# ---------------------------------------------------------------------------------------------
# Defaults (CLI flags mirror these one to one; the record rules' defaults live in records.py)
# ---------------------------------------------------------------------------------------------
SOURCE = "sample"
TEACHER = "offline"
TEACHER_MODE = "hindsight"         # upstream's mode; 'blind' never tells the teacher the outcome
SAMPLE_START, SAMPLE_END = "2011-09-04", "2013-02-17"   # ~76 prediction weeks inside bokeh's range
MIN_PAST_WEEKS, MAX_PAST_WEEKS = records.MIN_PAST_WEEKS, records.MAX_PAST_WEEKS   # upstream: 1..3
MAX_NEWS_PER_WEEK = records.MAX_NEWS_PER_WEEK   # upstream's 5
SAMPLE_MAX_NEWS_PER_WEEK = 3       # keeps the sample's demo prompts short
FINANCIALS_LAG_DAYS, FINANCIALS_LAG_DAYS_Q4 = records.FINANCIALS_LAG_DAYS, records.FINANCIALS_LAG_DAYS_Q4
VAL_FRACTION, TEST_FRACTION = records.VAL_FRACTION, records.TEST_FRACTION
TEACHER_MODEL = "gpt-4o-mini"
TEACHER_TEMPERATURE = 0.7
TEACHER_MAX_TOKENS = 1024          # public answers are 1.3k-3.1k characters (< 800 tokens)
FINNHUB_CALLS_PER_MINUTE = sources.FINNHUB_CALLS_PER_MINUTE   # 55: the free plan says 60, Finnhub 429s below
LIVE_WEEKS = market_calendar.DEFAULT_WEEKS   # live default range: the last 52 completed weeks
TEACHER_RETRIES = 2
TEACHER_CONCURRENCY = 8
DATA_PACKAGES = ("datasets", "pandas", "openai", "finnhub-python", "yfinance")   # versions recorded in build.json
SEED = records.SEED
TICKER_SPELLING = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,14}$")   # AAPL, BRK.B, BRK-B, 7203.T


class DataPipelineError(ForecasterError, ValueError):
    """A user mistake or an unusable input to a build: printed as one `Error:` line, exit 1."""


def _date(x):
    return pd.Timestamp(x).strftime("%Y-%m-%d")


# ---------------------------------------------------------------------------------------------
# Teacher labelling: journaled, resumable, validated
# ---------------------------------------------------------------------------------------------
def teacher_request(record, mode):
    instruction = P.teacher_instruction(record["symbol"], record["curday"], record["period"], mode,
                                        record["label"])
    user = P.render_prompt(record, instruction)
    key = hashlib.sha256(f"{mode}\n{P.SYSTEM_PROMPT}\n{user}".encode()).hexdigest()[:16]
    return {"id": record_id(record), "key": key, "system": P.SYSTEM_PROMPT, "user": user, "record": record,
            "label": record["label"], "mode": mode}


def check_teacher_answer(text, request):
    """Validated final answer text, or raise ValueError saying what is wrong with it."""
    if not text or not text.strip():
        raise ValueError("empty answer")
    text = text.strip()
    if request["mode"] == "hindsight":
        text = P.insert_prediction(text, request["label"])
    parsed = P.parse_answer(text)
    if not parsed.ok:
        raise ValueError("off-format answer: " + "; ".join(parsed.problems))
    return text


def read_journal(path):
    """{(id, key): entry} for good answers; a torn last line (process killed mid-write) is ignored."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("answer"):
                done[(entry["id"], entry["key"])] = entry
    return done


def label_with_teacher(requests, teacher, journal_path, retries=TEACHER_RETRIES,
                       concurrency=TEACHER_CONCURRENCY, progress=True):
    """Ask the teacher for every request not yet in the journal. Good answers are appended to the
    journal as they arrive (one fsync'd line each), so a killed run resumes without asking twice.
    Returns (answers {id: text}, failures {id: reason}, stats)."""
    journal_path = Path(journal_path)
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_journal(journal_path)
    answers = {r["id"]: done[(r["id"], r["key"])]["answer"] for r in requests if (r["id"], r["key"]) in done}
    todo = [r for r in requests if r["id"] not in answers]
    failures, usage = {}, {"prompt_tokens": 0, "completion_tokens": 0}

    stopped = threading.Event()      # set by the first fatal error: queued requests are never sent

    def ask(request):
        problems = []
        for _ in range(retries + 1):
            if stopped.is_set():
                return request, None, "not asked: the run stopped"
            try:
                raw = teacher.answer(request)
            except TeacherFatalError:
                stopped.set()
                raise
            except Exception as exc:   # transport errors after the client's own retries
                problems.append(f"{type(exc).__name__}: {exc}")
                continue
            try:
                return request, check_teacher_answer(raw, request), None
            except ValueError as exc:
                problems.append(str(exc))
        return request, None, " | ".join(problems)

    with open(journal_path, "a") as journal, ThreadPoolExecutor(max(1, concurrency)) as pool:
        futures = [pool.submit(ask, r) for r in todo]
        for fut in tqdm(as_completed(futures), total=len(futures), desc=f"teacher ({teacher.name})",
                        unit="answer", disable=not progress or not futures):
            try:
                request, text, problem = fut.result()
            except TeacherFatalError as exc:
                for other in futures:
                    other.cancel()
                raise DataPipelineError(f"{exc} ({len(answers)} answers kept in {journal_path})") from None
            if text is None:
                failures[request["id"]] = problem
                continue
            answers[request["id"]] = text
            journal.write(json.dumps({"id": request["id"], "key": request["key"], "answer": text,
                                      "teacher": teacher.model, "mode": request["mode"],
                                      "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")
            journal.flush()
    stats = {"asked": len(todo), "resumed_from_journal": len(requests) - len(todo),
             "answered": len(answers), "failed": len(failures)}
    stats.update(getattr(teacher, "usage", usage))
    return answers, failures, stats


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------
def save_dataset(rows_by_split, out, description):
    from datasets import Dataset, DatasetDict, DatasetInfo
    from datasets.utils.logging import disable_progress_bar
    disable_progress_bar()
    dd = DatasetDict({s: Dataset.from_list(rows, info=DatasetInfo(description=description))
                      for s, rows in rows_by_split.items()})
    tmp = Path(str(out) + ".tmp-save")
    shutil.rmtree(tmp, ignore_errors=True)
    dd.save_to_disk(str(tmp))
    for child in tmp.iterdir():      # swap in the new splits; the journal and manifest stay
        target = Path(out) / child.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        child.rename(target)
    tmp.rmdir()
    (Path(out) / "README.md").write_text(description + "\n")
    return dd


SAMPLE_DESCRIPTION = (
    "SAMPLE DATA for demonstrating the pipeline, not for research. Prices are real daily adjusted "
    "closes from the bokeh-sampledata package (public domain). Company profiles are facts written by the "
    "project (no market cap). News items are GENERATED by the project from price and volume data dated "
    "before each item (moves, volume spikes, 52-week highs/lows) plus generic headlines that carry no "
    "price information. 'Basic financials' are price-derived quarterly metrics standing in for "
    "fundamentals, shown only after period end + the reporting lag. Answers come from the teacher named "
    "in build.json.")



# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------
def build(args, source, teacher):
    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    symbols = resolve_symbols(args)
    horizon_warning = warn_news_horizon(source, args.start, args.max_past_weeks)
    built, errors = records.build_records(
        source, symbols, args.start, args.end, min_past_weeks=args.min_past_weeks,
        max_past_weeks=args.max_past_weeks, max_news_per_week=args.max_news_per_week,
        lag_days=args.financials_lag_days, lag_days_q4=args.financials_lag_days_q4, seed=args.seed)
    for sym, err in errors.items():
        print(f"Warning: {sym}: skipped ({err})", file=sys.stderr)   # the build goes on without it
    if not built:
        raise DataPipelineError("no prompts could be built: " + (
            "; ".join(f"{k}: {v}" for k, v in errors.items()) or "no weeks in --start/--end"))
    val_start, test_start = args.val_start, args.test_start
    if not (val_start and test_start):
        auto_val, auto_test = records.default_cutoffs([r["prediction_start"] for r in built])
        val_start, test_start = val_start or auto_val, test_start or auto_test
    if not val_start < test_start:
        raise DataPipelineError(f"--val_start {val_start} must be before --test_start {test_start}")
    requests = [teacher_request(r, args.teacher_mode) for r in built]
    if args.dry_run:
        print(f"dry run: {len(requests)} prompts built for {len(symbols) - len(errors)} symbols; no teacher calls")
        return None
    done_ids = {entry["id"] for entry in read_journal(out / "teacher_journal.jsonl").values()}
    confirm_cost(requests, args, done_ids)
    answers, failures, teacher_stats = label_with_teacher(
        requests, teacher, out / "teacher_journal.jsonl", retries=args.teacher_retries,
        concurrency=args.teacher_concurrency)
    if not answers:
        first = next(iter(failures.values()), "no failure recorded")
        raise DataPipelineError(f"the teacher answered none of the {len(requests)} prompts, so no dataset was "
                                f"written; first failure: {first[:300]}")
    rows_by_split, embargoed = records.split_rows(built, answers, val_start, test_start, args.teacher_mode,
                                                  source.name)
    description = SAMPLE_DESCRIPTION if source.name == "sample" else (
        f"Weekly forecasting prompts built from {source.name} data; answers by {teacher.model} "
        f"({args.teacher_mode} mode).")
    save_dataset(rows_by_split, out, description)
    source_stats = getattr(source, "stats", lambda: {})()
    coverage = dict(news_coverage(rows_by_split), capped_days=source_stats.get("news_capped_days"),
                    news_horizon_warning=horizon_warning)
    unfinished = market_calendar.first_unfinished_session()
    manifest = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "arguments": {k: v for k, v in vars(args).items() if k not in ("check",)},
        "source": source.name, "teacher": teacher.model, "teacher_mode": args.teacher_mode,
        "tickers": symbols, "ticker_errors": errors,
        "cutoffs": {"val_start": val_start, "test_start": test_start},
        "counts": {k: len(v) for k, v in rows_by_split.items()},
        "prompts_built": len(built), "embargoed": embargoed,
        "teacher_failures": failures, "teacher_stats": teacher_stats,
        "teacher_request": getattr(teacher, "request_parameters", lambda: None)(),
        "teacher_cost_usd": teacher_cost(teacher_stats, args),
        "news_coverage": coverage,
        "labels": {"calendar": market_calendar.CALENDAR, "first_unfinished_session": _date(unfinished),
                   "rule": "a week is labelled only when every session before its end Sunday closed "
                           f"{market_calendar.PRICE_SETTLE_MINUTES}+ minutes before the build"},
        "source_stats": source_stats,
        "wall_time_s": round(time.time() - started, 2), "versions": {"python": sys.version.split()[0], **package_versions(DATA_PACKAGES)},
        "description": description,
    }
    (out / "build.json").write_text(json.dumps(manifest, indent=2))
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    for line in format_coverage(coverage, coverage["capped_days"]):   # None: the source has no call cap
        print(line)
    print(f"wrote {out}: {counts} rows ({len(failures)} teacher failures, {len(errors)} tickers skipped, "
          f"{embargoed} embargoed) in {manifest['wall_time_s']:.1f}s")
    return manifest


def warn_news_horizon(source, start, max_past_weeks):
    """Before any call: a live build whose news range starts more than a year back gets a warning (the
    free plan serves no older company news). Returns whether it warned."""
    if getattr(source, "name", "") != "finnhub":
        return False
    news_start = first_past_sunday(start, max_past_weeks)
    horizon = market_calendar.news_horizon()
    if news_start >= horizon:
        return False
    print(f"Warning: prompts need news from {_date(news_start)}, but Finnhub's free plan serves company news "
          f"for the last {market_calendar.NEWS_HORIZON_DAYS} days only (from {_date(horizon)}): weeks before that "
          "will show no news unless your plan covers them. Omit --start/--end for the last 52 completed "
          "weeks; build.json and --check report the coverage.", file=sys.stderr)
    return True


def teacher_cost(stats, args):
    if args.teacher == "offline":
        return 0.0
    table = PRICES_PER_M_TOKENS.get(args.teacher_model, (None, None))
    p_in = args.price_in if args.price_in is not None else table[0]
    p_out = args.price_out if args.price_out is not None else table[1]
    if p_in is None or p_out is None:
        return None
    return round((stats.get("prompt_tokens", 0) * p_in + stats.get("completion_tokens", 0) * p_out) / 1e6, 4)


def resolve_symbols(args):
    """The companies to build, in order, one share class each; DataPipelineError when none are named."""
    if args.tickers:
        symbols = [t.strip().upper() for t in args.tickers.split(",") if t.strip()]
    elif args.index:
        try:
            symbols = list(get_index(args.index).tickers)
        except ValueError as exc:        # get_index's message names the known indices
            raise DataPipelineError(f"--index: {exc}") from None
    elif args.source == "sample":
        symbols = list(SAMPLE_TICKERS)
    else:
        raise DataPipelineError("name the companies: --index dow30|dow30_2023|nasdaq100 or --tickers A,B,C")
    if not symbols:
        raise DataPipelineError(f"--tickers {args.tickers!r} names no ticker")
    if {"GOOG", "GOOGL"} <= set(symbols):   # one share class per company
        symbols.remove("GOOG")
    return list(dict.fromkeys(symbols))


def make_source(args):
    return open_source(args.source, args.prices_csv, args.cache_dir, args.finnhub_calls_per_minute,
                       args.finnhub_backoff_s, args.seed)


def make_teacher(args):
    if args.teacher == "openai":
        return OpenAITeacher(args.teacher_model, base_url=args.teacher_base_url,
                             temperature=args.teacher_temperature, max_tokens=args.teacher_max_tokens)
    return TEACHERS[args.teacher]()


def confirm_cost(requests, args, done_ids=()):
    """Print prompts, estimated tokens and cost before the first paid call; ask unless --yes."""
    if args.teacher == "offline":
        return
    todo = [r for r in requests if r["id"] not in done_ids]
    tokens_in, tokens_out, cost = estimate_cost(todo, args.teacher_model, args.teacher_max_tokens,
                                                args.price_in, args.price_out)
    cost_text = f"~${cost:.2f}" if cost is not None else "unknown (pass --price_in/--price_out, USD per 1M tokens)"
    print(f"teacher {args.teacher_model}: {len(todo)} prompts to ask ({len(requests) - len(todo)} already "
          f"answered), ~{tokens_in:,} prompt + ~{tokens_out:,} completion tokens, estimated cost {cost_text}")
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise DataPipelineError("not asking for confirmation without a terminal: pass --yes to proceed")
    if input("Proceed? [y/N] ").strip().lower() not in ("y", "yes"):
        raise DataPipelineError("cancelled; nothing was asked")


def check(path, hindsight=None):
    dd = load_forecast_dataset(path)
    summary = summarize(dd, path, hindsight=True if hindsight else None)
    print(format_summary(summary))
    rows_by_split = {}
    for name, split in dd.items():
        columns = [c for c in ("symbol", "n_news", "prompt") if c in split.column_names]
        rows_by_split[name] = split.select_columns(columns).to_list() if "symbol" in columns else []
    capped = None
    manifest = Path(path) / "build.json"
    if manifest.is_file():
        capped = (json.loads(manifest.read_text()).get("news_coverage") or {}).get("capped_days")
    if any(rows_by_split.values()):
        summary["news_coverage"] = news_coverage(rows_by_split)
        for line in format_coverage(summary["news_coverage"], capped):
            print(line)
    return summary


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    """Parse the flags and fill the defaults that depend on others; checking them is validate_args'."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", metavar="PATH", help="validate and summarize a dataset (folder, .jsonl, "
                   ".parquet or hub id) and exit; non-zero only on a structural error")
    p.add_argument("--hindsight", action="store_true", help="with --check: also check that each label "
                   "matches the answer's Prediction line (for hindsight datasets such as the public one)")
    p.add_argument("--source", default=SOURCE, choices=SOURCES,
                   help="sample: offline bokeh prices + generated news; finnhub: Finnhub news/profile/"
                        "financials + yfinance prices (needs FINNHUB_KEY)")
    p.add_argument("--prices_csv", help="with --source finnhub: your own daily prices (columns date, symbol, "
                   "close) instead of yfinance")
    p.add_argument("--cache_dir", help=f"raw response cache (default ${{{CACHE_DIR_ENV}}} or "
                   "~/.cache/fingpt-forecaster); a warm re-run makes zero network calls")
    p.add_argument("--finnhub_calls_per_minute", type=int, default=FINNHUB_CALLS_PER_MINUTE,
                   help="Finnhub rate limit, calls/min (free plan: 60; 55 leaves room for its early 429s)")
    p.add_argument("--finnhub_backoff_s", type=float, default=1.0,
                   help="base of the jittered exponential backoff on 429/5xx/timeouts, seconds")
    p.add_argument("--teacher", default=TEACHER, choices=list(TEACHERS),
                   help="who writes the answers: offline (extractive, no model) or openai (any "
                        "OpenAI-compatible server; key from OPENAI_API_KEY/OPENAI_KEY)")
    p.add_argument("--teacher_model", default=TEACHER_MODEL, help="model name on the teacher server")
    p.add_argument("--teacher_base_url", help="OpenAI-compatible base URL (default $OPENAI_BASE_URL or OpenAI)")
    p.add_argument("--teacher_temperature", type=float, default=TEACHER_TEMPERATURE, help="sampling temperature")
    p.add_argument("--teacher_max_tokens", type=int, default=TEACHER_MAX_TOKENS,
                   help="max completion tokens; a truncated answer is retried, never kept")
    p.add_argument("--price_in", type=float, help="teacher price, USD per 1M prompt tokens (overrides the table)")
    p.add_argument("--price_out", type=float, help="teacher price, USD per 1M completion tokens")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation of the estimated cost")
    p.add_argument("--teacher_mode", default=TEACHER_MODE, choices=P.TEACHER_MODES,
                   help="hindsight: teacher is told the realised label (upstream); blind: it is not")
    p.add_argument("--teacher_retries", type=int, default=TEACHER_RETRIES,
                   help="re-asks for an empty/off-format answer before recording a failure")
    p.add_argument("--teacher_concurrency", type=int, default=TEACHER_CONCURRENCY,
                   help="teacher requests in flight at once")
    p.add_argument("--index", help="ticker universe from indices.py (dow30, dow30_2023, nasdaq100)")
    p.add_argument("--tickers", help="comma-separated tickers; overrides --index")
    p.add_argument("--start", help=f"first prediction week start (YYYY-MM-DD); sample default {SAMPLE_START}; "
                   f"finnhub default: the last {LIVE_WEEKS} completed weeks inside the news year, the first "
                   "--max_past_weeks of them as past weeks only")
    p.add_argument("--end", help=f"last prediction week start (YYYY-MM-DD); sample default {SAMPLE_END}; "
                   "finnhub default: the start of the last completed week (its last session closed)")
    p.add_argument("--min_past_weeks", type=int, default=MIN_PAST_WEEKS, help="fewest past weeks per prompt")
    p.add_argument("--max_past_weeks", type=int, default=MAX_PAST_WEEKS, help="most past weeks per prompt")
    p.add_argument("--max_news_per_week", type=int, default=None,
                   help=f"news items sampled per past week (default {MAX_NEWS_PER_WEEK}; "
                        f"{SAMPLE_MAX_NEWS_PER_WEEK} for --source sample)")
    p.add_argument("--financials_lag_days", type=int, default=FINANCIALS_LAG_DAYS,
                   help="days after a Q1-Q3 quarter end before it may be shown (no filing date known)")
    p.add_argument("--financials_lag_days_q4", type=int, default=FINANCIALS_LAG_DAYS_Q4,
                   help="days after a fiscal Q4 (or unknown quarter) end before it may be shown")
    p.add_argument("--val_start", help="first prediction week of the validation split (YYYY-MM-DD); "
                   f"default: the last {int((VAL_FRACTION + TEST_FRACTION) * 100)}%% of weeks minus the test share")
    p.add_argument("--test_start", help="first prediction week of the test split (YYYY-MM-DD); default: "
                   f"the last {int(TEST_FRACTION * 100)}%% of weeks")
    p.add_argument("--seed", type=int, default=SEED, help="drives news sampling and past-week counts only")
    p.add_argument("--out", help="output dataset folder (DatasetDict + build.json + teacher journal); "
                   "live default data/fingpt-forecaster-{index}-{start}-{end}-{teacher_mode}")
    p.add_argument("--overwrite", action="store_true", help="rebuild a dataset already in --out")
    p.add_argument("--dry_run", action="store_true", help="build prompts only; no teacher calls, nothing written")
    args = p.parse_args(argv)
    if not args.check:
        if args.source == "sample":
            args.start, args.end = args.start or SAMPLE_START, args.end or SAMPLE_END
        elif not (args.start and args.end):
            try:
                default_start, default_end = market_calendar.default_range(args.max_past_weeks, weeks=LIVE_WEEKS)
                args.start, args.end = args.start or default_start, args.end or default_end
            except ValueError:
                pass                     # validate_args says why there is no default range
        if args.max_news_per_week is None:      # 0 stays 0, for validate_args to refuse
            args.max_news_per_week = SAMPLE_MAX_NEWS_PER_WEEK if args.source == "sample" else MAX_NEWS_PER_WEEK
        for flag in ("start", "end", "val_start", "test_start"):
            try:
                setattr(args, flag, getattr(args, flag) and _date(getattr(args, flag)))
            except ValueError:
                pass                     # kept as typed; validate_args reports it
        if not args.out and args.source != "sample" and args.start and args.end:
            args.out = (f"data/fingpt-forecaster-{(args.index or 'custom').lower()}-{args.start.replace('-', '')}-"
                        f"{args.end.replace('-', '')}-{args.teacher_mode}")
    return args


def _flag_problems(args):
    """Dates, ranges and numbers: [problem, ...]."""
    problems, dates_ok = [], True
    for flag in ("start", "end", "val_start", "test_start"):
        value = getattr(args, flag)
        try:
            value and _date(value)
        except ValueError:
            problems.append(f"--{flag} {value!r} is not a date (YYYY-MM-DD)")
            dates_ok = False
    if not (args.start and args.end):
        try:
            market_calendar.default_range(args.max_past_weeks, weeks=LIVE_WEEKS)
        except ValueError as exc:
            problems.append(f"no default --start/--end ({exc}); pass both")
    elif dates_ok and args.start > args.end:
        problems.append(f"--start {args.start} is after --end {args.end}")
    if dates_ok and args.val_start and args.test_start and not args.val_start < args.test_start:
        problems.append(f"--val_start {args.val_start} must be before --test_start {args.test_start}")
    bounds = {"min_past_weeks": (1, None), "max_past_weeks": (1, None),
              "max_news_per_week": (1, P.MAX_NEWS_PER_WEEK), "financials_lag_days": (0, None),
              "financials_lag_days_q4": (0, None), "finnhub_calls_per_minute": (1, None),
              "finnhub_backoff_s": (0, None), "teacher_temperature": (0, 2), "teacher_max_tokens": (1, None),
              "teacher_retries": (0, None), "teacher_concurrency": (1, None), "price_in": (0, None),
              "price_out": (0, None)}
    for flag, (low, high) in bounds.items():
        value = getattr(args, flag)
        if value is not None and (value < low or high is not None and value > high):
            problems.append(f"--{flag} {value} must be " + (f"{low}..{high}" if high is not None else f">= {low}"))
    if args.min_past_weeks > args.max_past_weeks:
        problems.append(f"--min_past_weeks {args.min_past_weeks} is above --max_past_weeks {args.max_past_weeks}")
    try:
        market_calendar.first_unfinished_session()     # which weeks are finished: every build asks
    except ValueError as exc:
        problems.append(f"the exchange calendar cannot tell which weeks are finished ({exc}): upgrade it")
    return problems, dates_ok


def _sample_problems(args, symbols, dates_ok):
    """The offline sample's four tickers and its date range: [problem, ...]."""
    problems = []
    if importlib.util.find_spec("bokeh_sampledata") is None:
        problems.append("--source sample needs `pip install --no-deps bokeh-sampledata` (make setup does this)")
    unknown = [s for s in symbols if s not in SAMPLE_TICKERS]
    if unknown:
        problems.append(f"--tickers {','.join(unknown)}: not in the offline sample (it has "
                        f"{', '.join(SAMPLE_TICKERS)}); use --source finnhub for other companies")
    if dates_ok and args.start and args.end:
        first = pd.Timestamp(SAMPLE_FIRST_DATE) + pd.offsets.Week(weekday=6)      # the first Sunday with a price
        earliest = _date(first + pd.Timedelta(weeks=args.max_past_weeks))       # room for the past weeks
        latest = _date(pd.Timestamp(SAMPLE_LAST_DATE) - pd.offsets.Week(weekday=6))   # its week ends past the data
        if args.start < earliest or args.end > latest:
            problems.append(f"--start {args.start} --end {args.end} is outside the offline sample: its prices run "
                            f"{SAMPLE_FIRST_DATE} .. {SAMPLE_LAST_DATE}, so prediction weeks can start {earliest} "
                            f".. {latest} (with --max_past_weeks {args.max_past_weeks})")
    return problems + (["--prices_csv works with --source finnhub only"] if args.prices_csv else [])


def _prices_csv_problems(path):    # the header only: reading the prices is the build's job
    if not Path(path).is_file():
        return [f"--prices_csv {path}: no such file"]
    with open(path, newline="") as f:
        header = {c.strip().lower() for c in next(csv.reader(f), [])}
    missing = [c for c in PRICES_CSV_COLUMNS if c not in header]
    return [f"--prices_csv {path}: missing column(s) {', '.join(missing)} (need {', '.join(PRICES_CSV_COLUMNS)})"
            ] if missing else []


def validate_args(args):
    """Check every flag before any source or teacher call and report all problems in one DataPipelineError.
    With --check only the path matters, and load_forecast_dataset names what is wrong with it."""
    if args.check:
        return
    problems, dates_ok = _flag_problems(args)
    try:
        symbols = resolve_symbols(args)
    except DataPipelineError as exc:
        problems.append(str(exc))
        symbols = []
    misspelt = [s for s in symbols if not TICKER_SPELLING.match(s)]
    if misspelt:
        problems.append(f"--tickers: {', '.join(map(repr, misspelt))} is not a ticker (letters, digits, '.' or "
                        "'-'; separate tickers with commas)")
    if args.source == "sample":
        problems += _sample_problems(args, [s for s in symbols if s not in misspelt], dates_ok)
    else:
        if not os.environ.get(FINNHUB_KEY_ENV):
            problems.append(f"--source finnhub needs an API key: set {FINNHUB_KEY_ENV} in the environment or in "
                            ".env (a free key is enough)")
        if args.prices_csv:
            problems += _prices_csv_problems(args.prices_csv)
    if args.teacher == "openai" and not openai_api_key():
        problems.append("--teacher openai needs a key: set OPENAI_API_KEY (or OPENAI_KEY) in the environment "
                        "or .env; local servers accept any non-empty value")
    if not args.out:
        if args.source == "sample":
            problems.append("--out is required (or use --check PATH)")
    elif Path(args.out).exists() and not Path(args.out).is_dir():
        problems.append(f"--out {args.out} is a file; name a folder")
    elif (Path(args.out) / "dataset_dict.json").exists() and not args.overwrite:
        problems.append(f"{args.out} already holds a dataset; pass --overwrite to rebuild it (the teacher "
                        "journal in it is kept and reused)")
    if problems:
        raise DataPipelineError(problems[0] if len(problems) == 1 else f"{len(problems)} problems with the "
                                "arguments:\n" + "\n".join(f"  - {p}" for p in problems))


@cli
def main(argv=None):
    args = parse_args(argv)
    load_dotenv(find_dotenv(usecwd=True))     # FINNHUB_KEY, OPENAI_API_KEY from ./.env; the environment wins
    validate_args(args)
    if args.check:
        check(args.check, args.hindsight)
    else:
        build(args, make_source(args), make_teacher(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
