"""Benchmark: API calls and simulated wall time of the data pipeline, ours vs upstream's pattern.

Against the fake Finnhub server on 127.0.0.1 (made-up data), with the rate limiter's clock simulated
so a 60 calls/min limit costs no real time:
  * 30 tickers x 52 weeks: ours (one news call per ticker range, split only when capped; profile,
    metric and filing dates once per ticker) vs the per-week baseline (upstream: one news call per
    ticker-week plus profile and metric per ticker), cold cache and warm cache;
  * teacher labelling wall time at concurrency 1 vs 8 against a fake OpenAI-compatible server that
    sleeps 200 ms per answer (a subset of prompts, real time).

    python bench/data_calls.py [--tickers 30] [--weeks 52] [--teacher_prompts 48]
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
from fake_servers import FakeFinnhub, FakeOpenAI  # noqa: E402
from sources import FinnhubData, SimulatedClock  # noqa: E402
from teachers import OpenAITeacher  # noqa: E402

KEY = "bench-key"


def ours(url, cache, symbols, start, end):
    clock = SimulatedClock()
    data = FinnhubData(KEY, cache_dir=cache, base_url=url, clock=clock, sleep=clock.sleep)
    for s in symbols:
        data.profile(s)
        data.news(s, start, end)
        data.financials(s)
    return sum(data.api_calls.values()), clock.now


def per_week_baseline(url, cache, symbols, start, end):
    """Upstream's pattern: news fetched one week at a time (no cache across runs)."""
    clock = SimulatedClock()
    data = FinnhubData(KEY, cache_dir=cache, base_url=url, clock=clock, sleep=clock.sleep)
    sundays = pd.date_range(start, end, freq="W-SUN")
    for s in symbols:
        data.profile(s)
        data._call("metric", {"symbol": s, "metric": "all"}, data.client.company_basic_financials)
        for a, b in zip(sundays, sundays[1:]):
            data._call("company-news", {"symbol": s, "_from": a.strftime("%Y-%m-%d"),
                                        "to": (b - pd.Timedelta(days=1)).strftime("%Y-%m-%d")},
                       data.client.company_news)
    return sum(data.api_calls.values()), clock.now


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
    p.add_argument("--teacher_prompts", type=int, default=48, help="prompts labelled per concurrency level")
    args = p.parse_args()
    symbols = [f"T{i:02d}" for i in range(args.tickers)]
    start = pd.Timestamp("2023-05-07")
    end = start + pd.Timedelta(weeks=args.weeks)
    start_s, end_s = start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")
    with FakeFinnhub(symbols=symbols, news_per_day=2, news_cap=250) as fin:
        with tempfile.TemporaryDirectory() as cache:
            cold_calls, cold_t = ours(fin.url, cache, symbols, start_s, end_s)
            warm_calls, warm_t = ours(fin.url, cache, symbols, start_s, end_s)
        with tempfile.TemporaryDirectory() as cache:
            base_calls, base_t = per_week_baseline(fin.url, cache, symbols, start_s, end_s)
    print(f"Finnhub, {args.tickers} tickers x {args.weeks} weeks (simulated 60 calls/min limit):")
    print(f"  per-week baseline : {base_calls:5d} calls, {base_t / 60:6.1f} simulated min")
    print(f"  ours, cold cache  : {cold_calls:5d} calls, {cold_t / 60:6.1f} simulated min  "
          f"-> {base_calls / max(cold_calls, 1):.1f}x fewer calls")
    print(f"  ours, warm cache  : {warm_calls:5d} calls, {warm_t / 60:6.1f} simulated min")

    from sources import SampleSource
    records, _ = dp.build_records(SampleSource(), ["AAPL", "MSFT"], "2011-09-04", "2013-02-17", progress=False)
    requests = [dp.teacher_request(r, "hindsight") for r in records[: args.teacher_prompts]]
    with FakeOpenAI(delay_s=0.2) as server:
        t1 = teacher_wall_time(server.url, requests, 1)
        t8 = teacher_wall_time(server.url, requests, 8)
    print(f"Teacher, {len(requests)} prompts, 200 ms per answer:")
    print(f"  concurrency 1: {t1:5.1f} s   concurrency 8: {t8:5.1f} s   -> {t1 / t8:.1f}x faster")


if __name__ == "__main__":
    main()
