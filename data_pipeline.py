"""Build a weekly news + financials forecasting dataset, or check one.

    python data_pipeline.py --source sample --teacher offline --out data/sample-demo
    python data_pipeline.py --check data/sample-demo

Stages: source (prices, profile, news, financials) -> Sunday-to-Sunday weekly windows -> leak-free
prompt records -> teacher answers (journaled, resumable) -> train / validation / test by global date
cutoffs -> a DatasetDict folder + build.json manifest. The same code path serves every source; only the
source and the teacher differ.

Leak rules (checked by tests on each record's provenance dates, not on rendered text):
  * the prompt's prices end at the last close on or before the prediction week's start Sunday;
  * news comes from past weeks only (dated before the prediction week);
  * a quarter's financials are shown only once filed: filing date when the source gives one, else
    period end + 45 days (Q1-Q3) or + 90 days (fiscal Q4, whose 10-K comes later);
  * a week is labelled only when every session before its end Sunday has a final close (exchange
    calendar, market_calendar.py): the week in progress never gets a label.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from tqdm import tqdm

import market_calendar
import prompt as P
from dataset_io import DatasetError, format_summary, load_forecast_dataset, summarize

# ---------------------------------------------------------------------------------------------
# Defaults (CLI flags mirror these one to one)
# ---------------------------------------------------------------------------------------------
SOURCE = "sample"
TEACHER = "offline"
TEACHER_MODE = "hindsight"         # upstream's mode; 'blind' never tells the teacher the outcome
SAMPLE_START, SAMPLE_END = "2011-09-04", "2013-02-17"   # ~76 prediction weeks inside bokeh's range
MIN_PAST_WEEKS, MAX_PAST_WEEKS = 1, 3     # upstream samples 1..3 past weeks per prompt
MAX_NEWS_PER_WEEK = 5              # upstream; the sample source uses 3 to keep demo prompts short
SAMPLE_MAX_NEWS_PER_WEEK = 3
FINANCIALS_LAG_DAYS = 45           # 10-Q filing deadline for large filers is 40 days after quarter end
FINANCIALS_LAG_DAYS_Q4 = 90        # 10-K comes later (60-90 days)
VAL_FRACTION, TEST_FRACTION = 0.15, 0.15   # of prediction weeks, when no cutoff dates are given
TEACHER_MODEL = "gpt-4o-mini"
TEACHER_TEMPERATURE = 0.7
TEACHER_MAX_TOKENS = 1024          # public answers are 1.3k-3.1k characters (< 800 tokens)
FINNHUB_CALLS_PER_MINUTE = 55      # free plan: 60, but Finnhub has answered 429 below that
LIVE_WEEKS = market_calendar.DEFAULT_WEEKS   # live default range: the last 52 completed weeks
CACHE_ENV = "FORECASTER_CACHE"
TEACHER_RETRIES = 2
TEACHER_CONCURRENCY = 8
SEED = 0
PROMO_PREFIXES = ("Looking for stock market analysis and research with proves results?",)  # upstream filter


def _date(x):
    return pd.Timestamp(x).strftime("%Y-%m-%d")


# ---------------------------------------------------------------------------------------------
# Pure transforms: weekly windows, news selection, financials availability
# ---------------------------------------------------------------------------------------------
def weekly_windows(closes, first_sunday, last_sunday, unfinished_from=None):
    """Sunday-to-Sunday windows: price at each Sunday = last close on or before it.

    `unfinished_from` = the first session whose close is not final yet (market_calendar): its bar and
    later ones (a live quote during market hours) are ignored, and a Sunday counts only when every
    session before it is final, so the week in progress never gets a price, let alone a label.

    Returns [{start, end, start_price, end_price, start_price_date, end_price_date, weekly_return}].
    """
    closes = closes.dropna().sort_index()
    sundays = pd.date_range(pd.Timestamp(first_sunday), pd.Timestamp(last_sunday), freq="W-SUN")
    if unfinished_from is not None:
        unfinished_from = pd.Timestamp(unfinished_from)
        closes = closes.loc[closes.index < unfinished_from]
        sundays = sundays[sundays < unfinished_from]
    points = []
    for s in sundays:
        known = closes.loc[:s]
        if known.empty:
            continue
        points.append((s, known.index[-1], float(known.iloc[-1])))
    weeks = []
    for (s0, d0, p0), (s1, d1, p1) in zip(points, points[1:]):
        if (s1 - s0).days != 7 or d0 == d1 and (s1 - d1).days > 7:   # gap in the price history
            continue
        weeks.append({"start": _date(s0), "end": _date(s1), "start_price": p0, "end_price": p1,
                      "start_price_date": _date(d0), "end_price_date": _date(d1),
                      "weekly_return": P.weekly_return(p0, p1)})
    return weeks


def select_news(items, week_start, week_end, max_items, rng):
    """News of one past week: dated week_start <= date < week_end, promo text filtered, duplicate
    headlines dropped, then at most `max_items` sampled with `rng` and kept in date order."""
    seen, kept = set(), []
    for n in sorted(items, key=lambda n: n["date"]):
        if not (week_start <= n["date"][:10] < week_end):
            continue
        if not n.get("headline") or (n.get("summary") or "").startswith(PROMO_PREFIXES):
            continue
        key = " ".join(n["headline"].lower().split())
        if key in seen:
            continue
        seen.add(key)
        kept.append({"date": n["date"][:10], "headline": n["headline"].strip(),
                     "summary": (n.get("summary") or "").strip()})
    if len(kept) > max_items:
        kept = [kept[i] for i in sorted(rng.sample(range(len(kept)), max_items))]
    return kept


def financials_available(item, lag_days=FINANCIALS_LAG_DAYS, lag_days_q4=FINANCIALS_LAG_DAYS_Q4):
    """First date a quarter may be shown: its filing date, else period end + lag (Q4: the longer lag;
    unknown fiscal quarter: the longer lag too, to stay on the safe side)."""
    if item.get("filed"):
        return _date(item["filed"])
    lag = lag_days if item.get("fiscal_quarter") in (1, 2, 3) else lag_days_q4
    return _date(pd.Timestamp(item["period"]) + pd.Timedelta(days=lag))


def latest_financials(items, before, lag_days=FINANCIALS_LAG_DAYS, lag_days_q4=FINANCIALS_LAG_DAYS_Q4):
    """The most recent quarter available strictly before `before`, or None."""
    usable = [(financials_available(i, lag_days, lag_days_q4), i) for i in items]
    usable = [(avail, i) for avail, i in usable if avail < before]
    if not usable:
        return None
    avail, item = max(usable, key=lambda x: x[1]["period"])
    return {"period": _date(item["period"]), "available": avail, "metrics": item["metrics"]}


def assign_split(prediction_start, prediction_end, val_start, test_start):
    """Global date cutoffs, with an embargo so no train label uses prices from the validation period
    (and none of validation from the test period). Returns a split name or None (embargoed)."""
    if prediction_start >= test_start:
        return "test"
    if prediction_start >= val_start:
        return "validation" if prediction_end <= test_start else None
    return "train" if prediction_end <= val_start else None


def default_cutoffs(prediction_starts, val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION):
    weeks = sorted(set(prediction_starts))
    if len(weeks) < 3:
        raise ValueError(f"only {len(weeks)} prediction week(s): need at least 3 for train/validation/test; "
                         "widen --start/--end")
    test_i = min(len(weeks) - 1, max(2, round(len(weeks) * (1 - test_fraction))))
    val_i = min(test_i - 1, max(1, round(len(weeks) * (1 - test_fraction - val_fraction))))
    return weeks[val_i], weeks[test_i]


# ---------------------------------------------------------------------------------------------
# Records: one per (symbol, prediction week)
# ---------------------------------------------------------------------------------------------
def assemble_record(symbol, profile, past_windows, news, quarters, target, max_news_per_week, rng,
                    lag_days=FINANCIALS_LAG_DAYS, lag_days_q4=FINANCIALS_LAG_DAYS_Q4):
    """One prompt record: the past windows with their sampled news, the financials available before
    the target week, and provenance dates. `target` = {start, end, start_price, start_price_date,
    weekly_return (None when the week has not happened yet)}."""
    past = []
    for w in past_windows:
        week = {k: w[k] for k in ("start", "end", "start_price", "end_price")}
        week["news"] = select_news(news, w["start"], w["end"], max_news_per_week, rng)
        past.append(week)
    curday = target["start"]
    fin = latest_financials(quarters, curday, lag_days, lag_days_q4)
    shown = [n["date"] for w in past for n in w["news"]]
    prof = dict(profile)
    if prof.get("shares_outstanding"):   # point-in-time market cap = price x shares (millions)
        prof["market_cap"] = target["start_price"] * prof["shares_outstanding"]
    r = target.get("weekly_return")
    return {
        "symbol": symbol, "curday": curday, "period": f"{target['start']} to {target['end']}",
        "profile": prof, "weeks": past, "financials": fin,
        "as_of": target["start_price_date"] if prof.get("market_cap") else None,
        "weekly_return": r, "label": P.label_from_return(r) if r is not None else None,
        # provenance dates, checked by the leak tests
        "prediction_start": target["start"], "prediction_end": target["end"],
        "price_asof": target["start_price_date"],
        "news_first": min(shown) if shown else "", "news_last": max(shown) if shown else "",
        "financials_period": fin["period"] if fin else "",
        "financials_available": fin["available"] if fin else "",
    }


def live_record(source, symbol, date, n_weeks=3, use_basics=False, max_news_per_week=MAX_NEWS_PER_WEEK,
                seed=SEED, lag_days=FINANCIALS_LAG_DAYS, lag_days_q4=FINANCIALS_LAG_DAYS_Q4):
    """A prompt record for forecasting the week after `date` (the live demo): the prediction week starts
    on the first Sunday on or after `date`, and the prompt holds the `n_weeks` weeks before it. The
    realised label is filled in when the source already has prices for that week (historical dates)."""
    day = pd.Timestamp(date)
    curday = day if day.day_of_week == 6 else day + pd.offsets.Week(weekday=6)
    first_sunday = curday - pd.Timedelta(weeks=n_weeks)
    profile = source.profile(symbol)
    closes = source.prices(symbol, first_sunday - pd.Timedelta(days=10), curday + pd.Timedelta(days=7))
    if closes is None or closes.dropna().empty:
        raise KeyError(f"{symbol}: no prices before {_date(curday)}")
    weeks = weekly_windows(closes, first_sunday, curday + pd.Timedelta(days=7),
                           market_calendar.first_unfinished_session())
    past = [w for w in weeks if w["end"] <= _date(curday)][-n_weeks:]
    if not past:
        raise KeyError(f"{symbol}: no complete week of prices before {_date(curday)}")
    realised = next((w for w in weeks if w["start"] == _date(curday)), None)
    target = realised or {"start": _date(curday), "end": _date(curday + pd.Timedelta(days=7)),
                          "start_price": past[-1]["end_price"], "start_price_date": past[-1]["end_price_date"],
                          "weekly_return": None}
    news = source.news(symbol, past[0]["start"], _date(curday))
    quarters = source.financials(symbol) if use_basics else []
    rng = random.Random(f"{seed}|{symbol}|{_date(curday)}")
    return assemble_record(symbol, profile, past, news, quarters, target, max_news_per_week, rng,
                           lag_days, lag_days_q4)


def first_past_sunday(start, max_past_weeks):
    """The first Sunday whose week can be a past week of a prompt for a prediction week >= start: where
    price and news ranges begin."""
    first = pd.Timestamp(start) - pd.Timedelta(weeks=max_past_weeks)
    return first + pd.offsets.Week(weekday=6) if first.day_of_week != 6 else first


def news_coverage(rows_by_split):
    """Share of prompts with at least one news item: overall, per split and per ticker.

    >>> news_coverage({"train": [{"symbol": "A", "n_news": 2}, {"symbol": "B", "n_news": 0}],
    ...                "test": [{"symbol": "A", "n_news": 0}]})["per_ticker"]
    {'A': 0.5, 'B': 0.0}
    """
    def share(rows):
        return round(sum(1 for r in rows if _has_news(r)) / len(rows), 4) if rows else None
    every = [r for rows in rows_by_split.values() for r in rows]
    tickers = sorted({r["symbol"] for r in every})
    return {"prompts_with_news": share(every),
            "per_split": {split: share(rows) for split, rows in rows_by_split.items()},
            "per_ticker": {t: share([r for r in every if r["symbol"] == t]) for t in tickers}}


def _has_news(row):
    if row.get("n_news") is not None:
        return row["n_news"] > 0
    return "[Headline]:" in (row.get("prompt") or "")     # datasets without the provenance columns


def format_coverage(coverage, capped_days=None):
    """Lines for the console: coverage per split and per ticker, and the days whose news call was capped."""
    pct = lambda x: "n/a" if x is None else f"{x * 100:.1f}%"   # noqa: E731
    splits = " | ".join(f"{k} {pct(v)}" for k, v in coverage["per_split"].items())
    lines = [f"news coverage (prompts with >= 1 news item): all {pct(coverage['prompts_with_news'])} | {splits}"]
    per_ticker = coverage["per_ticker"]
    low = sorted(per_ticker, key=lambda t: (per_ticker[t], t))
    lines.append("  per ticker: " + ", ".join(f"{t} {pct(per_ticker[t])}" for t in low[:12])
                 + (f" (lowest 12 of {len(low)}; all in build.json)" if len(low) > 12 else ""))
    if capped_days is not None:
        capped = {s: d for s, d in capped_days.items() if d}
        lines.append("  news days capped (the day alone filled a response; its older items are missing): "
                     + ("none" if not capped else
                        "; ".join(f"{s} {len(d)} ({', '.join(d[:3])}{', ...' if len(d) > 3 else ''})"
                                  for s, d in sorted(capped.items()))))
    return lines


def inference_prompt(record):
    """The stored (Llama-2-wrapped) prompt of a record, with the neutral instruction."""
    user = P.render_prompt(record, P.neutral_instruction(record["symbol"], record["curday"], record["period"]))
    return P.wrap_public_prompt(P.SYSTEM_PROMPT, user)


def build_records(source, symbols, start, end, *, min_past_weeks=MIN_PAST_WEEKS,
                  max_past_weeks=MAX_PAST_WEEKS, max_news_per_week=MAX_NEWS_PER_WEEK,
                  lag_days=FINANCIALS_LAG_DAYS, lag_days_q4=FINANCIALS_LAG_DAYS_Q4, seed=SEED,
                  progress=True):
    """Prompt records for every symbol and prediction week with start Sunday in [start, end].

    Returns (records, errors): a symbol the source cannot serve is reported in `errors` and the other
    symbols are still built; a source error that no symbol can get past (a rejected key) is raised.
    Only finished weeks are labelled (weekly_windows' `unfinished_from`, from the exchange calendar)."""
    from sources import SourceFatalError
    if not 1 <= min_past_weeks <= max_past_weeks:
        raise ValueError(f"need 1 <= --min_past_weeks ({min_past_weeks}) <= --max_past_weeks ({max_past_weeks})")
    first_sunday = first_past_sunday(start, max_past_weeks)
    last_sunday = pd.Timestamp(end) + pd.offsets.Week(weekday=6)
    unfinished = market_calendar.first_unfinished_session()
    records, errors = [], {}
    for symbol in tqdm(symbols, desc="symbols", unit="sym", disable=not progress):
        try:
            profile = source.profile(symbol)      # first: it tells whether the symbol exists at all
            closes = source.prices(symbol, first_sunday - pd.Timedelta(days=10), last_sunday)
            if closes is None or closes.dropna().empty:
                raise KeyError(f"{symbol}: no prices between {_date(first_sunday)} and {_date(last_sunday)}")
            news = source.news(symbol, _date(first_sunday), _date(last_sunday))
            quarters = source.financials(symbol)
        except SourceFatalError:
            raise
        except Exception as exc:   # one ticker failing must not sink the others; reported in build.json
            errors[symbol] = exc.args[0] if isinstance(exc, KeyError) and exc.args else f"{type(exc).__name__}: {exc}"
            continue
        weeks = weekly_windows(closes, first_sunday, last_sunday, unfinished)
        for i, target in enumerate(weeks):
            if not (start <= target["start"] <= end) or i < min_past_weeks:
                continue
            rng = random.Random(f"{seed}|{symbol}|{target['start']}")
            n_past = rng.randint(min_past_weeks, min(max_past_weeks, i))
            records.append(assemble_record(symbol, profile, weeks[i - n_past:i], news, quarters, target,
                                           max_news_per_week, rng, lag_days, lag_days_q4))
    return records, errors


# ---------------------------------------------------------------------------------------------
# Teacher labelling: journaled, resumable, validated
# ---------------------------------------------------------------------------------------------
def teacher_request(record, mode):
    instruction = P.teacher_instruction(record["symbol"], record["curday"], record["period"], mode,
                                        record["label"])
    user = P.render_prompt(record, instruction)
    rid = f"{record['symbol']}|{record['period']}"
    key = hashlib.sha256(f"{mode}\n{P.SYSTEM_PROMPT}\n{user}".encode()).hexdigest()[:16]
    return {"id": rid, "key": key, "system": P.SYSTEM_PROMPT, "user": user, "record": record,
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

    from teachers import TeacherFatalError
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
                raise ValueError(f"{exc} ({len(answers)} answers kept in {journal_path})") from None
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
# Rows, splits, saving
# ---------------------------------------------------------------------------------------------
def to_row(record, answer, mode, source_name):
    return {
        "prompt": inference_prompt(record), "answer": answer,
        "period": record["period"], "label": record["label"], "symbol": record["symbol"],
        "id": f"{record['symbol']}|{record['period']}", "weekly_return": record["weekly_return"],
        "prediction_start": record["prediction_start"], "prediction_end": record["prediction_end"],
        "price_asof": record["price_asof"], "news_first": record["news_first"],
        "news_last": record["news_last"], "financials_period": record["financials_period"],
        "financials_available": record["financials_available"], "n_past_weeks": len(record["weeks"]),
        "n_news": sum(len(w["news"]) for w in record["weeks"]), "teacher_mode": mode, "source": source_name,
    }


def _versions():
    import importlib.metadata as md
    out = {"python": sys.version.split()[0]}
    for pkg in ("datasets", "pandas", "openai", "finnhub-python", "yfinance"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


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


def build(args, source, teacher):
    started = time.time()
    out = Path(args.out)
    if (out / "dataset_dict.json").exists() and not args.overwrite:
        raise ValueError(f"{out} already holds a dataset; pass --overwrite to rebuild it (the teacher "
                         "journal in it is kept and reused)")
    out.mkdir(parents=True, exist_ok=True)
    symbols = resolve_symbols(args)
    horizon_warning = warn_news_horizon(source, args.start, args.max_past_weeks)
    records, errors = build_records(
        source, symbols, args.start, args.end, min_past_weeks=args.min_past_weeks,
        max_past_weeks=args.max_past_weeks, max_news_per_week=args.max_news_per_week,
        lag_days=args.financials_lag_days, lag_days_q4=args.financials_lag_days_q4, seed=args.seed)
    for sym, err in errors.items():
        print(f"Error: {sym}: skipped ({err})", file=sys.stderr)
    if not records:
        raise ValueError("no prompts could be built: " + ("; ".join(f"{k}: {v}" for k, v in errors.items())
                                                          or "no weeks in --start/--end"))
    val_start, test_start = args.val_start, args.test_start
    if not (val_start and test_start):
        auto_val, auto_test = default_cutoffs([r["prediction_start"] for r in records])
        val_start, test_start = val_start or auto_val, test_start or auto_test
    if not val_start < test_start:
        raise ValueError(f"--val_start {val_start} must be before --test_start {test_start}")
    requests = [teacher_request(r, args.teacher_mode) for r in records]
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
        raise ValueError(f"the teacher answered none of the {len(requests)} prompts, so no dataset was written; "
                         f"first failure: {first[:300]}")
    rows_by_split, embargoed = {"train": [], "validation": [], "test": []}, 0
    for record in records:
        rid = f"{record['symbol']}|{record['period']}"
        if rid not in answers:
            continue
        split = assign_split(record["prediction_start"], record["prediction_end"], val_start, test_start)
        if split is None:
            embargoed += 1
            continue
        rows_by_split[split].append(to_row(record, answers[rid], args.teacher_mode, source.name))
    rows_by_split = {k: v for k, v in rows_by_split.items() if v}
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
        "prompts_built": len(records), "embargoed": embargoed,
        "teacher_failures": failures, "teacher_stats": teacher_stats,
        "teacher_request": getattr(teacher, "request_parameters", lambda: None)(),
        "teacher_cost_usd": teacher_cost(teacher_stats, args),
        "news_coverage": coverage,
        "labels": {"calendar": market_calendar.CALENDAR, "first_unfinished_session": _date(unfinished),
                   "rule": "a week is labelled only when every session before its end Sunday closed "
                           f"{market_calendar.PRICE_SETTLE_MINUTES}+ minutes before the build"},
        "source_stats": source_stats,
        "wall_time_s": round(time.time() - started, 2), "versions": _versions(),
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
    from teachers import PRICES_PER_M_TOKENS
    table = PRICES_PER_M_TOKENS.get(args.teacher_model, (None, None))
    p_in = args.price_in if args.price_in is not None else table[0]
    p_out = args.price_out if args.price_out is not None else table[1]
    if p_in is None or p_out is None:
        return None
    return round((stats.get("prompt_tokens", 0) * p_in + stats.get("completion_tokens", 0) * p_out) / 1e6, 4)


def resolve_symbols(args):
    from indices import get_index
    if args.tickers:
        symbols = [t.strip().upper() for t in args.tickers.split(",") if t.strip()]
    elif args.index:
        symbols = list(get_index(args.index).tickers)
    elif args.source == "sample":
        from sources import SAMPLE_TICKERS
        symbols = list(SAMPLE_TICKERS)
    else:
        raise ValueError("name the companies: --index dow30|dow30_2023|nasdaq100 or --tickers A,B,C")
    if {"GOOG", "GOOGL"} <= set(symbols):   # one share class per company
        symbols.remove("GOOG")
    return list(dict.fromkeys(symbols))


def open_source(name, prices_csv=None, cache_dir=None, calls_per_minute=FINNHUB_CALLS_PER_MINUTE,
                backoff_s=1.0, seed=SEED):
    """A source by name: 'sample' (offline) or 'finnhub' (Finnhub + yfinance or a prices CSV)."""
    if name == "sample":
        from sources import SampleSource
        return SampleSource(seed=seed)
    if name != "finnhub":
        raise ValueError(f"unknown source {name!r}; choose sample or finnhub")
    from sources import CsvPrices, FinnhubData, LiveSource, YFinancePrices
    finnhub_data = FinnhubData(os.environ.get("FINNHUB_KEY"), cache_dir=cache_dir,
                               calls_per_minute=calls_per_minute, backoff_s=backoff_s)
    prices = CsvPrices(prices_csv) if prices_csv else YFinancePrices(cache_dir=cache_dir)
    return LiveSource(finnhub_data, prices)


def make_source(args):
    return open_source(args.source, args.prices_csv, args.cache_dir, args.finnhub_calls_per_minute,
                       args.finnhub_backoff_s, args.seed)


def make_teacher(args):
    from teachers import TEACHERS, OpenAITeacher
    if args.teacher not in TEACHERS:
        raise ValueError(f"unknown --teacher {args.teacher!r}; choose one of {', '.join(TEACHERS)}")
    if args.teacher == "openai":
        return OpenAITeacher(args.teacher_model, base_url=args.teacher_base_url,
                             temperature=args.teacher_temperature, max_tokens=args.teacher_max_tokens)
    return TEACHERS[args.teacher]()


def confirm_cost(requests, args, done_ids=()):
    """Print prompts, estimated tokens and cost before the first paid call; ask unless --yes."""
    if args.teacher == "offline":
        return
    from teachers import estimate_cost
    todo = [r for r in requests if r["id"] not in done_ids]
    tokens_in, tokens_out, cost = estimate_cost(todo, args.teacher_model, args.teacher_max_tokens,
                                                args.price_in, args.price_out)
    cost_text = f"~${cost:.2f}" if cost is not None else "unknown (pass --price_in/--price_out, USD per 1M tokens)"
    print(f"teacher {args.teacher_model}: {len(todo)} prompts to ask ({len(requests) - len(todo)} already "
          f"answered), ~{tokens_in:,} prompt + ~{tokens_out:,} completion tokens, estimated cost {cost_text}")
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise ValueError("not asking for confirmation without a terminal: pass --yes to proceed")
    if input("Proceed? [y/N] ").strip().lower() not in ("y", "yes"):
        raise ValueError("cancelled; nothing was asked")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", metavar="PATH", help="validate and summarize a dataset (folder, .jsonl, "
                   ".parquet or hub id) and exit; non-zero only on a structural error")
    p.add_argument("--hindsight", action="store_true", help="with --check: also check that each label "
                   "matches the answer's Prediction line (for hindsight datasets such as the public one)")
    p.add_argument("--source", default=SOURCE, choices=["sample", "finnhub"],
                   help="sample: offline bokeh prices + generated news; finnhub: Finnhub news/profile/"
                        "financials + yfinance prices (needs FINNHUB_KEY)")
    p.add_argument("--prices_csv", help="with --source finnhub: your own daily prices (columns date, symbol, "
                   "close) instead of yfinance")
    p.add_argument("--cache_dir", help=f"raw response cache (default ${{{CACHE_ENV}}} or "
                   "~/.cache/fingpt-forecaster); a warm re-run makes zero network calls")
    p.add_argument("--finnhub_calls_per_minute", type=int, default=FINNHUB_CALLS_PER_MINUTE,
                   help="Finnhub rate limit, calls/min (free plan: 60; 55 leaves room for its early 429s)")
    p.add_argument("--finnhub_backoff_s", type=float, default=1.0,
                   help="base of the jittered exponential backoff on 429/5xx/timeouts, seconds")
    p.add_argument("--teacher", default=TEACHER, choices=["offline", "openai"],
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
            args.start = args.start or SAMPLE_START
            args.end = args.end or SAMPLE_END
            if args.max_news_per_week is None:
                args.max_news_per_week = SAMPLE_MAX_NEWS_PER_WEEK
        elif not (args.start and args.end):
            try:
                default_start, default_end = market_calendar.default_range(args.max_past_weeks, weeks=LIVE_WEEKS)
            except ValueError as exc:
                p.error(str(exc))
            args.start, args.end = args.start or default_start, args.end or default_end
        args.max_news_per_week = args.max_news_per_week or MAX_NEWS_PER_WEEK
        if not 1 <= args.max_news_per_week <= P.MAX_NEWS_PER_WEEK:
            p.error(f"--max_news_per_week must be 1..{P.MAX_NEWS_PER_WEEK}")
        for flag in ("start", "end", "val_start", "test_start"):
            value = getattr(args, flag)
            if value:
                try:
                    setattr(args, flag, _date(value))
                except ValueError:
                    p.error(f"--{flag} {value!r} is not a date (YYYY-MM-DD)")
        if args.start > args.end:
            p.error(f"--start {args.start} is after --end {args.end}")
        if not args.out:
            if args.source == "sample":
                p.error("--out is required (or use --check PATH)")
            name = (args.index or "custom").lower()
            args.out = (f"data/fingpt-forecaster-{name}-{args.start.replace('-', '')}-"
                        f"{args.end.replace('-', '')}-{args.teacher_mode}")
    return args


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


def main(argv=None):
    args = parse_args(argv)
    try:
        from dotenv import load_dotenv
        load_dotenv()      # FINNHUB_KEY, OPENAI_API_KEY from .env; the environment wins
        if args.check:
            check(args.check, args.hindsight)
            return 0
        build(args, make_source(args), make_teacher(args))
        return 0
    except (DatasetError, ValueError, KeyError, RuntimeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"Error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
