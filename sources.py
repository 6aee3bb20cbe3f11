"""Data sources behind one small seam each: prices, company profile, news, quarterly financials.

Every source answers the same four questions, so data_pipeline.py builds prompts the same way from
any of them (only the source and the teacher differ):

    prices(symbol, start, end)   -> pandas.Series of daily (adjusted) closes, DatetimeIndex, ascending
    profile(symbol)              -> {name, industry, ipo, country, exchange, currency, ticker,
                                     reporting_currency (optional), shares_outstanding (millions, optional)}
    news(symbol, start, end)     -> [{date 'YYYY-MM-DD', headline, summary}] dated start <= date < end
    financials(symbol)           -> [{period 'YYYY-MM-DD' (quarter end), filed 'YYYY-MM-DD' | None,
                                      fiscal_quarter 1-4 | None, metrics {name: value}}]

Symbols are written as the user (or indices.py) writes them; each live source spells them its own way
through SYMBOL_MAPS (Finnhub BRK.B, Yahoo BRK-B).

The sources themselves live in two modules: sample_source.py (offline: bokeh-sampledata prices, written
profiles, sample news made from past prices only) and live_sources.py (Finnhub + yfinance or a prices
CSV, with their cache, rate limit and retries). This module opens one by name and is where the pipeline
imports their names from.
"""
import os

from live_sources import (FINNHUB_CALLS_PER_MINUTE, PRICES_CSV_COLUMNS, CsvPrices, FinnhubData, LiveSource,
                          SimulatedClock, SourceFatalError, YFinancePrices)
from models import CACHE_ENV as CACHE_DIR_ENV
from sample_source import SAMPLE_FIRST_DATE, SAMPLE_LAST_DATE, SAMPLE_TICKERS, SampleSource

# what data_pipeline.py, records.py, inference.py, bench/data_calls.py and tests/test_data_pipeline.py
# import from here (the classes' own modules are the owners)
__all__ = ["CACHE_DIR_ENV", "FINNHUB_CALLS_PER_MINUTE", "FINNHUB_KEY_ENV", "PRICES_CSV_COLUMNS", "SAMPLE_FIRST_DATE",
           "SAMPLE_LAST_DATE", "SAMPLE_TICKERS", "SOURCES", "FinnhubData", "SampleSource", "SimulatedClock",
           "SourceFatalError", "open_source"]

SOURCES = ("sample", "finnhub")
FINNHUB_KEY_ENV = "FINNHUB_KEY"


def open_source(name, prices_csv=None, cache_dir=None, calls_per_minute=FINNHUB_CALLS_PER_MINUTE,
                backoff_s=1.0, seed=0):
    """A source by name: 'sample' (offline) or 'finnhub' (Finnhub + yfinance or a prices CSV).

    >>> open_source("sample").name
    'sample'
    >>> open_source("yahoo")
    Traceback (most recent call last):
    ValueError: unknown source 'yahoo'; choose sample or finnhub
    """
    if name == "sample":
        return SampleSource(seed=seed)
    if name != "finnhub":
        raise ValueError(f"unknown source {name!r}; choose {' or '.join(SOURCES)}")
    finnhub_data = FinnhubData(os.environ.get(FINNHUB_KEY_ENV), cache_dir=cache_dir,
                               calls_per_minute=calls_per_minute, backoff_s=backoff_s)
    prices = CsvPrices(prices_csv) if prices_csv else YFinancePrices(cache_dir=cache_dir)
    return LiveSource(finnhub_data, prices)
