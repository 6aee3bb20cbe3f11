"""Which trading weeks are finished: the exchange calendar and the clock, in one place.

A week (Sunday to Sunday) gets a label only when its last trading session has closed and that close is
final. During market hours yfinance serves the live price as the day's Close, and a session that closed
minutes ago may still be revised, so "final" means closed at least PRICE_SETTLE_MINUTES ago. Sessions,
half days and holidays come from the `exchange_calendars` package (the NYSE calendar, XNYS; NASDAQ keeps
the same sessions). It was chosen over pandas_market_calendars because that package is built on top of
it: one dependency instead of two, and the same calendar data.

Everything that asks "what time is it" calls `utc_now()` here, so tests can pin the clock in one place.

    >>> import pandas as pd
    >>> wednesday_noon = pd.Timestamp("2024-04-24 16:00", tz="UTC")      # 12:00 in New York
    >>> first_unfinished_session(wednesday_noon).date().isoformat()      # Tuesday's close is final
    '2024-04-24'
    >>> last_completed_week_start(wednesday_noon).date().isoformat()     # 04-14 .. 04-21 is finished
    '2024-04-14'
"""
from functools import lru_cache

import pandas as pd

# ---------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------
CALENDAR = "XNYS"                  # NYSE sessions (holidays, half days); NASDAQ trades the same days
PRICE_SETTLE_MINUTES = 60          # a close is final this long after the session ends (closing prints,
                                   # late corrections); before that yfinance may still serve a live quote
NEWS_SETTLE_HOURS = 6              # a day's news (UTC) is taken as complete this long after midnight UTC
NEWS_HORIZON_DAYS = 365            # Finnhub's free plan serves company news for the last year only
DEFAULT_WEEKS = 52                 # live builds: the last 52 completed weeks


def utc_now():
    """The current time (tz-aware, UTC). The one clock of the data pipeline; tests pin it."""
    return pd.Timestamp.now(tz="UTC")


def _utc(now):
    now = utc_now() if now is None else pd.Timestamp(now)
    return now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")


@lru_cache(maxsize=4)
def exchange_calendar(name=CALENDAR):
    import exchange_calendars
    return exchange_calendars.get_calendar(name)


def first_unfinished_session(now=None, calendar=CALENDAR):
    """The first session (a tz-naive midnight date) whose close is not final at `now`: every session
    before it closed at least PRICE_SETTLE_MINUTES ago, it and every later one did not."""
    now = _utc(now)
    schedule = exchange_calendar(calendar).schedule
    window = schedule.loc[(now - pd.Timedelta(days=15)).tz_localize(None).normalize():
                          (now + pd.Timedelta(days=15)).tz_localize(None).normalize()]
    if window.empty:
        raise ValueError(f"{_date(now)} is outside the {calendar} calendar "
                         f"({_date(schedule.index[0])} .. {_date(schedule.index[-1])})")
    final = window["close"] + pd.Timedelta(minutes=PRICE_SETTLE_MINUTES) <= now
    pending = window.index[~final.to_numpy()]
    return pd.Timestamp(pending[0]) if len(pending) else pd.Timestamp(window.index[-1]) + pd.Timedelta(days=1)


def last_completed_week_start(now=None, calendar=CALENDAR):
    """The start Sunday of the latest Sunday-to-Sunday week whose every session has a final close."""
    unfinished = first_unfinished_session(now, calendar)
    last_sunday = unfinished - pd.Timedelta(days=(unfinished.dayofweek + 1) % 7)   # on or before it
    return last_sunday - pd.Timedelta(weeks=1)


def default_range(max_past_weeks, now=None, weeks=DEFAULT_WEEKS, horizon_days=NEWS_HORIZON_DAYS):
    """(--start, --end) of a live build: the last `weeks` completed weeks that lie inside the news
    horizon. The first `max_past_weeks` of them are only past weeks of the first prompt, so the first
    prediction week is `max_past_weeks` later; every news call then stays within the free plan's year."""
    now = _utc(now)
    end = last_completed_week_start(now)
    first = end - pd.Timedelta(weeks=weeks - 1)
    horizon = news_horizon(now, horizon_days)
    while first < horizon:
        first += pd.Timedelta(weeks=1)
    start = first + pd.Timedelta(weeks=max_past_weeks)
    if start > end:
        raise ValueError(f"only {(end - first).days // 7 + 1} completed weeks fit the news horizon; "
                         f"lower --max_past_weeks ({max_past_weeks})")
    return _date(start), _date(end)


def news_horizon(now=None, horizon_days=NEWS_HORIZON_DAYS):
    """The first day (tz-naive midnight) whose news the free plan still serves."""
    return _utc(now).tz_localize(None).normalize() - pd.Timedelta(days=horizon_days)


def range_is_final(end_exclusive, now=None, calendar=CALENDAR):
    """True when every session before `end_exclusive` (a date) has a final close: prices for such a
    range will not change (except through later split/dividend adjustment) and may be cached for good."""
    return pd.Timestamp(end_exclusive).normalize() <= first_unfinished_session(now, calendar)


def news_day_final(day, now=None):
    """True when the news of `day` (UTC date) is complete: the day ended NEWS_SETTLE_HOURS ago."""
    end = pd.Timestamp(day).normalize() + pd.Timedelta(days=1, hours=NEWS_SETTLE_HOURS)
    return _utc(now).tz_localize(None) >= end


def _date(x):
    return pd.Timestamp(x).strftime("%Y-%m-%d")
