"""Data sources behind one small seam each: prices, company profile, news, quarterly financials.

Every source answers the same four questions, so data_pipeline.py builds prompts the same way from
any of them (only the source and the teacher differ):

    prices(symbol, start, end)   -> pandas.Series of daily (adjusted) closes, DatetimeIndex, ascending
    profile(symbol)              -> {name, industry, ipo, country, exchange, currency, ticker,
                                     shares_outstanding (millions, optional)}
    news(symbol, start, end)     -> [{date 'YYYY-MM-DD', headline, summary}] dated start <= date < end
    financials(symbol)           -> [{period 'YYYY-MM-DD' (quarter end), filed 'YYYY-MM-DD' | None,
                                      fiscal_quarter 1-4 | None, metrics {name: value}}]

`SampleSource` is the offline one: real daily prices from the `bokeh-sampledata` package (public
domain; AAPL, MSFT, IBM, GOOG, 2004-08-19 ... 2013-03-01 in common), company profiles written here, and
SAMPLE news generated only from price and volume data dated before each item's date. It is for
demonstrating and testing the pipeline; forecasts trained on it carry no signal.
"""
import hashlib
import importlib.util
import json
import os
import random
import re
import threading
import time
from collections import Counter, deque
from pathlib import Path

import pandas as pd

# ---------------------------------------------------------------------------------------------
# Offline sample source
# ---------------------------------------------------------------------------------------------
SAMPLE_PROFILES = {
    # facts only (name at the time of the sample data, sector, IPO year, listing); no market cap:
    # a present-day constant shown for past weeks would be wrong, so the intro omits it
    "AAPL": {"name": "Apple Inc", "industry": "Technology", "ipo": "1980-12-12", "country": "US",
             "exchange": "NASDAQ NMS - GLOBAL MARKET", "currency": "USD", "ticker": "AAPL"},
    "MSFT": {"name": "Microsoft Corp", "industry": "Technology", "ipo": "1986-03-13", "country": "US",
             "exchange": "NASDAQ NMS - GLOBAL MARKET", "currency": "USD", "ticker": "MSFT"},
    "IBM": {"name": "International Business Machines Corp", "industry": "Technology",
            "ipo": "1915-11-11", "country": "US", "exchange": "NEW YORK STOCK EXCHANGE, INC.",
            "currency": "USD", "ticker": "IBM"},
    "GOOG": {"name": "Google Inc", "industry": "Media", "ipo": "2004-08-19", "country": "US",
             "exchange": "NASDAQ NMS - GLOBAL MARKET", "currency": "USD", "ticker": "GOOG"},
}
SAMPLE_TICKERS = tuple(SAMPLE_PROFILES)
SAMPLE_FIRST_DATE, SAMPLE_LAST_DATE = "2004-08-19", "2013-03-01"

# Generic headlines carry no price information; they make prompts look like real news mixes.
GENERIC_NEWS = [
    ("{name} to present at an upcoming industry conference",
     "{name} said members of its management team will speak at an investor conference."),
    ("Analysts review {name}'s position in the {industry} sector",
     "Sell-side analysts published notes discussing competition and margins in {industry}."),
    ("{name} announces a new product update",
     "{name} announced updates to part of its product line; terms were not disclosed."),
    ("{name} files routine regulatory documents",
     "{name} filed routine documents with the securities regulator."),
    ("{name} in the spotlight as the {industry} sector rotates",
     "Investors weighed {industry} names against the broader market during the week."),
    ("{name} expands partnership programme",
     "{name} described an expansion of its partner programme in a press release."),
]


def _sample_csv_path():
    spec = importlib.util.find_spec("bokeh_sampledata")
    if spec is None:
        raise RuntimeError("the offline sample source needs the `bokeh-sampledata` package: "
                           "pip install --no-deps bokeh-sampledata (make setup does this)")
    return Path(spec.submodule_search_locations[0]) / "_data" / "stocks.csv.gz"


class SampleSource:
    """Offline source: real prices (bokeh-sampledata), written profiles, generated sample news."""
    name = "sample"

    def __init__(self, seed=0):
        self.seed = seed
        self._daily = None
        self.calls = {}

    def _frame(self, symbol):
        if self._daily is None:
            df = pd.read_csv(_sample_csv_path(), parse_dates=["Date"])
            self._daily = {t: g.set_index("Date").sort_index() for t, g in df.groupby("Ticker")}
        if symbol not in SAMPLE_PROFILES or symbol not in self._daily:
            raise KeyError(f"{symbol}: not in the offline sample (it has {', '.join(SAMPLE_TICKERS)})")
        return self._daily[symbol]

    def prices(self, symbol, start, end):
        df = self._frame(symbol)
        return df.loc[pd.Timestamp(start):pd.Timestamp(end), "Adj Close"].rename(symbol)

    def profile(self, symbol):
        self._frame(symbol)
        return dict(SAMPLE_PROFILES[symbol])

    def news(self, symbol, start, end):
        """Sample news for days start <= day < end, each made only from data up to that day."""
        df = self._frame(symbol)
        profile = SAMPLE_PROFILES[symbol]
        name, industry = profile["name"], profile["industry"]
        start, end = pd.Timestamp(start), pd.Timestamp(end)
        # 260 trading days of history before the window for 52-week highs and volume averages
        hist = df.loc[start - pd.Timedelta(days=400):end - pd.Timedelta(days=1)]
        close, volume = hist["Adj Close"], hist["Volume"].astype(float)
        daily_ret = close.pct_change()
        avg_vol = volume.shift(1).rolling(20, min_periods=10).mean()
        high_52w = close.shift(1).rolling(252, min_periods=120).max()
        low_52w = close.shift(1).rolling(252, min_periods=120).min()
        items = []
        for day in hist.loc[start:].index:
            r, c, vr = daily_ret.get(day), close[day], volume[day] / avg_vol.get(day, float("nan"))
            date = day.strftime("%Y-%m-%d")
            weekday = day.strftime("%A")
            if pd.notna(r) and abs(r) >= 0.02:
                verb = "jump" if r > 0 else "slide"
                items.append({"date": date,
                              "headline": f"{name} shares {verb} {abs(r) * 100:.1f}% on {weekday}",
                              "summary": f"{name} ({symbol}) closed at ${c:.2f} on {date}, "
                                         f"{'up' if r > 0 else 'down'} {abs(r) * 100:.1f}% from the previous "
                                         f"session, on volume {vr:.1f}x its 20-day average."})
            elif pd.notna(vr) and vr >= 1.8:
                items.append({"date": date, "headline": f"Heavy trading in {name} shares",
                              "summary": f"Volume in {symbol} reached {vr:.1f}x its 20-day average on "
                                         f"{date}; the stock closed at ${c:.2f}."})
            if pd.notna(high_52w.get(day)) and c > high_52w[day]:
                items.append({"date": date, "headline": f"{name} hits a 52-week high",
                              "summary": f"{symbol} closed at ${c:.2f} on {date}, above its previous "
                                         f"52-week high of ${high_52w[day]:.2f}."})
            elif pd.notna(low_52w.get(day)) and c < low_52w[day]:
                items.append({"date": date, "headline": f"{name} falls to a 52-week low",
                              "summary": f"{symbol} closed at ${c:.2f} on {date}, below its previous "
                                         f"52-week low of ${low_52w[day]:.2f}."})
        # one or two generic items per window, on seeded trading days inside it
        days = list(hist.loc[start:].index)
        rng = random.Random(f"{self.seed}|{symbol}|{start.date()}|generic")
        for _ in range(rng.choice((1, 2)) if days else 0):
            headline, summary = rng.choice(GENERIC_NEWS)
            items.append({"date": rng.choice(days).strftime("%Y-%m-%d"),
                          "headline": headline.format(name=name, industry=industry),
                          "summary": summary.format(name=name, industry=industry)})
        return sorted(items, key=lambda n: n["date"])

    def financials(self, symbol):
        """Per calendar quarter, price-derived metrics computed from data up to the quarter end.
        The sample has no fundamentals; these stand in for them and go through the same
        availability rule (period end + reporting lag) as real quarterly financials."""
        df = self._frame(symbol)
        out = []
        for period_end, q in df.groupby(df.index.to_period("Q")):
            if len(q) < 40:   # partial quarter at the ends of the sample
                continue
            close = q["Adj Close"]
            out.append({
                "period": period_end.end_time.strftime("%Y-%m-%d"),
                "filed": None,
                "fiscal_quarter": period_end.quarter,
                "metrics": {
                    "quarterReturn": f"{(close.iloc[-1] / close.iloc[0] - 1) * 100:.2f}%",
                    "quarterHigh": round(float(close.max()), 2),
                    "quarterLow": round(float(close.min()), 2),
                    "dailyVolatility": f"{close.pct_change().std() * 100:.2f}%",
                    "avgDailyVolumeMillions": round(float(q["Volume"].mean()) / 1e6, 2),
                },
            })
        return out


# ---------------------------------------------------------------------------------------------
# Live sources: shared plumbing (disk cache, rate limit, retries, redaction)
# ---------------------------------------------------------------------------------------------

CACHE_DIR_ENV = "FORECASTER_CACHE"
FINNHUB_CALLS_PER_MINUTE = 60        # free plan; HTTP 429 past it
FINNHUB_TIMEOUT_S = 10
FINNHUB_MAX_ATTEMPTS = 6             # per call, with exponential backoff + jitter
NEWS_MIN_SPLIT_DAYS = 7              # never split a news range below a week
NEWS_CAP_MIN_ITEMS = 100             # a response this long whose oldest item is later than the range
NEWS_CAP_SLACK_DAYS = 4              # start (+ a long weekend) looks capped: split the range, fetch halves


def default_cache_dir():
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "fingpt-forecaster")


def redact(text, secrets=()):
    """Remove API keys from anything that may be printed or stored (error messages carry URLs)."""
    text = re.sub(r"(token|apikey|api_key|key)=([^&\s'\"]+)", r"\1=***", str(text), flags=re.I)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class DiskCache:
    """One JSON file per (endpoint, parameters). Keys never enter the cache: callers pass only the
    request parameters, and the client adds the token itself."""

    def __init__(self, root):
        self.root = Path(root)
        self.hits, self.misses = Counter(), Counter()

    def _path(self, endpoint, params):
        blob = json.dumps(params, sort_keys=True, default=str)
        digest = hashlib.sha256(f"{endpoint}|{blob}".encode()).hexdigest()[:20]
        return self.root / endpoint.strip("/").replace("/", "_") / f"{digest}.json"

    def get_or_fetch(self, endpoint, params, fetch):
        path = self._path(endpoint, params)
        if path.exists():
            self.hits[endpoint] += 1
            return json.loads(path.read_text())["response"]
        self.misses[endpoint] += 1
        response = fetch()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"endpoint": endpoint, "params": params, "response": response}))
        tmp.replace(path)      # atomic: a killed run never leaves a half-written cache entry
        return response


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


class FinnhubData:
    """Company profile, news and quarterly financials from Finnhub (finnhub-python), cached on disk,
    rate-limited, retried with jittered exponential backoff on 429/5xx/timeouts/malformed JSON."""

    def __init__(self, api_key, cache_dir=None, base_url=None, calls_per_minute=FINNHUB_CALLS_PER_MINUTE,
                 clock=time.monotonic, sleep=time.sleep, max_attempts=FINNHUB_MAX_ATTEMPTS,
                 timeout_s=FINNHUB_TIMEOUT_S, backoff_s=1.0):
        import finnhub
        if not api_key:
            raise ValueError("Finnhub needs an API key: set FINNHUB_KEY in the environment or in .env")
        self._key = api_key
        self.client = finnhub.Client(api_key=api_key)
        base_url = base_url or os.environ.get("FINNHUB_BASE_URL")
        if base_url:
            self.client.API_URL = base_url.rstrip("/")
        self.client.DEFAULT_TIMEOUT = timeout_s
        self.cache = DiskCache(Path(cache_dir or default_cache_dir()) / "finnhub")
        self.limiter = RateLimiter(calls_per_minute, 60.0, clock, sleep)
        self.sleep, self.max_attempts, self.backoff_s = sleep, max_attempts, backoff_s
        self.api_calls, self.retries = Counter(), Counter()

    def _call(self, endpoint, params, method):
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

        def attempt():
            self.limiter.acquire()
            self.api_calls[endpoint] += 1
            return method(**params)

        def count_retry(state):
            self.retries[endpoint] += 1

        retrying = Retrying(retry=retry_if_exception(_retryable), stop=stop_after_attempt(self.max_attempts),
                            wait=wait_random_exponential(multiplier=self.backoff_s, max=60 * self.backoff_s), sleep=self.sleep,
                            before_sleep=count_retry, reraise=True)
        try:
            return self.cache.get_or_fetch(endpoint, params, lambda: retrying(attempt))
        except Exception as exc:   # one line, key removed, for the build report
            raise RuntimeError(f"Finnhub {endpoint} {params.get('symbol', '')}: "
                               f"{redact(exc, [self._key])}") from None

    def profile(self, symbol):
        data = self._call("profile2", {"symbol": symbol}, self.client.company_profile2)
        if not data or not data.get("name"):
            raise KeyError(f"{symbol}: Finnhub knows no company with this symbol")
        # market cap / shares omitted on purpose: the API gives only today's values (look-ahead)
        return {"name": data["name"], "industry": data.get("finnhubIndustry") or "N/A",
                "ipo": data.get("ipo") or "N/A", "country": data.get("country") or "N/A",
                "exchange": data.get("exchange") or "N/A", "currency": data.get("currency") or "USD",
                "ticker": data.get("ticker") or symbol}

    def news(self, symbol, start, end):
        """Items dated start <= day < end, in as few calls as the API allows: one call for the whole
        range, halves fetched again where a response looks capped."""
        last = (pd.Timestamp(end) - pd.Timedelta(days=1)).strftime("%Y-%m-%d")
        items = self._news_range(symbol, pd.Timestamp(start), pd.Timestamp(last))
        out, seen = [], set()
        for n in items:
            if not n.get("datetime"):
                continue
            day = pd.Timestamp(n["datetime"], unit="s").strftime("%Y-%m-%d")
            key = (day, n.get("headline"))
            if key in seen or not (start <= day < end):
                continue
            seen.add(key)
            out.append({"date": day, "headline": n.get("headline") or "", "summary": n.get("summary") or ""})
        return sorted(out, key=lambda n: n["date"])

    def _news_range(self, symbol, lo, hi):
        params = {"symbol": symbol, "_from": lo.strftime("%Y-%m-%d"), "to": hi.strftime("%Y-%m-%d")}
        items = self._call("company-news", params, self.client.company_news) or []
        dated = [n["datetime"] for n in items if n.get("datetime")]
        oldest = pd.Timestamp(min(dated), unit="s").normalize() if dated else None
        capped = (len(items) >= NEWS_CAP_MIN_ITEMS and oldest is not None
                  and oldest > lo + pd.Timedelta(days=NEWS_CAP_SLACK_DAYS))
        if capped and (hi - lo).days >= 2 * NEWS_MIN_SPLIT_DAYS:
            mid = lo + (hi - lo) / 2
            mid = mid.normalize()
            return (self._news_range(symbol, lo, mid) + self._news_range(symbol, mid + pd.Timedelta(days=1), hi))
        return items

    def financials(self, symbol):
        """Quarterly series from /stock/metric, with filing dates from /stock/financials-reported where
        the API has them, and the fiscal quarter (Q4 = a quarter ending on a fiscal year end)."""
        data = self._call("metric", {"symbol": symbol, "metric": "all"}, self.client.company_basic_financials)
        series = (data or {}).get("series") or {}
        by_period = {}
        for metric, values in (series.get("quarterly") or {}).items():
            for v in values or []:
                if v.get("period") and v.get("v") is not None:
                    by_period.setdefault(v["period"], {})[metric] = round(float(v["v"]), 4)
        fy_months = Counter(v["period"][5:7] for values in (series.get("annual") or {}).values()
                            for v in values or [] if v.get("period"))
        fy_end_month = int(fy_months.most_common(1)[0][0]) if fy_months else None
        filed = {}
        try:
            reported = self._call("financials-reported", {"symbol": symbol, "freq": "quarterly"},
                                  self.client.financials_reported)
            for r in (reported or {}).get("data") or []:
                if r.get("endDate") and r.get("filedDate"):
                    filed[str(r["endDate"])[:10]] = str(r["filedDate"])[:10]
        except RuntimeError:
            pass   # filing dates are optional: the lag rule applies without them
        out = []
        for period, metrics in sorted(by_period.items()):
            quarter = None   # unknown fiscal calendar: the longer (Q4) lag applies
            if fy_end_month:
                quarter = (int(period[5:7]) - fy_end_month - 1) % 12 // 3 + 1
            out.append({"period": period, "filed": filed.get(period), "fiscal_quarter": quarter,
                        "metrics": metrics})
        return out

    def stats(self):
        return {"api_calls": dict(self.api_calls), "retries": dict(self.retries),
                "cache_hits": dict(self.cache.hits), "cache_misses": dict(self.cache.misses),
                "rate_limit_wait_s": round(self.limiter.waited, 1)}


def _yfinance_download(symbol, start, end):
    import yfinance as yf
    return yf.download(symbol, start=start, end=end, auto_adjust=True, progress=False, threads=False)


class YFinancePrices:
    """Daily adjusted closes from yfinance, cached as CSV per (symbol, range). yfinance uses curl_cffi,
    which HTTP caches cannot intercept, so its DataFrames are cached here. `download` is the seam."""

    def __init__(self, cache_dir=None, download=_yfinance_download):
        self.cache_root = Path(cache_dir or default_cache_dir()) / "yfinance"
        self.download = download
        self.hits = self.misses = 0

    def prices(self, symbol, start, end):
        start, end = pd.Timestamp(start).strftime("%Y-%m-%d"), pd.Timestamp(end).strftime("%Y-%m-%d")
        path = self.cache_root / f"{symbol}_{start}_{end}.csv"
        if path.exists():
            self.hits += 1
            s = pd.read_csv(path, index_col=0, parse_dates=True).iloc[:, 0]
            return s.rename(symbol)
        self.misses += 1
        frame = self.download(symbol, start, end)
        if frame is None or frame.empty:
            raise KeyError(f"{symbol}: yfinance returned no prices for {start} .. {end} "
                           "(unknown ticker, delisted, or offline)")
        if isinstance(frame.columns, pd.MultiIndex):       # ('Close', 'AAPL') even for one ticker
            frame = frame.xs(symbol, axis=1, level=-1) if symbol in frame.columns.get_level_values(-1) \
                else frame.droplevel(-1, axis=1)
        column = "Close" if "Close" in frame.columns else "Adj Close"   # auto_adjust=True: Close is adjusted
        closes = frame[column].dropna().astype(float)
        closes.index = pd.to_datetime(closes.index).tz_localize(None)
        path.parent.mkdir(parents=True, exist_ok=True)
        closes.rename("close").to_csv(path)
        return closes.rename(symbol)


class CsvPrices:
    """Your own daily prices: a CSV with columns date, symbol, close (adjusted)."""

    def __init__(self, path):
        frame = pd.read_csv(path)
        missing = {"date", "symbol", "close"} - set(c.lower() for c in frame.columns)
        if missing:
            raise ValueError(f"--prices_csv {path}: missing column(s) {', '.join(sorted(missing))} "
                             "(need date, symbol, close)")
        frame.columns = [c.lower() for c in frame.columns]
        frame["date"] = pd.to_datetime(frame["date"])
        self.by_symbol = {s: g.set_index("date")["close"].sort_index() for s, g in frame.groupby("symbol")}

    def prices(self, symbol, start, end):
        if symbol not in self.by_symbol:
            raise KeyError(f"{symbol}: not in the prices CSV")
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
            out["yfinance"] = {"cache_hits": self.price_source.hits, "cache_misses": self.price_source.misses}
        return out
