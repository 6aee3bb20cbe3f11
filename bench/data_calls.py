"""Benchmark: API calls and simulated wall time of the data pipeline, ours vs upstream's pattern.

Against the fake Finnhub server on 127.0.0.1 (made-up data; like the real one it returns only the
newest 250 items per company-news call), with the rate limiter's clock simulated so the 55 calls/min
limit costs no real time:
  * 30 tickers x 52 weeks at 2 items per weekday: ours (one news call per ticker range, the older part
    fetched again where a response is capped; profile, metric and filing dates once per ticker) vs the
    per-week baseline (upstream: one news call per ticker-week plus profile and metric per ticker),
    cold cache and warm cache;
  * a busy ticker (80 and 150 items per weekday, a mega-cap's news flow): news calls, the share of the
    served items each pattern retrieves, weeks with any news and weekdays retrieved complete;
  * teacher labelling wall time at concurrency 1 vs 8 against a fake OpenAI-compatible server that
    sleeps 200 ms per answer (a subset of prompts, real time).

    python bench/data_calls.py [--tickers 30] [--weeks 52] [--busy 80,150] [--teacher_prompts 48]
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import data_pipeline as dp  # noqa: E402
import records  # noqa: E402
from fake_servers import FakeFinnhub, FakeOpenAI  # noqa: E402
from sources import FINNHUB_CALLS_PER_MINUTE, FinnhubData, SimulatedClock  # noqa: E402
from teachers import OpenAITeacher  # noqa: E402

KEY = "bench-key"
NOW = pd.Timestamp("2024-05-06 12:00", tz="UTC")      # the fake server's "today" too: every range is final and inside the news year


def finnhub(url, cache):
    clock = SimulatedClock()
    data = FinnhubData(KEY, cache_dir=cache, base_url=url, clock=clock, sleep=clock.sleep, now=lambda: NOW)
    return data, clock


def ours(url, cache, symbols, start, end):
    data, clock = finnhub(url, cache)
    for s in symbols:
        data.profile(s)
        data.news(s, start, end)
        data.financials(s)
    return sum(data.api_calls.values()), clock.now


def per_week_baseline(url, cache, symbols, start, end):
    """Upstream's pattern: news fetched one week at a time (no cache across runs)."""
    data, clock = finnhub(url, cache)
    sundays = pd.date_range(start, end, freq="W-SUN")
    for s in symbols:
        data.profile(s)
        data._call("metric", {"symbol": s, "metric": "all"}, data.client.company_basic_financials)
        for a, b in zip(sundays, sundays[1:]):
            data._call("company-news", {"symbol": s, "_from": a.strftime("%Y-%m-%d"),
                                        "to": (b - pd.Timedelta(days=1)).strftime("%Y-%m-%d")},
                       data.client.company_news)
    return sum(data.api_calls.values()), clock.now


def busy_ticker(per_day, start, end):
    """(row label, figures) for one busy ticker over [start, end): ours vs one call per week."""
    symbol = "BUSY"
    weekdays = pd.bdate_range(start, pd.Timestamp(end) - pd.Timedelta(days=1))
    sundays = pd.date_range(start, end, freq="W-SUN")
    rows = {}
    with FakeFinnhub(symbols=[symbol], today=NOW.strftime("%Y-%m-%d")) as fin:
        fin.busy = {symbol: per_day}
        with tempfile.TemporaryDirectory() as cache:
            data, _ = finnhub(fin.url, cache)
            items = data.news(symbol, start, end)
            rows["ours"] = (data.api_calls["company-news"], items, len(data.capped_days.get(symbol, [])))
        with tempfile.TemporaryDirectory() as cache:
            data, _ = finnhub(fin.url, cache)
            got = []
            for a, b in zip(sundays, sundays[1:]):
                got += data._call("company-news", {"symbol": symbol, "_from": a.strftime("%Y-%m-%d"),
                                                   "to": (b - pd.Timedelta(days=1)).strftime("%Y-%m-%d")},
                                  data.client.company_news)
            days = [pd.Timestamp(n["datetime"], unit="s").strftime("%Y-%m-%d") for n in got]
            rows["per-week baseline"] = (data.api_calls["company-news"], [{"date": d} for d in days], None)
    served = per_day * len(weekdays)
    out = []
    for name, (calls, items, capped) in rows.items():
        per_day_got = pd.Series([n["date"] for n in items]).value_counts() if items else pd.Series(dtype=int)
        weeks_with = sum(any(a.strftime("%Y-%m-%d") <= d < b.strftime("%Y-%m-%d") for d in per_day_got.index)
                         for a, b in zip(sundays, sundays[1:]))
        complete = int((per_day_got >= per_day).sum())
        out.append(f"  {per_day:3d}/weekday, {name:17s}: {calls:4d} news calls, {len(items) / served * 100:5.1f}% "
                   f"of {served} items, weeks with news {weeks_with}/{len(sundays) - 1}, weekdays complete "
                   f"{complete}/{len(weekdays)}" + (f", capped days recorded {capped}" if capped is not None else ""))
    return out


def teacher_wall_time(url, requests, concurrency):
    teacher = OpenAITeacher("fake", base_url=url, api_key="x", max_retries=0, timeout_s=10)
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    answers, failures, _ = dp.label_with_teacher(requests, teacher, tmp / "j.jsonl", concurrency=concurrency,
                                                 progress=False)
    wall = time.perf_counter() - t0
    shutil.rmtree(tmp)
    assert not failures and len(answers) == len(requests)
    return wall


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tickers", type=int, default=30, help="number of (made-up) tickers")
    p.add_argument("--weeks", type=int, default=52, help="weeks of news per ticker")
    p.add_argument("--busy", default="80,150", help="items per weekday of the busy-ticker case, comma-separated")
    p.add_argument("--teacher_prompts", type=int, default=48, help="prompts labelled per concurrency level")
    args = p.parse_args()
    symbols = [f"T{i:02d}" for i in range(args.tickers)]
    start = pd.Timestamp("2023-05-07")
    end = start + pd.Timedelta(weeks=args.weeks)
    start_s, end_s = start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")
    with FakeFinnhub(symbols=symbols, news_per_day=2, news_cap=250, today=NOW.strftime("%Y-%m-%d")) as fin:
        with tempfile.TemporaryDirectory() as cache:
            cold_calls, cold_t = ours(fin.url, cache, symbols, start_s, end_s)
            warm_calls, warm_t = ours(fin.url, cache, symbols, start_s, end_s)
        with tempfile.TemporaryDirectory() as cache:
            base_calls, base_t = per_week_baseline(fin.url, cache, symbols, start_s, end_s)
    print(f"Finnhub, {args.tickers} tickers x {args.weeks} weeks, 2 items/weekday "
          f"(simulated {FINNHUB_CALLS_PER_MINUTE} calls/min limit):")
    print(f"  per-week baseline : {base_calls:5d} calls, {base_t / 60:6.1f} simulated min")
    print(f"  ours, cold cache  : {cold_calls:5d} calls, {cold_t / 60:6.1f} simulated min  "
          f"-> {base_calls / max(cold_calls, 1):.1f}x fewer calls")
    print(f"  ours, warm cache  : {warm_calls:5d} calls, {warm_t / 60:6.1f} simulated min")
    print(f"Busy ticker, 1 ticker x {args.weeks} weeks, at most 250 items per news call:")
    for per_day in (int(x) for x in args.busy.split(",") if x.strip()):
        for line in busy_ticker(per_day, start_s, end_s):
            print(line)

    from sources import SampleSource
    built, _ = records.build_records(SampleSource(), ["AAPL", "MSFT"], "2011-09-04", "2013-02-17", progress=False)
    requests = [dp.teacher_request(r, "hindsight") for r in built[: args.teacher_prompts]]
    with FakeOpenAI(delay_s=0.2) as server:
        t1 = teacher_wall_time(server.url, requests, 1)
        t8 = teacher_wall_time(server.url, requests, 8)
    print(f"Teacher, {len(requests)} prompts, 200 ms per answer:")
    print(f"  concurrency 1: {t1:5.1f} s   concurrency 8: {t8:5.1f} s   -> {t1 / t8:.1f}x faster")


if __name__ == "__main__":
    main()
