"""The live sources: company profile, news and quarterly financials from Finnhub (finnhub-python), daily
prices from yfinance or the user's own CSV, joined by LiveSource behind the source seam (sources.py).

Their shared plumbing lives here too: a disk cache that never stores the key, a sliding-window rate limiter,
retries with backoff, key redaction, and each service's spelling of share-class symbols (SYMBOL_MAPS:
Finnhub BRK.B, Yahoo BRK-B).
"""
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections import Counter, deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

import market_calendar
from errors import ForecasterError
from models import cache_root

# ---------------------------------------------------------------------------------------------
# Shared plumbing (disk cache, rate limit, retries, redaction, symbol spelling)
# ---------------------------------------------------------------------------------------------
FINNHUB_CALLS_PER_MINUTE = 55        # free plan says 60; Finnhub has answered 429 below that (Finnhub-API #466)
FINNHUB_TIMEOUT_S = 10
FINNHUB_MAX_ATTEMPTS = 6             # per call, with exponential backoff + jitter
NEWS_CALL_CAP = 250                  # company-news returns only the newest ~250 items per call (undocumented)
NEWS_CAP_MIN_ITEMS = 100             # a response this long whose oldest item is more than NEWS_CAP_SLACK_DAYS
NEWS_CAP_SLACK_DAYS = 4              # after the range start (a long weekend) may be capped below
                                     # NEWS_CALL_CAP: the older part is fetched too (one call if it was not)
UNFINISHED_TTL_S = 30 * 60           # a response that reaches into the unfinished present expires after this
PLAN_REFUSAL_TTL_DAYS = 30           # a 403 'not in your plan' is remembered this long (then asked again)
YF_MAX_ATTEMPTS = 5                  # yfinance: attempts per range on rate limits / transient errors
YF_BACKOFF_S = 5.0                   # first wait; doubles per attempt (5, 10, 20, 40 s)


def _share_class(separator):
    """BRK.B / BRK-B / BRK/B -> the source's spelling. Only a one-letter A-C class suffix is touched, so
    exchange suffixes such as VOD.L or SHOP.TO stay as written."""
    pattern = re.compile(r"^([A-Z]{1,5})[.\-/]([A-C])$")
    return lambda symbol: pattern.sub(rf"\g<1>{separator}\g<2>", symbol.upper())


# One symbol map per source: our symbols are written as the user (or indices.py) writes them.
SYMBOL_MAPS = {"finnhub": _share_class("."), "yahoo": _share_class("-")}

# Quarterly series that are amounts of money (the rest are ratios, margins or turnovers): shown with the
# reporting currency when it is not USD.
MONETARY_METRIC = re.compile(r"^(bookValue|tangibleBookValue|eps|ev|ebitda|revenue|netIncome)$|PerShare")


def default_cache_dir():
    """$FORECASTER_CACHE or ~/.cache/fingpt-forecaster: the one cache root (models.py owns the rule)."""
    return cache_root()


def redact(text, secrets=()):
    """Remove API keys from anything that may be printed or stored (error messages carry URLs)."""
    text = re.sub(r"(token|apikey|api_key|key)=([^&\s'\"]+)", r"\1=***", str(text), flags=re.I)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class SourceFatalError(ForecasterError, RuntimeError):
    """No call to this source can succeed (a rejected key): stop the whole build, not one ticker."""


class UnknownSymbolError(ForecasterError, KeyError):
    """A source has no such symbol, or no data for it in the range asked: the build skips that ticker, a live
    forecast stops with one `Error:` line. A KeyError, as the source protocol has always signalled it."""

    def __str__(self):                          # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SourceUnavailableError(ForecasterError, RuntimeError):
    """A source cannot answer now (a package missing, retries exhausted): the message says what to do."""


class FinnhubError(ForecasterError, RuntimeError):
    """One failed Finnhub call (after retries), key removed; `status` is the HTTP status or None."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class DiskCache:
    """One JSON file per (endpoint, parameters). Keys never enter the cache, neither in contents nor in
    file names: callers pass only the request parameters, and the client adds the token itself. An entry
    fetched for a range that reaches into the unfinished present carries an expiry and is fetched again
    after it; every other entry is final."""

    def __init__(self, root, now=time.time):
        self.root = Path(root)
        self.now = now
        self.hits, self.misses = Counter(), Counter()

    def _path(self, endpoint, params):
        blob = json.dumps(params, sort_keys=True, default=str)
        digest = hashlib.sha256(f"{endpoint}|{blob}".encode()).hexdigest()[:20]
        return self.root / endpoint.strip("/").replace("/", "_") / f"{digest}.json"

    def _read(self, path):
        if not path.exists():
            return None
        entry = json.loads(path.read_text())
        expires = entry.get("expires_at")
        return entry if expires is None or expires > self.now() else None

    def _write(self, path, entry, ttl_s=None):
        if ttl_s is not None:
            entry["expires_at"] = self.now() + ttl_s
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        tmp.replace(path)      # atomic: a killed run never leaves a half-written cache entry

    def get_or_fetch(self, endpoint, params, fetch, ttl_s=None):
        """The cached response, or fetch() stored (for ttl_s seconds when given, else for good)."""
        path = self._path(endpoint, params)
        entry = self._read(path)
        if entry is not None:
            self.hits[endpoint] += 1
            return entry["response"]
        self.misses[endpoint] += 1
        response = fetch()
        self._write(path, {"endpoint": endpoint, "params": params, "response": response}, ttl_s)
        return response

    def plan_note_path(self, endpoint):
        return self.root / "_plan" / f"{endpoint.strip('/').replace('/', '_')}.json"

    def recall_refusal(self, endpoint):
        """The remembered 'not in your plan' note for an endpoint, or None."""
        entry = self._read(self.plan_note_path(endpoint))
        return entry["note"] if entry else None

    def remember_refusal(self, endpoint, note, ttl_s):
        self._write(self.plan_note_path(endpoint), {"endpoint": endpoint, "note": note}, ttl_s)


class RateLimiter:
    """At most `calls` calls in any `period` seconds (sliding window). Clock and sleep are injectable
    so tests and benchmarks never sleep for real."""

    def __init__(self, calls, period=60.0, clock=time.monotonic, sleep=time.sleep):
        self.calls, self.period, self.clock, self.sleep = calls, period, clock, sleep
        self.stamps, self.waited = deque(), 0.0
        self.lock = threading.Lock()

    def acquire(self):
        with self.lock:
            while True:
                now = self.clock()
                while self.stamps and now - self.stamps[0] >= self.period:
                    self.stamps.popleft()
                if len(self.stamps) < self.calls:
                    self.stamps.append(now)
                    return
                wait = self.period - (now - self.stamps[0])
                self.waited += wait
                self.sleep(wait)


class SimulatedClock:
    """A clock whose sleep advances time instantly (tests, benchmarks)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += max(0.0, seconds)


def _retryable(exc):
    import requests
    from finnhub.exceptions import FinnhubAPIException, FinnhubRequestException
    if isinstance(exc, FinnhubAPIException):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, (requests.Timeout, requests.ConnectionError, FinnhubRequestException))


def _news_day(item):
    return datetime.fromtimestamp(item["datetime"], timezone.utc).date()


def fiscal_quarter(period, anchors, tolerance_days=20):
    """Fiscal quarter (1-4) of a quarter ending on `period`, counted in ~91-day steps from the nearest
    anchor {quarter end: its fiscal quarter} (Finnhub's own `quarter` field of a filing, or a fiscal
    year end = quarter 4); None when no anchor lines up. Works for 52/53-week years, whose quarter ends
    move by a few days (a calendar-month rule can turn such a Q4 into a Q1).

    >>> year_ends = {"2022-09-24": 4, "2023-09-30": 4}
    >>> fiscal_quarter("2023-12-30", year_ends), fiscal_quarter("2024-09-28", year_ends)
    (1, 4)
    >>> fiscal_quarter("2023-10-01", {"2022-10-02": 4})     # a 53-week year ends in October: still Q4
    4
    """
    day = pd.Timestamp(period)
    best = None
    for end, quarter in anchors.items():
        gap = (day - pd.Timestamp(end)).days
        steps = round(gap / 91.31)
        off = abs(gap - steps * 91.31)
        if off <= tolerance_days and (best is None or off < best[0]):
            best = (off, (quarter - 1 + steps) % 4 + 1)
    return best[1] if best else None


def _nearest(period, by_end, tolerance_days=7):
    """The value in {end date: value} whose date is within tolerance of `period` (52/53-week years make
    the metric series and the filings disagree by a few days)."""
    day = pd.Timestamp(period)
    close = [(abs((pd.Timestamp(end) - day).days), value) for end, value in by_end.items()]
    close = [c for c in close if c[0] <= tolerance_days]
    return min(close, key=lambda c: c[0])[1] if close else None


class FinnhubData:
    """Company profile, news and quarterly financials from Finnhub (finnhub-python), cached on disk,
    rate-limited, retried with jittered exponential backoff on 429/5xx/timeouts/malformed JSON. A 401
    (rejected key) stops the build on the first call."""

    def __init__(self, api_key, cache_dir=None, base_url=None, calls_per_minute=FINNHUB_CALLS_PER_MINUTE,
                 clock=time.monotonic, sleep=time.sleep, max_attempts=FINNHUB_MAX_ATTEMPTS,
                 timeout_s=FINNHUB_TIMEOUT_S, backoff_s=1.0, news_cap=NEWS_CALL_CAP, now=None):
        import finnhub
        if not api_key:
            raise ValueError("Finnhub needs an API key: set FINNHUB_KEY in the environment or in .env")
        self._key = api_key
        self.client = finnhub.Client(api_key=api_key)
        base_url = base_url or os.environ.get("FINNHUB_BASE_URL")
        if base_url:
            self.client.API_URL = base_url.rstrip("/")
        self.client.DEFAULT_TIMEOUT = timeout_s
        self.now = now or (lambda: market_calendar.utc_now())   # wall clock (finality of ranges), not the limiter's
        self.cache = DiskCache(Path(cache_dir or default_cache_dir()) / "finnhub",
                               now=lambda: self.now().timestamp())
        self.limiter = RateLimiter(calls_per_minute, 60.0, clock, sleep)
        self.sleep, self.max_attempts, self.backoff_s = sleep, max_attempts, backoff_s
        self.news_cap = news_cap
        self.api_calls, self.retries = Counter(), Counter()
        self.capped_days, self.notes, self._profiles = {}, [], {}

    def _call(self, endpoint, params, method, final=True):
        from finnhub.exceptions import FinnhubAPIException
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

        def attempt():
            self.limiter.acquire()
            self.api_calls[endpoint] += 1
            return method(**params)

        def count_retry(state):
            self.retries[endpoint] += 1

        retrying = Retrying(retry=retry_if_exception(_retryable), stop=stop_after_attempt(self.max_attempts),
                            wait=wait_random_exponential(multiplier=self.backoff_s, max=60 * self.backoff_s),
                            sleep=self.sleep, before_sleep=count_retry, reraise=True)
        try:
            return self.cache.get_or_fetch(endpoint, params, lambda: retrying(attempt),
                                           ttl_s=None if final else UNFINISHED_TTL_S)
        except Exception as exc:   # one line, key removed, for the build report
            status = exc.status_code if isinstance(exc, FinnhubAPIException) else None
            if status == 401:
                raise SourceFatalError("Finnhub rejected the API key (401) on the first call: check FINNHUB_KEY "
                                       "in the environment or .env") from None
            raise FinnhubError(f"Finnhub {endpoint} {params.get('symbol', '')}: {redact(exc, [self._key])}",
                               status) from None

    def profile(self, symbol):
        data = self._call("profile2", {"symbol": SYMBOL_MAPS["finnhub"](symbol)}, self.client.company_profile2)
        if not data or not data.get("name"):
            raise UnknownSymbolError(f"{symbol}: Finnhub returned an empty profile ({{}}): the symbol is unknown "
                                     f"to Finnhub under the spelling {SYMBOL_MAPS['finnhub'](symbol)!r}, delisted, or "
                                     "listed outside North America (free plan); check it at finnhub.io or use "
                                     "--prices_csv with another source's symbol")
        self._profiles[symbol] = data
        # market cap / shares omitted on purpose: the API gives only today's values (look-ahead)
        return {"name": data["name"], "industry": data.get("finnhubIndustry") or "N/A",
                "ipo": data.get("ipo") or "N/A", "country": data.get("country") or "N/A",
                "exchange": data.get("exchange") or "N/A", "currency": data.get("currency") or "USD",
                "reporting_currency": data.get("estimateCurrency") or data.get("currency") or "USD",
                "ticker": data.get("ticker") or symbol}

    def news(self, symbol, start, end):
        """Items dated start <= day < end, complete under the per-call cap: a capped response keeps its
        complete newer days and the older part of the range is fetched again, down to a single day. A
        day that alone fills a response is recorded in `capped_days` (its newest items are kept)."""
        lo = pd.Timestamp(start).date()
        hi = (pd.Timestamp(end) - pd.Timedelta(days=1)).date()
        items, capped = self._news_range(SYMBOL_MAPS["finnhub"](symbol), lo, hi)
        if capped:
            self.capped_days[symbol] = sorted(set(self.capped_days.get(symbol, [])) | set(capped))
        out, seen = [], set()
        for n in items:
            if not n.get("datetime"):
                continue
            day = _news_day(n).isoformat()
            key = (day, n.get("headline"))
            if key in seen or not (start <= day < end):
                continue
            seen.add(key)
            out.append({"date": day, "headline": n.get("headline") or "", "summary": n.get("summary") or ""})
        return sorted(out, key=lambda n: n["date"])

    def _news_range(self, symbol, lo, hi):
        kept, capped = [], []
        while lo <= hi:
            params = {"symbol": symbol, "_from": lo.isoformat(), "to": hi.isoformat()}
            final = market_calendar.news_day_final(hi, self.now())
            items = self._call("company-news", params, self.client.company_news, final=final) or []
            days = [_news_day(n) for n in items if n.get("datetime")]
            if not days:
                kept += items
                break
            oldest = min(days)
            full = len(items) >= self.news_cap
            if not (full or (len(items) >= NEWS_CAP_MIN_ITEMS
                             and oldest > lo + timedelta(days=NEWS_CAP_SLACK_DAYS))):
                kept += items                 # below the cap: the whole range is here
                break
            if oldest >= hi:                  # one day fills the response: nothing older can come with it
                if full:
                    capped.append(hi.isoformat())
                kept += items
                hi -= timedelta(days=1)
                continue
            kept += [n for n, day in zip((n for n in items if n.get("datetime")), days) if day > oldest]
            hi = oldest                       # the oldest day may be partial: fetch it again with the rest
        return kept, capped

    def financials(self, symbol):
        """Quarterly series from /stock/metric; filing dates and fiscal quarters from
        /stock/financials-reported where the plan has them (a 403 there is remembered in the cache);
        else the fiscal quarter is counted from the annual series' year ends. Amounts of money are shown
        with the reporting currency when it is not USD."""
        fsym = SYMBOL_MAPS["finnhub"](symbol)
        data = self._call("metric", {"symbol": fsym, "metric": "all"}, self.client.company_basic_financials)
        series = (data or {}).get("series") or {}
        by_period = {}
        for metric, values in (series.get("quarterly") or {}).items():
            for v in values or []:
                if v.get("period") and v.get("v") is not None:
                    by_period.setdefault(v["period"], {})[metric] = round(float(v["v"]), 4)
        annual_ends = sorted({v["period"] for values in (series.get("annual") or {}).values()
                              for v in values or [] if v.get("period")})
        filed, quarters = self._filings(fsym)
        currency = (data or {}).get("currency") or self._reporting_currency(symbol)
        out = []
        for period, metrics in sorted(by_period.items()):
            if currency and currency != "USD":
                metrics = {k: (f"{v} {currency}" if MONETARY_METRIC.search(k) else v) for k, v in metrics.items()}
            quarter = fiscal_quarter(period, quarters) or fiscal_quarter(period, {e: 4 for e in annual_ends})
            out.append({"period": period, "filed": _nearest(period, filed), "fiscal_quarter": quarter,
                        "metrics": metrics, "currency": currency or "USD"})
        return out

    def _filings(self, fsym):
        """({period end: filing date}, {period end: fiscal quarter}) from financials-reported."""
        endpoint = "financials-reported"
        refusal = self.cache.recall_refusal(endpoint)
        if refusal:
            self._note(refusal)
            return {}, {}
        try:
            reported = self._call(endpoint, {"symbol": fsym, "freq": "quarterly"}, self.client.financials_reported)
        except FinnhubError as exc:
            if exc.status == 403:
                until = (self.now() + pd.Timedelta(days=PLAN_REFUSAL_TTL_DAYS)).strftime("%Y-%m-%d")
                note = (f"Finnhub answered 403 to {endpoint} (not in this key's plan), remembered until {until} "
                        f"in {self.cache.plan_note_path(endpoint)} (delete it after upgrading the plan); "
                        "filing dates fall back to period end + the reporting lag")
                self.cache.remember_refusal(endpoint, note, PLAN_REFUSAL_TTL_DAYS * 86400)
                self._note(note)
            return {}, {}   # filing dates are optional: the lag rule applies without them
        filed, quarters = {}, {}
        for r in (reported or {}).get("data") or []:
            end = str(r.get("endDate") or "")[:10]
            if not end:
                continue
            if r.get("filedDate"):
                filed[end] = str(r["filedDate"])[:10]
            if r.get("quarter") in (1, 2, 3, 4):
                quarters[end] = int(r["quarter"])
        return filed, quarters

    def _reporting_currency(self, symbol):
        data = self._profiles.get(symbol)
        if data is None:
            try:
                self.profile(symbol)
            except (KeyError, FinnhubError):
                return None
            data = self._profiles[symbol]
        return data.get("estimateCurrency") or data.get("currency")

    def _note(self, note):
        if note not in self.notes:
            self.notes.append(note)
            print(f"note: {note}", file=sys.stderr)

    def stats(self):
        return {"api_calls": dict(self.api_calls), "retries": dict(self.retries),
                "cache_hits": dict(self.cache.hits), "cache_misses": dict(self.cache.misses),
                "rate_limit_wait_s": round(self.limiter.waited, 1),
                "news_capped_days": {s: list(d) for s, d in self.capped_days.items()},
                "notes": list(self.notes)}


def _yfinance_history(symbol, start, end):
    """Daily bars through yfinance's Ticker.history with its exceptions raised: yf.download() catches
    them, prints "1 Failed download" and returns an empty frame, so a rate limit (YFRateLimitError)
    would look like an unknown ticker."""
    import yfinance as yf
    hidden = yf.config.debug.hide_exceptions
    yf.config.debug.hide_exceptions = False
    try:
        return yf.Ticker(symbol).history(start=start, end=end, interval="1d", auto_adjust=True, actions=False)
    finally:
        yf.config.debug.hide_exceptions = hidden


class YFinancePrices:
    """Daily adjusted closes from yfinance, cached as JSON per (symbol, range). yfinance uses curl_cffi,
    which HTTP caches cannot intercept, so its frames are cached here; a range that reaches into sessions
    not yet final is cached for UNFINISHED_TTL_S only. `download(symbol, start, end)` is the seam: it
    returns a frame or raises yfinance's own exceptions. Rate limits and transient errors are retried
    with exponential backoff; a ticker is called unknown only when Yahoo says so."""

    def __init__(self, cache_dir=None, download=_yfinance_history, sleep=time.sleep, now=None,
                 max_attempts=YF_MAX_ATTEMPTS, backoff_s=YF_BACKOFF_S):
        self.cache = DiskCache(Path(cache_dir or default_cache_dir()) / "yfinance",
                               now=lambda: self.now().timestamp())
        self.download, self.sleep, self.now = download, sleep, now or (lambda: market_calendar.utc_now())
        self.max_attempts, self.backoff_s = max_attempts, backoff_s
        self.retries, self.waited = Counter(), 0.0

    @property
    def hits(self):
        return sum(self.cache.hits.values())

    @property
    def misses(self):
        return sum(self.cache.misses.values())

    def prices(self, symbol, start, end):
        start, end = pd.Timestamp(start).strftime("%Y-%m-%d"), pd.Timestamp(end).strftime("%Y-%m-%d")
        ysym = SYMBOL_MAPS["yahoo"](symbol)
        final = market_calendar.range_is_final(end, self.now())
        closes = self.cache.get_or_fetch("daily", {"symbol": ysym, "start": start, "end": end},
                                         lambda: self._fetch(symbol, ysym, start, end),
                                         ttl_s=None if final else UNFINISHED_TTL_S)
        series = pd.Series(closes, dtype=float)
        series.index = pd.to_datetime(series.index)
        return series.sort_index().rename(symbol)

    def _fetch(self, symbol, ysym, start, end):
        from yfinance.exceptions import YFRateLimitError, YFTickerMissingError
        wait, last = self.backoff_s, None
        for attempt in range(1, self.max_attempts + 1):
            try:
                frame = self.download(ysym, start, end)
                break
            except YFTickerMissingError as exc:       # Yahoo's own answer: no timezone / no prices
                raise UnknownSymbolError(f"{symbol}: Yahoo has no prices for {ysym} {start} .. {end} "
                                         f"({exc})") from None
            except Exception as exc:  # noqa: BLE001 - rate limits and network errors: back off, try again
                last = exc
                if attempt == self.max_attempts:
                    if isinstance(exc, YFRateLimitError):
                        raise SourceUnavailableError(
                            f"{symbol}: Yahoo rate-limited every attempt ({self.max_attempts} over "
                            f"{self.waited:.0f} s of backoff); this is not an unknown ticker: re-run later "
                            "(finished tickers are cached) or pass --prices_csv") from None
                    raise SourceUnavailableError(f"{symbol}: yfinance failed {self.max_attempts} times: "
                                                 f"{type(exc).__name__}: {exc}") from None
                self.retries["rate_limit" if isinstance(exc, YFRateLimitError) else "error"] += 1
                self.sleep(wait)
                self.waited += wait
                wait *= 2
        if frame is None or frame.empty:
            raise UnknownSymbolError(f"{symbol}: yfinance returned no prices for {start} .. {end} "
                                     f"(last error: {last})" if last else
                                     f"{symbol}: yfinance returned no prices for {start} .. {end}")
        if isinstance(frame.columns, pd.MultiIndex):       # ('Close', 'AAPL') even for one ticker
            frame = frame.xs(ysym, axis=1, level=-1) if ysym in frame.columns.get_level_values(-1) \
                else frame.droplevel(-1, axis=1)
        column = "Close" if "Close" in frame.columns else "Adj Close"   # auto_adjust=True: Close is adjusted
        closes = frame[column].dropna().astype(float)
        index = pd.to_datetime(closes.index)
        index = index.tz_localize(None) if index.tz is not None else index
        return {d.strftime("%Y-%m-%d"): float(v) for d, v in zip(index, closes.to_numpy())}

    def stats(self):
        return {"cache_hits": self.hits, "cache_misses": self.misses, "retries": dict(self.retries),
                "backoff_wait_s": round(self.waited, 1)}


PRICES_CSV_COLUMNS = ("date", "symbol", "close")


class CsvPrices:
    """Your own daily prices: a CSV with columns date, symbol, close (adjusted)."""

    def __init__(self, path):
        frame = pd.read_csv(path)
        missing = set(PRICES_CSV_COLUMNS) - set(c.lower() for c in frame.columns)
        if missing:
            raise ValueError(f"--prices_csv {path}: missing column(s) {', '.join(sorted(missing))} "
                             "(need date, symbol, close)")
        frame.columns = [c.lower() for c in frame.columns]
        frame["date"] = pd.to_datetime(frame["date"])
        self.by_symbol = {s: g.set_index("date")["close"].sort_index() for s, g in frame.groupby("symbol")}

    def prices(self, symbol, start, end):
        if symbol not in self.by_symbol:
            raise UnknownSymbolError(f"{symbol}: not in the prices CSV")
        return self.by_symbol[symbol].loc[pd.Timestamp(start):pd.Timestamp(end)].rename(symbol)


class LiveSource:
    """Prices from yfinance (or a CSV), everything else from Finnhub."""
    name = "finnhub"

    def __init__(self, finnhub_data, prices):
        self.finnhub, self.price_source = finnhub_data, prices

    def prices(self, symbol, start, end):
        return self.price_source.prices(symbol, start, end)

    def profile(self, symbol):
        return self.finnhub.profile(symbol)

    def news(self, symbol, start, end):
        return self.finnhub.news(symbol, start, end)

    def financials(self, symbol):
        return self.finnhub.financials(symbol)

    def stats(self):
        out = self.finnhub.stats()
        if isinstance(self.price_source, YFinancePrices):
            out["yfinance"] = self.price_source.stats()
        return out
