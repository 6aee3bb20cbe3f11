"""The offline sample source: real daily prices from the `bokeh-sampledata` package (public domain; AAPL,
MSFT, IBM, GOOG, 2004-08-19 ... 2013-03-01 in common), company profiles written here, and SAMPLE news
generated only from price and volume data dated before each item's date. It answers the four questions of
the source seam (sources.py) without a network. It is for demonstrating and testing the pipeline; forecasts
trained on it carry no signal.
"""
import importlib.util
import random
from pathlib import Path

import pandas as pd

from live_sources import SourceUnavailableError, UnknownSymbolError

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
        raise SourceUnavailableError("the offline sample source needs the `bokeh-sampledata` package: "
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
            raise UnknownSymbolError(f"{symbol}: not in the offline sample (it has "
                                     f"{', '.join(SAMPLE_TICKERS)})")
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
