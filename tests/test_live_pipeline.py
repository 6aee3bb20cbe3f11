"""Live sources and teacher against fake servers on 127.0.0.1, with the real finnhub and openai clients.
The fake servers fail the way the real services do (tests/fake_servers.py); the pipeline's clock is
pinned (market_calendar.utc_now) so "today", the news year and the unfinished week are fixed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import data_pipeline as dp
import market_calendar
import records
from dataset_io import load_forecast_dataset
from fake_servers import GOOD_ANSWER, FakeFinnhub, FakeOpenAI
from live_sources import SYMBOL_MAPS, FinnhubData, RateLimiter, SimulatedClock, YFinancePrices

ROOT = Path(__file__).resolve().parents[1]
FINNHUB_KEY = "fake-finnhub-key-for-tests-0123"
OPENAI_KEY = "fake-openai-key-for-tests-4567"
TODAY = "2024-06-30 12:00"           # the fake Finnhub's "today" too: news before 2023-07-01 is empty


def pin_now(monkeypatch, when=TODAY):
    stamp = pd.Timestamp(when, tz="UTC")
    monkeypatch.setattr(market_calendar, "utc_now", lambda: stamp)
    return stamp


def write_prices(path, symbols=("AAA", "BBB", "CCC")):
    days = pd.bdate_range("2023-09-01", "2024-06-30")
    rows = [{"date": d.strftime("%Y-%m-%d"), "symbol": s, "close": 100 + (i % 7) * (1 + k) - (i % 3)}
            for k, s in enumerate(symbols) for i, d in enumerate(days)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def servers(monkeypatch, tmp_path):
    pin_now(monkeypatch)
    with FakeFinnhub() as finnhub, FakeOpenAI() as openai_server:
        monkeypatch.setenv("FINNHUB_KEY", FINNHUB_KEY)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        monkeypatch.setenv("FINNHUB_BASE_URL", finnhub.url)
        monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
        monkeypatch.chdir(tmp_path)     # a stray .env in the repo must not leak into tests
        yield finnhub, openai_server


def live_args(tmp_path, *extra, tickers="AAA,BBB,ZZZ"):
    return ["--source", "finnhub", "--teacher", "openai", "--teacher_model", "fake-model", "--yes",
            "--tickers", tickers, "--start", "2024-01-07", "--end", "2024-04-28",
            "--prices_csv", str(write_prices(tmp_path / "prices.csv")), "--cache_dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "ds"), "--finnhub_backoff_s", "0.001", *extra]


def test_live_build_end_to_end_with_an_unknown_ticker(servers, tmp_path, capsys):
    finnhub, openai_server = servers
    assert dp.main(live_args(tmp_path)) == 0
    err = capsys.readouterr().err
    assert "Warning: ZZZ: skipped" in err and "empty profile" in err and "outside North America" in err
    assert err.count("Warning") == 1             # the skipped ticker only: the range is inside the news year
    dd = load_forecast_dataset(tmp_path / "ds")
    rows = [r for split in dd.values() for r in split]
    assert {r["symbol"] for r in rows} == {"AAA", "BBB"}
    assert all("Prediction: " in r["answer"] and r["label"][1:] in r["answer"] for r in rows)
    manifest = json.loads((tmp_path / "ds" / "build.json").read_text())
    assert manifest["source_stats"]["api_calls"]["company-news"] == 2       # one range call per ticker
    assert manifest["teacher_stats"]["prompt_tokens"] > 0 and "ZZZ" in manifest["ticker_errors"]
    assert finnhub.tokens == {FINNHUB_KEY} and openai_server.auth == {f"Bearer {OPENAI_KEY}"}


def test_warm_cache_rerun_makes_zero_calls_and_no_key_is_written_anywhere(servers, tmp_path):
    finnhub, openai_server = servers
    assert dp.main(live_args(tmp_path)) == 0
    calls_before, asked_before = sum(finnhub.calls.values()), sum(openai_server.asked.values())
    assert dp.main(live_args(tmp_path, "--overwrite")) == 0
    assert sum(finnhub.calls.values()) == calls_before       # zero Finnhub calls on a warm cache
    assert sum(openai_server.asked.values()) == asked_before  # zero teacher calls: all journaled
    manifest = json.loads((tmp_path / "ds" / "build.json").read_text())
    assert sum(manifest["source_stats"]["api_calls"].values()) == 0
    for folder in (tmp_path / "ds", tmp_path / "cache"):
        for f in folder.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                assert FINNHUB_KEY.encode() not in data and OPENAI_KEY.encode() not in data, f


def test_no_file_or_folder_name_under_the_cache_the_dataset_or_the_logs_holds_a_key(servers, tmp_path, capsys):
    """Issue 14, hole 4: names too, not only contents (a cache folder named after the key leaks it)."""
    assert dp.main(live_args(tmp_path)) == 0
    captured = capsys.readouterr()
    log = tmp_path / "build.log"                      # what a user would keep of the run's output
    log.write_text(captured.out + captured.err)
    keys = (FINNHUB_KEY, OPENAI_KEY, FINNHUB_KEY[-8:], OPENAI_KEY[-8:])
    paths = [p for folder in (tmp_path / "ds", tmp_path / "cache") for p in folder.rglob("*")] + [log]
    assert len(paths) > 10 and any(p.is_dir() for p in paths)
    for path in paths:
        name = str(path.relative_to(tmp_path))
        assert not any(k in name for k in keys), name
        if path.is_file():
            data = path.read_bytes()
            assert not any(k.encode() in data for k in keys), name


def test_financials_never_appear_before_filing_or_lag(servers, tmp_path):
    assert dp.main(live_args(tmp_path, tickers="AAA")) == 0
    rows = [r for split in load_forecast_dataset(tmp_path / "ds").values() for r in split]
    seen = set()
    for r in rows:
        period, avail, start = r["financials_period"], r["financials_available"], r["prediction_start"]
        if period == "2023-09-30":
            assert avail == "2023-10-27"             # the filing date from financials-reported
        if period == "2023-12-31":
            assert avail == "2024-03-30"             # fiscal Q4: period end + 90 days
        assert not period or avail < start
        assert "quarter ended 2024-03-31" not in r["prompt"]   # Q1 2024 is never available before May
        seen.add(period)
    assert {"2023-09-30", "2023-12-31"} <= seen


def test_retries_429_500_malformed_json_and_timeouts(tmp_path):
    with FakeFinnhub() as finnhub:
        finnhub.script = [429, 500, "malformed", ("sleep", 1.5), 429]
        data = FinnhubData(FINNHUB_KEY, cache_dir=tmp_path, base_url=finnhub.url, timeout_s=0.5,
                           sleep=lambda s: None)
        profile = data.profile("AAA")
        assert profile["name"] == "AAA Holdings" and "market_cap" not in profile
        assert data.retries["profile2"] == 5 and data.api_calls["profile2"] == 6


def test_a_persistent_failure_is_one_redacted_error(tmp_path):
    with FakeFinnhub() as finnhub:
        finnhub.fail_every = (1, 503)
        data = FinnhubData(FINNHUB_KEY, cache_dir=tmp_path, base_url=finnhub.url, sleep=lambda s: None,
                           max_attempts=3)
        with pytest.raises(RuntimeError) as info:
            data.news("AAA", "2024-01-01", "2024-02-01")
        assert "company-news" in str(info.value) and FINNHUB_KEY not in str(info.value)
        assert finnhub.calls["/company-news"] == 3


def test_capped_news_responses_are_split_until_the_range_is_covered(tmp_path):
    with FakeFinnhub(news_per_day=3, news_cap=120) as finnhub:
        data = FinnhubData(FINNHUB_KEY, cache_dir=tmp_path, base_url=finnhub.url, sleep=lambda s: None)
        items = data.news("AAA", "2023-07-02", "2024-01-07")
        days = pd.bdate_range("2023-07-03", "2024-01-05")
        assert len(items) == 3 * len(days)
        assert 1 < finnhub.calls["/company-news"] < 20      # far fewer than one call per week (27)


def test_quiet_weeks_render_no_news(servers, tmp_path):
    finnhub, _ = servers
    finnhub.quiet_weeks = {"2024-01-28", "2024-02-04"}
    assert dp.main(live_args(tmp_path, tickers="AAA")) == 0
    rows = [r for split in load_forecast_dataset(tmp_path / "ds").values() for r in split]
    assert any("No relative news reported." in r["prompt"] for r in rows)


def test_rate_limiter_spaces_calls_without_sleeping_for_real():
    clock = SimulatedClock()
    limiter = RateLimiter(60, 60.0, clock=clock, sleep=clock.sleep)
    for _ in range(150):
        limiter.acquire()
    assert 120.0 <= clock.now < 121.0


def test_teacher_empty_and_headerless_answers_are_retried_then_reported(servers, tmp_path):
    _, openai_server = servers
    headerless = GOOD_ANSWER.replace("[Prediction & Analysis]:\n", "")
    openai_server.answers = ["", headerless] + [""] * (1 + 3 * 4)     # the first 5 prompts fail, the rest pass
    openai_server.finish_reasons = ["stop", "stop", "length"]
    assert dp.main(live_args(tmp_path, "--teacher_concurrency", "1", "--teacher_retries", "2",
                             tickers="AAA")) == 0
    manifest = json.loads((tmp_path / "ds" / "build.json").read_text())
    failures = manifest["teacher_failures"]
    first = failures[sorted(failures)[0]]
    assert "empty answer" in first and "no [Prediction & Analysis] header" in first
    dd = load_forecast_dataset(tmp_path / "ds")
    assert all(a.strip() for split in dd.values() for a in split["answer"])
    assert sum(manifest["counts"].values()) + len(failures) == manifest["prompts_built"]


def test_bad_teacher_key_stops_the_run_with_one_error(servers, tmp_path, capsys):
    from teachers import TeacherFatalError, OpenAITeacher
    import httpx
    transport = httpx.MockTransport(lambda request: httpx.Response(401, json={"error": {"message": "bad key"}}))
    teacher = OpenAITeacher("m", base_url="http://127.0.0.1:9/v1", api_key="x", max_retries=0,
                            http_client=httpx.Client(transport=transport))
    with pytest.raises(TeacherFatalError, match="rejected the API key"):
        teacher.answer({"system": "s", "user": "u"})


def test_cost_is_estimated_and_confirmation_required_without_yes(servers, tmp_path, capsys):
    args = [a for a in live_args(tmp_path, "--teacher_model", "gpt-4o-mini") if a != "--yes"]
    assert dp.main(args) == 1
    captured = capsys.readouterr()
    assert "estimated cost ~$" in captured.out and "pass --yes" in captured.err


def test_sigkill_during_labelling_then_resume_keeps_answers_and_asks_none_twice(servers, tmp_path):
    finnhub, openai_server = servers
    openai_server.delay_s = 0.15
    args = live_args(tmp_path, "--teacher_concurrency", "2", tickers="AAA,BBB")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "data_pipeline.py"), *args], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = tmp_path / "ds" / "teacher_journal.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 6):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    assert len(before) >= 6
    asked_before = sum(openai_server.asked.values())
    assert not (tmp_path / "ds" / "dataset_dict.json").exists()
    openai_server.delay_s = 0.0
    openai_server.asked.clear()
    assert dp.main(args) == 0
    rows = [r for split in load_forecast_dataset(tmp_path / "ds").values() for r in split]
    after = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    ids = [e["id"] for e in after]
    assert len(ids) == len(set(ids))                      # no duplicates in the journal
    assert set(ids) == {r["id"] for r in rows}            # every prompt answered exactly once
    kept = {e["id"]: e["answer"] for e in before}
    by_id = {r["id"]: r["answer"] for r in rows}
    assert all(by_id[i] == a for i, a in kept.items() if i in by_id)   # answers before the kill kept
    assert sum(openai_server.asked.values()) == len(ids) - len(before)  # none of them asked again
    assert asked_before >= len(before)


def test_yfinance_frames_with_multiindex_columns_are_cached_and_empty_frames_are_errors(tmp_path):
    calls = []

    def fake_download(symbol, start, end):
        calls.append(symbol)
        if symbol == "NOPE":
            return pd.DataFrame()
        idx = pd.bdate_range(start, end)
        cols = pd.MultiIndex.from_tuples([("Close", symbol), ("Volume", symbol)], names=["Price", "Ticker"])
        return pd.DataFrame({("Close", symbol): range(len(idx)), ("Volume", symbol): 1}, index=idx, columns=cols)

    prices = YFinancePrices(cache_dir=tmp_path, download=fake_download)
    first = prices.prices("AAA", "2024-01-01", "2024-02-01")
    second = prices.prices("AAA", "2024-01-01", "2024-02-01")
    assert calls == ["AAA"] and first.equals(second) and len(first) == len(pd.bdate_range("2024-01-01", "2024-02-01"))
    with pytest.raises(KeyError, match="NOPE: yfinance returned no prices"):
        prices.prices("NOPE", "2024-01-01", "2024-02-01")


def test_missing_finnhub_key_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("FINNHUB_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert dp.main(["--source", "finnhub", "--tickers", "AAA", "--start", "2024-01-07", "--end", "2024-02-04",
                    "--out", str(tmp_path / "x")]) == 1
    assert "FINNHUB_KEY" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Issue 12: behaving like the real services
# ---------------------------------------------------------------------------------------------
def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("Error:")]


def test_build_json_and_check_report_news_coverage_per_ticker_and_split(servers, tmp_path, capsys):
    finnhub, _ = servers
    finnhub.quiet_weeks = {"2024-02-18", "2024-02-25", "2024-03-03", "2024-03-10"}   # a month with no news
    assert dp.main(live_args(tmp_path, tickers="AAA,BBB")) == 0
    out = capsys.readouterr().out
    coverage = json.loads((tmp_path / "ds" / "build.json").read_text())["news_coverage"]
    rows = {s: list(split) for s, split in load_forecast_dataset(tmp_path / "ds").items()}
    expected = sum(r["n_news"] > 0 for split in rows.values() for r in split) / sum(map(len, rows.values()))
    assert coverage["prompts_with_news"] == pytest.approx(expected, abs=1e-4) and 0 < expected < 1
    assert set(coverage["per_split"]) == set(rows) and set(coverage["per_ticker"]) == {"AAA", "BBB"}
    assert coverage["capped_days"] == {} and coverage["news_horizon_warning"] is False
    assert "news coverage (prompts with >= 1 news item)" in out
    assert dp.main(["--check", str(tmp_path / "ds")]) == 0
    checked = capsys.readouterr().out
    assert "news coverage" in checked and "AAA" in checked and "news days capped" in checked


def test_a_range_older_than_the_news_year_warns_before_the_first_call(servers, tmp_path, capsys):
    finnhub, _ = servers
    finnhub.valid_tokens = {"another-key"}          # so the first call also ends the run (401)
    args = live_args(tmp_path, tickers="AAA")
    args[args.index("--start") + 1], args[args.index("--end") + 1] = "2023-05-07", "2023-09-24"
    assert dp.main(args) == 1
    err = capsys.readouterr().err
    assert err.index("Warning: prompts need news from 2023-04-16") < err.index("Error:")
    assert "free plan serves company news for the last 365 days" in err
    assert sum(finnhub.calls.values()) == 1


def test_news_older_than_a_year_is_empty_and_the_coverage_says_so(servers, tmp_path, capsys):
    args = live_args(tmp_path, tickers="AAA")
    args[args.index("--start") + 1], args[args.index("--end") + 1] = "2023-06-04", "2023-10-29"
    days = pd.bdate_range("2023-04-01", "2023-12-31").strftime("%Y-%m-%d")
    pd.DataFrame([{"date": d, "symbol": "AAA", "close": 100 + i % 5} for i, d in enumerate(days)]).to_csv(
        tmp_path / "old.csv", index=False)
    args[args.index("--prices_csv") + 1] = str(tmp_path / "old.csv")
    assert dp.main(args) == 0
    assert "Warning: prompts need news from 2023-05-14" in capsys.readouterr().err
    coverage = json.loads((tmp_path / "ds" / "build.json").read_text())["news_coverage"]
    assert coverage["news_horizon_warning"] is True
    assert coverage["per_split"]["train"] < 1.0 and coverage["per_split"]["test"] == 1.0


def test_start_and_end_default_to_the_last_52_completed_weeks_inside_the_news_year(monkeypatch, tmp_path):
    pin_now(monkeypatch, "2024-04-24 16:00")        # Wednesday noon in New York: this week is unfinished
    args = dp.parse_args(["--source", "finnhub", "--tickers", "AAA"])
    assert args.end == "2024-04-14"                 # 04-14 .. 04-21 is the last completed week
    first_data_week = pd.Timestamp(args.start) - pd.Timedelta(weeks=dp.MAX_PAST_WEEKS)
    assert first_data_week == pd.Timestamp("2023-04-30")  # 52 weeks, 04-30 .. 04-21, all inside the year
    assert first_data_week >= market_calendar.news_horizon()
    assert args.finnhub_calls_per_minute == 55 and "20230521-20240414" in args.out


def _prices_through(last_day):
    days = pd.bdate_range("2024-01-02", last_day)
    return "\n".join(["date,symbol,close"] + [f"{d.date()},AAA,{100 + i}" for i, d in enumerate(days)]) + "\n"


def test_the_week_in_progress_is_never_labelled(servers, tmp_path, monkeypatch):
    pin_now(monkeypatch, "2024-04-24 16:00")        # Wednesday, market open; the CSV has Wednesday's live bar
    (tmp_path / "live.csv").write_text(_prices_through("2024-04-24"))
    args = live_args(tmp_path, tickers="AAA")
    args[args.index("--prices_csv") + 1] = str(tmp_path / "live.csv")
    args[args.index("--end") + 1] = "2024-04-21"
    assert dp.main(args) == 0
    rows = [r for split in load_forecast_dataset(tmp_path / "ds").values() for r in split]
    periods = {r["period"]: r for r in rows}
    assert "2024-04-21 to 2024-04-28" not in periods                    # begun, not finished: no label
    last = periods["2024-04-14 to 2024-04-21"]                           # finished on Friday 04-19
    closes = pd.read_csv(tmp_path / "live.csv", index_col="date")["close"]
    assert last["weekly_return"] == pytest.approx(closes["2024-04-19"] / closes["2024-04-12"] - 1)
    manifest = json.loads((tmp_path / "ds" / "build.json").read_text())
    assert manifest["labels"]["first_unfinished_session"] == "2024-04-24"
    assert max(r["prediction_end"] for r in rows) <= "2024-04-21"
    # once Friday's close has settled, the same week is labelled
    pin_now(monkeypatch, "2024-04-27 12:00")
    (tmp_path / "live.csv").write_text(_prices_through("2024-04-26"))
    assert dp.main(args + ["--overwrite"]) == 0
    rows = [r for split in load_forecast_dataset(tmp_path / "ds").values() for r in split]
    assert "2024-04-21 to 2024-04-28" in {r["period"] for r in rows}


def test_weekly_windows_stop_before_the_first_unfinished_session():
    closes = pd.Series(range(100, 100 + 18), index=pd.bdate_range("2024-04-01", "2024-04-24"), dtype=float)
    weeks = records.weekly_windows(closes, "2024-04-07", "2024-04-28", unfinished_from="2024-04-24")
    assert [w["start"] for w in weeks] == ["2024-04-07", "2024-04-14"]
    assert weeks[-1]["end_price_date"] == "2024-04-19"
    assert market_calendar.first_unfinished_session(pd.Timestamp("2024-04-24 20:30", tz="UTC")) == \
        pd.Timestamp("2024-04-24")                  # closed 30 minutes ago: not final yet
    assert market_calendar.first_unfinished_session(pd.Timestamp("2024-04-24 21:30", tz="UTC")) == \
        pd.Timestamp("2024-04-25")


def test_ranges_that_reach_into_the_present_are_cached_briefly_and_final_ones_for_good(tmp_path):
    calls = []

    def fake_download(symbol, start, end):
        calls.append((start, end))
        idx = pd.bdate_range(start, pd.Timestamp(end) - pd.Timedelta(days=1))
        return pd.DataFrame({"Close": range(len(idx))}, index=idx)

    clock = {"now": pd.Timestamp("2024-04-24 16:00", tz="UTC")}
    prices = YFinancePrices(cache_dir=tmp_path, download=fake_download, now=lambda: clock["now"])
    prices.prices("AAA", "2024-04-01", "2024-04-28")           # reaches into the unfinished week
    prices.prices("AAA", "2024-03-01", "2024-04-20")           # every session before 04-20 is final
    clock["now"] += pd.Timedelta(minutes=10)
    prices.prices("AAA", "2024-04-01", "2024-04-28")
    assert len(calls) == 2                                     # within the short expiry: a cache hit
    clock["now"] += pd.Timedelta(hours=2)
    prices.prices("AAA", "2024-04-01", "2024-04-28")
    prices.prices("AAA", "2024-03-01", "2024-04-20")
    assert calls == [("2024-04-01", "2024-04-28"), ("2024-03-01", "2024-04-20"), ("2024-04-01", "2024-04-28")]
    with FakeFinnhub(today="2024-04-24") as finnhub:
        data = FinnhubData(FINNHUB_KEY, cache_dir=tmp_path, base_url=finnhub.url, sleep=lambda s: None,
                           now=lambda: clock["now"])
        data.news("AAA", "2024-04-14", "2024-04-25")           # includes today's (unfinished) news
        data.news("AAA", "2024-03-03", "2024-04-14")
        clock["now"] += pd.Timedelta(hours=2)
        data.news("AAA", "2024-04-14", "2024-04-25")
        data.news("AAA", "2024-03-03", "2024-04-14")
        assert finnhub.calls["/company-news"] == 3


def test_busy_news_is_complete_under_the_cap_down_to_single_days(tmp_path):
    with FakeFinnhub(news_cap=250) as finnhub:
        finnhub.busy = {"AAA": 150}                            # two weekdays overflow one call
        data = FinnhubData(FINNHUB_KEY, cache_dir=tmp_path, base_url=finnhub.url, sleep=lambda s: None)
        items = data.news("AAA", "2024-01-07", "2024-03-03")
        assert len(items) == 150 * len(pd.bdate_range("2024-01-08", "2024-03-01"))
        assert data.capped_days == {}
        assert finnhub.calls["/company-news"] <= len(pd.bdate_range("2024-01-08", "2024-03-01")) + 1


def test_a_day_that_alone_fills_the_cap_is_recorded_never_dropped_silently(servers, tmp_path, capsys):
    finnhub, _ = servers
    finnhub.busy = {"AAA": 300}
    assert dp.main(live_args(tmp_path, "--finnhub_calls_per_minute", "100000", tickers="AAA")) == 0
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / "ds" / "build.json").read_text())
    capped = manifest["news_coverage"]["capped_days"]["AAA"]
    assert capped[:2] == ["2023-12-18", "2023-12-19"] and len(capped) == len(pd.bdate_range("2023-12-17", "2024-05-04"))
    assert manifest["source_stats"]["news_capped_days"]["AAA"] == capped
    assert "news days capped" in out and "AAA " in out


def test_reasoning_model_teacher_learns_its_parameters_from_the_first_400s(servers, tmp_path, capsys):
    _, openai_server = servers
    openai_server.reasoning = True
    assert dp.main(live_args(tmp_path, "--teacher_concurrency", "1", tickers="AAA")) == 0
    manifest = json.loads((tmp_path / "ds" / "build.json").read_text())
    request = manifest["teacher_request"]
    assert request["token_limit_parameter"] == "max_completion_tokens" and request["omitted"] == ["temperature"]
    assert len(request["learned"]) == 2 and "max_tokens" in request["learned"][0]
    answered = manifest["teacher_stats"]["answered"]
    assert answered == manifest["prompts_built"] and openai_server.errors == {400: 2}   # learned once, kept
    assert all(body == ["max_completion_tokens"] for body in openai_server.bodies[2:])
    assert "using max_completion_tokens" in capsys.readouterr().err


@pytest.mark.parametrize("failure, words", [
    ("quota_exhausted", "insufficient_quota"),
    ("bad_key", "rejected the API key (401)"),
    ("unknown_model", "unknown model or URL (404)"),
    ("forbidden", "no access (403)"),
    ("bad_request", "rejects the request (400)"),
])
def test_teacher_failures_no_request_can_survive_stop_the_run_with_one_error(servers, tmp_path, capsys, failure, words):
    _, openai_server = servers
    if failure == "quota_exhausted":
        openai_server.quota_exhausted = True
    elif failure == "bad_key":
        openai_server.valid_keys = {"sk-the-right-one"}
    elif failure == "unknown_model":
        openai_server.known_models = {"gpt-4o-mini"}
    elif failure == "forbidden":
        openai_server.forbidden = True
    else:
        openai_server.bad_request = "Invalid value for 'messages[0].role'."
    assert dp.main(live_args(tmp_path, tickers="AAA")) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and words in error_lines(err)[0], err
    assert "teacher_journal.jsonl" in error_lines(err)[0]           # the journal is kept and named
    assert (tmp_path / "ds" / "teacher_journal.jsonl").exists()
    assert not (tmp_path / "ds" / "dataset_dict.json").exists()      # no empty dataset
    assert OPENAI_KEY not in err and OPENAI_KEY[-4:] not in err
    # stopped at once: only the requests already in flight (each with the client's own retries), not
    # every prompt with --teacher_retries
    assert sum(openai_server.errors.values()) <= dp.TEACHER_CONCURRENCY * 4
    assert dp.main(live_args(tmp_path, tickers="AAA")) == 1                   # a re-run needs no --overwrite
    assert "--overwrite" not in capsys.readouterr().err


def test_a_run_in_which_the_teacher_answered_nothing_exits_non_zero(servers, tmp_path, capsys):
    _, openai_server = servers
    openai_server.default_answer = "I cannot help with that."
    assert dp.main(live_args(tmp_path, "--teacher_retries", "0", tickers="AAA")) == 1
    err = capsys.readouterr().err
    assert "teacher answered none of the" in error_lines(err)[0] and "off-format" in error_lines(err)[0]
    assert not (tmp_path / "ds" / "dataset_dict.json").exists()


def test_a_rejected_finnhub_key_stops_the_build_on_the_first_call(servers, tmp_path, capsys):
    finnhub, openai_server = servers
    finnhub.valid_tokens = {"the-right-key"}
    assert dp.main(live_args(tmp_path, tickers="AAA,BBB,CCC")) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "FINNHUB_KEY" in err and "401" in err and FINNHUB_KEY not in err
    assert sum(finnhub.calls.values()) == 1 and not openai_server.asked


def test_yfinance_rate_limits_are_retried_with_backoff_never_called_unknown(tmp_path):
    from yfinance.exceptions import YFPricesMissingError, YFRateLimitError, YFTzMissingError
    script, waits = {"AAA": [YFRateLimitError(), YFRateLimitError()], "LIM": [YFRateLimitError()] * 9,
                     "GONE": [YFTzMissingError("GONE")],
                     "OLD": [YFPricesMissingError("OLD", "", yahoo_reason="Data doesn't exist for startDate")]}, []

    def fake_download(symbol, start, end):
        if script.get(symbol):
            raise script[symbol].pop(0)
        idx = pd.bdate_range(start, end)
        return pd.DataFrame({"Close": range(len(idx))}, index=idx.tz_localize("America/New_York"))

    prices = YFinancePrices(cache_dir=tmp_path, download=fake_download, sleep=waits.append)
    assert len(prices.prices("AAA", "2024-01-01", "2024-02-01")) > 15
    assert waits == [5.0, 10.0] and prices.retries["rate_limit"] == 2
    with pytest.raises(RuntimeError, match="rate-limited every attempt.*not an unknown ticker"):
        prices.prices("LIM", "2024-01-01", "2024-02-01")
    with pytest.raises(KeyError, match="Yahoo has no prices for GONE.*no timezone"):
        prices.prices("GONE", "2024-01-01", "2024-02-01")
    with pytest.raises(KeyError, match="Data doesn't exist"):
        prices.prices("OLD", "2024-01-01", "2024-02-01")


def test_each_source_gets_its_own_spelling_of_a_share_class(tmp_path):
    assert SYMBOL_MAPS["finnhub"]("BRK-B") == "BRK.B" and SYMBOL_MAPS["yahoo"]("BRK.B") == "BRK-B"
    assert SYMBOL_MAPS["yahoo"]("VOD.L") == "VOD.L" and SYMBOL_MAPS["finnhub"]("AAPL") == "AAPL"
    asked = []
    prices = YFinancePrices(cache_dir=tmp_path, download=lambda s, a, b: asked.append(s) or pd.DataFrame(
        {"Close": [1.0]}, index=pd.DatetimeIndex(["2024-01-02"])))
    assert prices.prices("BRK.B", "2024-01-01", "2024-01-05").name == "BRK.B" and asked == ["BRK-B"]
    with FakeFinnhub(symbols=("BRK.B",)) as finnhub:
        data = FinnhubData(FINNHUB_KEY, cache_dir=tmp_path, base_url=finnhub.url, sleep=lambda s: None)
        assert data.profile("BRK-B")["name"] == "BRK.B Holdings"


def test_non_usd_reporters_show_their_currency_beside_amounts_of_money(servers, tmp_path):
    finnhub, _ = servers
    finnhub.symbols.add("ASML")
    finnhub.profiles["ASML"] = {"country": "NL", "currency": "USD", "estimateCurrency": "EUR"}
    args = live_args(tmp_path, tickers="ASML")
    (tmp_path / "asml.csv").write_text(_prices_through("2024-06-28").replace(",AAA,", ",ASML,"))
    args[args.index("--prices_csv") + 1] = str(tmp_path / "asml.csv")
    assert dp.main(args) == 0
    prompts = [r["prompt"] for split in load_forecast_dataset(tmp_path / "ds").values() for r in split]
    shown = [p for p in prompts if "[Basic Financials]:\n\neps" in p]
    assert shown and all("eps: 1.2 EUR" in p or "eps: 1.3 EUR" in p or "eps: 1.1 EUR" in p for p in shown)
    assert all("currentRatio: 1.5\n" in p for p in shown)            # a ratio has no currency


def test_the_filing_lag_follows_finnhubs_own_quarter_field(tmp_path):
    with FakeFinnhub(symbols=("JUN",)) as finnhub:
        # fiscal year ending in June: Finnhub says the December quarter is Q2, no filing date given
        finnhub.reported["JUN"] = [{"endDate": "2023-12-31 00:00:00", "quarter": 2, "year": 2024}]
        data = FinnhubData(FINNHUB_KEY, cache_dir=tmp_path, base_url=finnhub.url, sleep=lambda s: None)
        quarters = {q["period"]: q["fiscal_quarter"] for q in data.financials("JUN")}
    assert quarters["2023-12-31"] == 2 and quarters["2024-03-31"] == 3 and quarters["2023-06-30"] == 4
    item = {"period": "2023-12-31", "filed": None, "fiscal_quarter": 2}
    assert records.financials_available(item) == "2024-02-14"              # Q2: 45 days, not the Q4 90


def test_a_403_on_financials_reported_is_remembered_for_the_plan(tmp_path, capsys):
    with FakeFinnhub() as finnhub:
        finnhub.reported_status = 403
        for _ in range(2):
            data = FinnhubData(FINNHUB_KEY, cache_dir=tmp_path, base_url=finnhub.url, sleep=lambda s: None)
            quarters = data.financials("AAA")
        assert finnhub.calls["/stock/financials-reported"] == 1
    assert quarters and all(q["filed"] is None for q in quarters)
    assert "403" in data.stats()["notes"][0] and "not in this key's plan" in capsys.readouterr().err
    assert (tmp_path / "finnhub" / "_plan" / "financials-reported.json").exists()
