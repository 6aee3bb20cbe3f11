"""Building datasets: weekly windows, leak rules on provenance dates, splits, determinism, resume; one
`Error:` line for every bad input."""
import json

import pandas as pd
import pytest

import data_pipeline as dp
import records
from dataset_io import load_forecast_dataset
from prompt import parse_answer
from sources import SampleSource
from teachers import OfflineTeacher



@pytest.fixture(scope="module")
def sample_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "ds"
    assert dp.main(["--source", "sample", "--teacher", "offline", "--out", str(out),
                    "--start", "2012-01-01", "--end", "2012-12-30"]) == 0
    return out


def test_sample_build_writes_three_splits_and_a_manifest(sample_build):
    dd = load_forecast_dataset(sample_build)
    assert set(dd) == {"train", "validation", "test"}
    manifest = json.loads((sample_build / "build.json").read_text())
    assert manifest["counts"] == {k: len(v) for k, v in dd.items()}
    assert manifest["source"] == "sample" and manifest["teacher_mode"] == "hindsight"
    assert manifest["tickers"] == ["AAPL", "MSFT", "IBM", "GOOG"] and manifest["teacher_failures"] == {}
    assert "SAMPLE DATA" in dd["train"].info.description and "SAMPLE DATA" in (sample_build / "README.md").read_text()


def test_leak_free_provenance_dates_on_every_record(sample_build):
    """Prices up to the week-start Sunday, news before it, financials only once period end + lag passed."""
    dd = load_forecast_dataset(sample_build)
    checked_financials = 0
    for split in dd.values():
        for r in split:
            start = r["prediction_start"]
            assert r["price_asof"] <= start
            assert r["news_last"] == "" or r["news_last"] < start
            if r["financials_period"]:
                checked_financials += 1
                q4 = r["financials_period"][5:7] == "12"
                lag = pd.Timedelta(days=90 if q4 else 45)
                assert pd.Timestamp(r["financials_period"]) + lag <= pd.Timestamp(r["financials_available"])
                assert r["financials_available"] < start
    assert checked_financials > 100


def test_records_never_show_the_target_weeks_news_or_prices():
    source = SampleSource()
    built, errors = records.build_records(source, ["AAPL"], "2012-03-04", "2012-06-24", progress=False)
    assert not errors and built
    for rec in built:
        for week in rec["weeks"]:
            assert week["end"] <= rec["curday"]
            assert all(n["date"] < rec["curday"] for n in week["news"])
            assert len(week["news"]) <= records.MAX_NEWS_PER_WEEK


def test_the_three_splits_do_not_overlap_in_time(sample_build):
    dd = load_forecast_dataset(sample_build)
    train, val, test = (dd[s] for s in ("train", "validation", "test"))
    assert max(train["prediction_end"]) <= min(val["prediction_start"])
    assert max(val["prediction_end"]) <= min(test["prediction_start"])


def test_sample_build_is_deterministic_for_a_seed(tmp_path):
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / name
        assert dp.main(["--out", str(out), "--start", "2012-06-03", "--end", "2012-09-30",
                        "--seed", str(seed)]) == 0
        dd = load_forecast_dataset(out)
        outs.append([(r["id"], r["prompt"], r["answer"]) for s in ("train", "validation", "test") for r in dd[s]])
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]
    assert [x[0] for x in outs[0]] == [x[0] for x in outs[2]]   # the seed changes sampling, not rows


def test_weekly_windows_use_the_last_close_on_or_before_each_sunday():
    days = pd.bdate_range("2024-01-01", "2024-01-31")
    closes = pd.Series(range(100, 100 + len(days)), index=days, dtype=float)
    weeks = records.weekly_windows(closes, "2024-01-07", "2024-01-28")
    assert [w["start"] for w in weeks] == ["2024-01-07", "2024-01-14", "2024-01-21"]
    assert weeks[0]["start_price_date"] == "2024-01-05" and weeks[0]["start_price"] == 104.0
    assert weeks[0]["end_price_date"] == "2024-01-12"


def test_a_flat_week_gets_the_up_0_1_label():
    days = pd.bdate_range("2024-01-01", "2024-01-31")
    closes = pd.Series(100.0, index=days)
    weeks = records.weekly_windows(closes, "2024-01-07", "2024-01-21")
    assert weeks[0]["weekly_return"] == 0.0


def test_news_selection_dedups_filters_promos_and_samples_in_date_order():
    import random
    items = [{"date": f"2024-01-{d:02d}", "headline": h, "summary": s} for d, h, s in [
        (8, "A", "x"), (8, "a ", "dup"), (9, "B", records.PROMO_PREFIXES[0] + " buy now"), (9, "C", "y"),
        (10, "D", "z"), (11, "E", "w"), (12, "F", "v"), (14, "G", "next week")]]
    kept = records.select_news(items, "2024-01-07", "2024-01-14", 3, random.Random(0))
    assert len(kept) == 3 and [k["date"] for k in kept] == sorted(k["date"] for k in kept)
    assert {k["headline"] for k in kept} <= {"A", "C", "D", "E", "F"}


def test_financials_wait_for_filing_date_or_lag():
    q3 = {"period": "2023-09-30", "filed": None, "fiscal_quarter": 3, "metrics": {"eps": 1}}
    q4 = {"period": "2023-12-31", "filed": None, "fiscal_quarter": 4, "metrics": {"eps": 2}}
    filed = {"period": "2024-03-31", "filed": "2024-04-25", "fiscal_quarter": 1, "metrics": {"eps": 3}}
    assert records.financials_available(q3) == "2023-11-14"
    assert records.financials_available(q4) == "2024-03-30"
    assert records.latest_financials([q3, q4, filed], "2024-03-30")["period"] == "2023-09-30"
    assert records.latest_financials([q3, q4, filed], "2024-03-31")["period"] == "2023-12-31"
    assert records.latest_financials([q3, q4, filed], "2024-04-26")["period"] == "2024-03-31"
    assert records.latest_financials([q3], "2023-11-14") is None


def test_a_ticker_the_source_cannot_serve_is_reported_and_the_others_still_build():
    built, errors = records.build_records(SampleSource(), ["AAPL", "ZZZZ", "MSFT"], "2012-06-03", "2012-07-29",
                                          progress=False)
    assert set(errors) == {"ZZZZ"} and "not in the offline sample" in errors["ZZZZ"]
    assert {r["symbol"] for r in built} == {"AAPL", "MSFT"}


def test_an_unknown_sample_ticker_is_refused_before_anything_is_built(tmp_path, capsys):
    out = tmp_path / "mixed"
    assert dp.main(["--out", str(out), "--tickers", "AAPL,ZZZZ,MSFT", "--start", "2012-06-03",
                    "--end", "2012-09-30"]) == 1
    err = capsys.readouterr().err
    assert err.count("Error:") == 1 and "ZZZZ: not in the offline sample (it has AAPL, MSFT, IBM, GOOG)" in err
    assert not out.exists()


def test_rebuilding_into_an_existing_dataset_needs_overwrite(sample_build, capsys):
    assert dp.main(["--out", str(sample_build), "--start", "2012-01-01", "--end", "2012-12-30"]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_every_flag_problem_is_reported_at_once_before_any_call(tmp_path):
    args = dp.parse_args(["--out", str(tmp_path), "--start", "yesterday", "--tickers", "AAPL MSFT",
                          "--max_news_per_week", "9", "--teacher_concurrency", "0", "--min_past_weeks", "4"])
    with pytest.raises(dp.DataPipelineError) as caught:
        dp.validate_args(args)
    message = str(caught.value)
    for words in ("5 problems", "--start 'yesterday' is not a date", "'AAPL MSFT' is not a ticker",
                  "--max_news_per_week 9 must be 1..5", "--teacher_concurrency 0 must be >= 1",
                  "--min_past_weeks 4 is above --max_past_weeks 3"):
        assert words in message, message
    with pytest.raises(dp.DataPipelineError, match="--start 2013-01-01 is after --end 2012-01-01"):
        dp.validate_args(dp.parse_args(["--out", str(tmp_path), "--start", "2013-01-01", "--end", "2012-01-01"]))
    dp.validate_args(dp.parse_args(["--out", str(tmp_path / "new")]))       # the defaults pass


def test_the_sample_range_the_flags_accept_is_the_range_that_builds(tmp_path):
    """README: prediction weeks can start 2004-09-12 ... 2013-02-24; one week either side is refused."""
    def problems(start, end):
        try:
            dp.validate_args(dp.parse_args(["--out", str(tmp_path / "ds"), "--start", start, "--end", end]))
        except dp.DataPipelineError as exc:
            return str(exc)
        return ""
    assert problems("2004-09-12", "2013-02-24") == ""
    assert "outside the offline sample" in problems("2004-09-05", "2013-02-24")
    assert "outside the offline sample" in problems("2004-09-12", "2013-03-03")
    first, _ = records.build_records(SampleSource(), ["GOOG"], "2004-09-12", "2004-09-12", progress=False)
    last, _ = records.build_records(SampleSource(), ["AAPL"], "2013-02-24", "2013-02-24", progress=False)
    assert len(first) == 1 and first[0]["label"] and len(last) == 1 and last[0]["label"]


@pytest.mark.parametrize("content, words", [
    ("", "empty file"),
    ("\n  \n", "not a JSON lines file"),
    ('{"prompt": "p", "answer": "a", "period": "x", "label": "up by 0-1%", "symbol": "A"}\n'
     '{"prompt": "p", "answer": "a", "period": "y", "symbol": "A"}\n', "1 row(s) have no 'label'"),
    ('{"prompt": 1, "answer": "a", "period": "x", "label": "up by 0-1%", "symbol": "A"}\n', "'prompt' holds int64"),
])
def test_unreadable_or_incomplete_json_lines_are_one_error_naming_the_file(content, words, tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    assert dp.main(["--check", str(path)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(path) in errors[0] and words in errors[0], errors


def test_keys_come_from_the_dotenv_of_the_folder_you_run_in(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FINNHUB_KEY", raising=False)
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    args = ["--source", "finnhub", "--tickers", "AAA", "--out", "ds", "--finnhub_calls_per_minute", "0"]
    assert dp.main(args) == 1                                   # no .env yet: both problems named
    assert "FINNHUB_KEY" in capsys.readouterr().err
    (tmp_path / ".env").write_text("FINNHUB_KEY=from-a-dotenv-file\n")   # a parent of the folder run in
    assert dp.main(args) == 1
    err = capsys.readouterr().err
    assert "FINNHUB_KEY" not in err and "--finnhub_calls_per_minute 0 must be >= 1" in err


def test_a_bug_keeps_its_traceback_instead_of_becoming_an_error_line(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("a bug, not a user mistake")
    monkeypatch.setattr(records, "build_records", broken)
    with pytest.raises(KeyError, match="a bug"):
        dp.main(["--out", str(tmp_path / "ds"), "--start", "2012-06-03", "--end", "2012-09-30"])


# The bad-input table (--check, --source sample/finnhub) is in tests/test_bad_input.py, beside every other CLI's.


class CountingTeacher(OfflineTeacher):
    """Offline answers, but the first answer for each id is empty (a flaky teacher)."""
    def __init__(self):
        self.asked = []

    def answer(self, request):
        self.asked.append(request["id"])
        if self.asked.count(request["id"]) == 1:
            return ""
        return super().answer(request)


def test_teacher_journal_resumes_without_asking_twice_and_retries_empty_answers(tmp_path):
    built, _ = records.build_records(SampleSource(), ["IBM"], "2012-03-04", "2012-04-29", progress=False)
    requests = [dp.teacher_request(r, "hindsight") for r in built]
    journal = tmp_path / "journal.jsonl"
    teacher = CountingTeacher()
    answers, failures, stats = dp.label_with_teacher(requests[:4], teacher, journal, retries=1, progress=False)
    assert len(answers) == 4 and not failures and len(teacher.asked) == 8
    with open(journal, "a") as f:
        f.write('{"id": "torn line')              # a kill mid-write leaves a partial line
    teacher2 = CountingTeacher()
    answers2, failures2, stats2 = dp.label_with_teacher(requests, teacher2, journal, retries=1, progress=False)
    assert len(answers2) == len(requests) and stats2["resumed_from_journal"] == 4
    assert set(teacher2.asked) == {r["id"] for r in requests[4:]}
    assert all(parse_answer(a).ok for a in answers2.values())


def test_teacher_failures_are_reported_never_written_as_rows(tmp_path):
    class Silent:
        name, model = "silent", "silent"
        def answer(self, request):
            return "   "
    built, _ = records.build_records(SampleSource(), ["IBM"], "2012-03-04", "2012-03-25", progress=False)
    requests = [dp.teacher_request(r, "blind") for r in built]
    answers, failures, _ = dp.label_with_teacher(requests, Silent(), tmp_path / "j.jsonl", retries=2,
                                                 progress=False)
    assert answers == {} and set(failures) == {r["id"] for r in requests}
    assert all(v.count("empty answer") == 3 for v in failures.values())
    assert not (tmp_path / "j.jsonl").read_text().strip()


def test_blind_offline_teacher_predicts_last_weeks_direction_without_the_label(tmp_path):
    built, _ = records.build_records(SampleSource(), ["MSFT"], "2012-03-04", "2012-05-27", progress=False)
    for rec in built:
        req = dp.teacher_request(rec, "blind")
        assert rec["label"] not in req["user"]
        parsed = parse_answer(dp.check_teacher_answer(OfflineTeacher().answer(req), req))
        last = rec["weeks"][-1]
        assert parsed.direction == ("up" if last["end_price"] >= last["start_price"] else "down")


def test_offline_answers_stay_short_enough_for_a_1024_token_demo(sample_build):
    dd = load_forecast_dataset(sample_build)
    assert max(len(a) for a in dd["train"]["answer"]) < 900     # ~200 tokens at ~4.5 chars/token
    assert max(len(p) for p in dd["train"]["prompt"]) < 4200


def test_live_record_forecasts_the_week_after_a_date_from_past_information_only():
    source = SampleSource()
    rec = records.live_record(source, "AAPL", "2012-05-03", n_weeks=3, use_basics=True)
    assert rec["curday"] == "2012-05-06" and rec["period"] == "2012-05-06 to 2012-05-13"
    assert len(rec["weeks"]) == 3 and rec["weeks"][-1]["end"] == "2012-05-06"
    assert rec["news_last"] < "2012-05-06" and rec["price_asof"] <= "2012-05-06"
    assert rec["financials_available"] < "2012-05-06" and rec["label"]       # history: label known
    prompt = records.inference_prompt(rec)
    assert "next week (2012-05-06 to 2012-05-13)" in prompt
    assert records.live_record(source, "AAPL", "2012-05-03")["financials"] is None   # --use_basics off


def test_live_record_for_a_week_beyond_the_data_has_no_label():
    rec = records.live_record(SampleSource(), "IBM", "2013-02-28", n_weeks=2)
    assert rec["label"] is None and rec["weekly_return"] is None and len(rec["weeks"]) == 2


def test_the_doctests_of_the_data_modules_pass():
    """Week finality, fiscal quarters of 52/53-week years, coverage shares: the worked examples hold."""
    import doctest

    import market_calendar
    import sources
    for module in (market_calendar, sources, records):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
