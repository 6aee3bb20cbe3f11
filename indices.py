"""Ticker universes. This is the file to edit to add an index.

Adding an index = one list below and one entry in INDICES. Record the as-of date: index membership
changes over time, and applying today's members to past dates carries survivorship bias (companies that
left the index, often after falling, are missing from the history you build).
"""
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Index:
    name: str
    tickers: tuple
    as_of: str          # membership date the list reflects
    source: str         # where the list came from


def _read_members(filename):
    lines = (DATA_DIR / filename).read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


# Current Dow (AMZN replaced WBA 2024-02-26; NVDA replaced INTC and SHW replaced DOW 2024-11-08).
DOW_30 = _read_members("dow30.txt")

# The 30 tickers of the public dataset FinGPT/fingpt-forecaster-dow30-202305-202405.
DOW_30_2023 = (
    "AXP", "AMGN", "AAPL", "BA", "CAT", "CSCO", "CVX", "GS", "HD", "HON", "IBM", "INTC", "JNJ", "KO",
    "JPM", "MCD", "MMM", "MRK", "MSFT", "NKE", "PG", "TRV", "UNH", "CRM", "VZ", "V", "WBA", "WMT",
    "DIS", "DOW",
)

# 101 share classes (GOOG and GOOGL are one company: the data pipeline keeps one of them).
NASDAQ_100 = _read_members("nasdaq100-2026-08.txt")

INDICES = {
    "dow30": Index("dow30", DOW_30, "2024-11-08", "data/dow30.txt (last membership change known)"),
    "dow30_2023": Index("dow30_2023", DOW_30_2023, "2023-05-01",
                        "tickers of the public FinGPT Dow-30 dataset (2023-05 to 2024-05)"),
    "nasdaq100": Index("nasdaq100", NASDAQ_100, "2026-08-20", "data/nasdaq100-2026-08.txt"),
}


def get_index(name):
    """Look up an index by name, case-insensitively.

    >>> get_index("DOW30").tickers[:2]
    ('AAPL', 'AMGN')
    >>> get_index("ftse")
    Traceback (most recent call last):
    ...
    ValueError: unknown index 'ftse'; known indices: dow30, dow30_2023, nasdaq100 (add one in indices.py)
    """
    key = name.strip().lower().replace("-", "").replace(" ", "")
    aliases = {k.replace("_", ""): k for k in INDICES}
    key = aliases.get(key.replace("_", ""), key)
    if key not in INDICES:
        raise ValueError(f"unknown index {name!r}; known indices: {', '.join(INDICES)} "
                       f"(add one in indices.py)")
    return INDICES[key]
