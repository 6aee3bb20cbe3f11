"""The leak rules at their edges (records.py), written after `make mutate-records` (TESTING.md) found mutants
no other test failed on: weekly windows around a late listing and a price gap, which news a past week shows,
which quarter a prompt shows under the build's lags, the point-in-time market cap and the provenance dates
the leak tests read."""
import random
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import records  # noqa: E402

SUNDAYS = [d.strftime("%Y-%m-%d") for d in pd.date_range("2024-01-07", periods=12, freq="W-SUN")]


def closes(first="2024-01-01", last="2024-03-29", skip=()):
    days = [d for d in pd.bdate_range(first, last) if d.strftime("%Y-%m-%d") not in skip]
    return pd.Series([100.0 + i for i in range(len(days))], index=pd.DatetimeIndex(days))


# ---------------------------------------------------------------------------------------------
# weekly_windows
# ---------------------------------------------------------------------------------------------
def test_a_stock_listed_mid_range_gets_its_weeks_from_its_first_price_on():
    weeks = records.weekly_windows(closes(first="2024-01-17"), SUNDAYS[0], SUNDAYS[5])
    assert [w["start"] for w in weeks] == SUNDAYS[2:5]              # 2024-01-21 is the first priced Sunday
    assert weeks[0]["start_price_date"] == "2024-01-19"


def test_a_week_without_any_close_is_a_gap_not_a_flat_week_and_the_weeks_around_it_stay():
    halted = [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2024-01-22", "2024-01-26")]
    weeks = records.weekly_windows(closes(skip=halted), SUNDAYS[0], SUNDAYS[6])
    starts = [w["start"] for w in weeks]
    assert "2024-01-21" not in starts                                # no close inside it: no return, no label
    assert starts[:2] == SUNDAYS[:2] and starts[-2:] == SUNDAYS[4:6]


def test_weekly_windows_use_no_pandas_feature_the_next_pandas_removes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a deprecated alias ('w-sun') warns today and fails tomorrow
        assert len(records.weekly_windows(closes(), SUNDAYS[0], SUNDAYS[3], unfinished_from="2024-03-01")) == 3


def test_sessions_from_the_first_unfinished_one_on_give_no_price_and_no_week():
    # 2024-01-24 (a Wednesday) has not closed finally yet: the week ending 01-28 must not get a label
    weeks = records.weekly_windows(closes(), SUNDAYS[0], SUNDAYS[6], unfinished_from="2024-01-24")
    assert [w["end"] for w in weeks] == SUNDAYS[1:3]
    assert weeks[-1]["end_price_date"] == "2024-01-19"


# ---------------------------------------------------------------------------------------------
# select_news
# ---------------------------------------------------------------------------------------------
def news(date, headline="H", summary="s"):
    return {"date": date, "headline": headline, "summary": summary}


def test_a_past_weeks_news_runs_from_its_start_sunday_up_to_but_not_including_the_next():
    items = [news("2024-01-06", "before"), news("2024-01-07T08:00:00", "on the start Sunday"),
             news("2024-01-10 15:30:00", "midweek"), news("2024-01-14", "next week"), news("2024-01-13", "sat")]
    kept = records.select_news(items, "2024-01-07", "2024-01-14", 5, random.Random(0))
    assert [(k["date"], k["headline"]) for k in kept] == [
        ("2024-01-07", "on the start Sunday"), ("2024-01-10", "midweek"), ("2024-01-13", "sat")]


def test_promotions_and_headline_less_items_are_dropped_and_a_missing_summary_is_empty():
    items = [news("2024-01-08", "Buy our research", records.PROMO_PREFIXES[0] + " Click here."),
             news("2024-01-08", None, "a summary without a headline"), news("2024-01-08", "", "empty headline"),
             news("2024-01-09", "  Real news  ", None), news("2024-01-09", "Other news", "  spaced summary  ")]
    kept = records.select_news(items, "2024-01-07", "2024-01-14", 5, random.Random(0))
    assert kept == [{"date": "2024-01-09", "headline": "Real news", "summary": ""},
                    {"date": "2024-01-09", "headline": "Other news", "summary": "spaced summary"}]


def test_a_headline_repeated_in_other_case_or_spacing_is_shown_once_first_come():
    items = [news("2024-01-08", "Apple beats  estimates", "first"), news("2024-01-09", "apple BEATS estimates ", "dup"),
             news("2024-01-10", "Apple misses estimates", "other")]
    kept = records.select_news(items, "2024-01-07", "2024-01-14", 5, random.Random(0))
    assert [k["summary"] for k in kept] == ["first", "other"]


# ---------------------------------------------------------------------------------------------
# latest_financials
# ---------------------------------------------------------------------------------------------
Q1 = {"period": "2024-03-31", "fiscal_quarter": 1, "metrics": {"eps": 1.0}}
Q4 = {"period": "2023-12-31", "fiscal_quarter": 4, "metrics": {"eps": 4.0}}


def test_the_builds_own_lags_decide_when_a_quarter_shows():
    # --financials_lag_days 10 --financials_lag_days_q4 20
    assert records.latest_financials([Q4], "2024-01-21", lag_days=10, lag_days_q4=20) == {
        "period": "2023-12-31", "available": "2024-01-20", "metrics": {"eps": 4.0}}
    assert records.latest_financials([Q4, Q1], "2024-04-11", lag_days=10, lag_days_q4=20)["period"] == "2024-03-31"
    assert records.latest_financials([Q4, Q1], "2024-04-10", lag_days=10, lag_days_q4=20)["period"] == "2023-12-31"


def test_the_newest_quarter_wins_even_when_an_older_one_was_filed_later():
    late_q3 = {"period": "2023-09-30", "filed": "2024-02-20", "metrics": {"eps": 3.0}}   # a late 10-Q
    q4 = dict(Q4, filed="2024-02-01")
    assert records.latest_financials([late_q3, q4], "2024-03-01")["period"] == "2023-12-31"


# ---------------------------------------------------------------------------------------------
# default_cutoffs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, val_fraction, test_fraction, val_i, test_i", [
    (4, 0.1, 0.75, 1, 2),      # round() alone: test from the 2nd week on, validation the 1st, train none
    (5, 0.5, 0.4, 1, 3),       # round() alone: validation from the 1st week on, train none
    (3, 0.05, 0.9, 1, 2),      # the fewest weeks: one each
])
def test_whatever_the_fractions_each_split_keeps_at_least_one_week(n, val_fraction, test_fraction, val_i, test_i):
    weeks = SUNDAYS[:n]
    assert records.default_cutoffs(weeks, val_fraction, test_fraction) == (weeks[val_i], weeks[test_i])


# ---------------------------------------------------------------------------------------------
# assemble_record
# ---------------------------------------------------------------------------------------------
def past_windows():
    return [{"start": SUNDAYS[0], "end": SUNDAYS[1], "start_price": 100.0, "end_price": 101.0},
            {"start": SUNDAYS[1], "end": SUNDAYS[2], "start_price": 101.0, "end_price": 99.0}]


TARGET = {"start": SUNDAYS[2], "end": SUNDAYS[3], "start_price": 99.0, "start_price_date": "2024-01-19",
          "weekly_return": 0.015}


def test_a_record_shows_the_quarter_filed_under_the_builds_lags_and_dates_what_it_shows():
    items = [news("2024-01-09", "one"), news("2024-01-16", "two"), news("2024-01-18", "three"),
             news("2024-01-22", "target week: never shown")]
    rec = records.assemble_record("AAA", {"name": "AAA Inc"}, past_windows(), items, [Q4], TARGET, 5,
                                  random.Random(0), lag_days=10, lag_days_q4=19)
    assert [[n["headline"] for n in w["news"]] for w in rec["weeks"]] == [["one"], ["two", "three"]]
    assert (rec["news_first"], rec["news_last"]) == ("2024-01-09", "2024-01-18")
    assert rec["financials"] == {"period": "2023-12-31", "available": "2024-01-19", "metrics": {"eps": 4.0}}
    assert (rec["financials_period"], rec["financials_available"]) == ("2023-12-31", "2024-01-19")
    assert (rec["curday"], rec["period"], rec["price_asof"]) == ("2024-01-21", "2024-01-21 to 2024-01-28",
                                                                "2024-01-19")
    assert rec["label"] == "up by 1-2%" and rec["weekly_return"] == 0.015


def test_a_record_without_news_or_a_filed_quarter_has_empty_provenance_dates():
    rec = records.assemble_record("AAA", {"name": "AAA Inc"}, past_windows(), [], [Q4], TARGET, 5,
                                  random.Random(0))                   # Q4 waits 90 days: not yet
    assert rec["financials"] is None
    assert [rec[k] for k in ("news_first", "news_last", "financials_period", "financials_available")] == [""] * 4


def test_market_cap_is_the_week_start_price_times_shares_and_dated_only_when_known():
    profile = {"name": "AAA Inc", "shares_outstanding": 50.0}
    rec = records.assemble_record("AAA", profile, past_windows(), [], [], TARGET, 5, random.Random(0))
    assert rec["profile"]["market_cap"] == 99.0 * 50.0 and rec["as_of"] == "2024-01-19"
    assert "market_cap" not in profile                               # the source's profile is left alone
    rec = records.assemble_record("AAA", {"name": "AAA Inc"}, past_windows(), [], [], TARGET, 5, random.Random(0))
    assert "market_cap" not in rec["profile"] and rec["as_of"] is None
