"""Live sources and teacher against fake servers on 127.0.0.1, with the real finnhub and openai clients."""
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
from dataset_io import load_forecast_dataset
from fake_servers import GOOD_ANSWER, FakeFinnhub, FakeOpenAI
from sources import FinnhubData, RateLimiter, SimulatedClock, YFinancePrices

ROOT = Path(__file__).resolve().parents[1]
FINNHUB_KEY = "fake-finnhub-key-for-tests-0123"
OPENAI_KEY = "fake-openai-key-for-tests-4567"


def write_prices(path, symbols=("AAA", "BBB", "CCC")):
    days = pd.bdate_range("2023-09-01", "2024-06-30")
    rows = [{"date": d.strftime("%Y-%m-%d"), "symbol": s, "close": 100 + (i % 7) * (1 + k) - (i % 3)}
            for k, s in enumerate(symbols) for i, d in enumerate(days)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def servers(monkeypatch, tmp_path):
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
    assert "Error: ZZZ: skipped" in err and "knows no company" in err
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
    openai_server.answers = ["", headerless] + [""] * 3 * 50
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
    with pytest.raises(TeacherFatalError, match="AuthenticationError"):
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
