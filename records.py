"""Leak-free weekly prompt records: the one place that decides what a prompt may show.

data_pipeline.py builds a dataset from these records and inference.py's live forecast builds one record
the same way, so a live prompt and a training prompt follow the same rules:

  * weekly windows run Sunday to Sunday; the price at each Sunday is the last close on or before it;
  * the prompt's prices end at the last close on or before the prediction week's start Sunday;
  * news comes from past weeks only (dated before the prediction week);
  * a quarter's financials are shown only once filed: filing date when the source gives one, else
    period end + 45 days (Q1-Q3) or + 90 days (fiscal Q4, whose 10-K comes later);
  * a week is labelled only when every session before its end Sunday has a final close (exchange
    calendar, market_calendar.py): the week in progress never gets a label;
  * splits use global date cutoffs with an embargo: no train label uses prices from the validation
    period, none of validation from the test period.

A record is a plain dict (symbol, curday, period, profile, weeks with news, financials, label) plus the
provenance dates the leak tests check; `to_row` turns it into a dataset row.
"""
import random

import pandas as pd
from tqdm import tqdm

from errors import ForecasterError
import market_calendar
import prompt as P
from dataset_io import example_id
from sources import SourceFatalError

# ---------------------------------------------------------------------------------------------
# Record rules (data_pipeline.py's flags override them per build)
# ---------------------------------------------------------------------------------------------
MIN_PAST_WEEKS, MAX_PAST_WEEKS = 1, 3     # upstream samples 1..3 past weeks per prompt
MAX_NEWS_PER_WEEK = P.MAX_NEWS_PER_WEEK   # upstream's 5, the most a prompt shows per week
FINANCIALS_LAG_DAYS = 45           # 10-Q filing deadline for large filers is 40 days after quarter end
FINANCIALS_LAG_DAYS_Q4 = 90        # 10-K comes later (60-90 days)
VAL_FRACTION, TEST_FRACTION = 0.15, 0.15   # of prediction weeks, when no cutoff dates are given
SEED = 0                           # drives news sampling and past-week counts only
PROMO_PREFIXES = ("Looking for stock market analysis and research with proves results?",)  # upstream filter


class RecordError(ForecasterError, ValueError):
    """No record can be built from what was asked (too few weeks, no prices): one `Error:` line."""


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
    if unfinished_from is not None:   # a Sunday before it reads only closes before it: later bars are never seen
        sundays = sundays[sundays < pd.Timestamp(unfinished_from)]
    points = []
    for s in sundays:
        known = closes.loc[:s]
        if known.empty:   # only leading Sundays (before the first price: a later listing), so points stay weekly
            continue
        points.append((s, known.index[-1], float(known.iloc[-1])))
    weeks = []
    for (s0, d0, p0), (s1, d1, p1) in zip(points, points[1:]):
        if d0 == d1:                  # no close inside the week: a gap in the price history, nothing to label
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
        raise RecordError(f"only {len(weeks)} prediction week(s): need at least 3 for train/validation/test; "
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
        raise RecordError(f"{symbol}: no prices before {_date(curday)}")
    weeks = weekly_windows(closes, first_sunday, curday + pd.Timedelta(days=7),
                           market_calendar.first_unfinished_session())
    past = [w for w in weeks if w["end"] <= _date(curday)][-n_weeks:]
    if not past:
        raise RecordError(f"{symbol}: no complete week of prices before {_date(curday)}")
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
    if not 1 <= min_past_weeks <= max_past_weeks:
        raise RecordError(f"need 1 <= --min_past_weeks ({min_past_weeks}) <= --max_past_weeks ({max_past_weeks})")
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
# Rows and splits
# ---------------------------------------------------------------------------------------------
def record_id(record):
    return example_id(record["symbol"], record["period"])


def to_row(record, answer, mode, source_name):
    """The dataset row of an answered record: the public five columns, `id` and the provenance dates."""
    return {
        "prompt": inference_prompt(record), "answer": answer,
        "period": record["period"], "label": record["label"], "symbol": record["symbol"],
        "id": record_id(record), "weekly_return": record["weekly_return"],
        "prediction_start": record["prediction_start"], "prediction_end": record["prediction_end"],
        "price_asof": record["price_asof"], "news_first": record["news_first"],
        "news_last": record["news_last"], "financials_period": record["financials_period"],
        "financials_available": record["financials_available"], "n_past_weeks": len(record["weeks"]),
        "n_news": sum(len(w["news"]) for w in record["weeks"]), "teacher_mode": mode, "source": source_name,
    }



def split_rows(records, answers, val_start, test_start, mode, source_name):
    """Rows of the answered records by split (global cutoffs, embargo): ({split: rows}, embargoed count).
    Records the teacher did not answer are left out; empty splits are dropped."""
    rows_by_split, embargoed = {"train": [], "validation": [], "test": []}, 0
    for record in records:
        rid = record_id(record)
        if rid not in answers:
            continue
        split = assign_split(record["prediction_start"], record["prediction_end"], val_start, test_start)
        if split is None:
            embargoed += 1
            continue
        rows_by_split[split].append(to_row(record, answers[rid], mode, source_name))
    return {k: v for k, v in rows_by_split.items() if v}, embargoed
