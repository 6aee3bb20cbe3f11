"""Shared fixtures: the converted embedded model (once per session) and a tiny forecasting dataset.

All state lives under temp dirs: FORECASTER_CACHE points at a session cache unless the caller set it
(CI can set it to a shared folder so the GGUF is converted once across runs).
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")           # tests never touch a hub
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SYMBOLS = ("AAPL", "MSFT")
WEEK_STARTS = ("2024-01-07", "2024-01-14", "2024-01-21", "2024-01-28", "2024-02-04", "2024-02-11",
               "2024-02-18", "2024-02-25", "2024-03-03", "2024-03-10", "2024-03-17", "2024-03-24")
LABELS = ("up by 0-1%", "down by 1-2%", "up by 2-3%", "down by more than 5%", "up by 1-2%", "down by 0-1%")


@pytest.fixture(scope="session")
def forecaster_cache(tmp_path_factory):
    """A cache folder for the converted embedded model (FORECASTER_CACHE wins when set)."""
    if os.environ.get("FORECASTER_CACHE"):
        return Path(os.environ["FORECASTER_CACHE"])
    path = tmp_path_factory.mktemp("forecaster-cache")
    os.environ["FORECASTER_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def embedded_model_dir(forecaster_cache):
    """The embedded SmolLM2 converted once to a bf16 safetensors folder."""
    import models
    return models.embedded_model_dir(forecaster_cache)


@pytest.fixture(scope="session")
def embedded_tokenizer(embedded_model_dir):
    import models
    return models.load_tokenizer("smollm2-135m")


def _next_day(day, days):
    import datetime as dt
    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()


def make_user_prompt(symbol, week_index, n_weeks=2, news_per_week=2, filler_words=0):
    """A user prompt in the public dataset's layout: intro, n past weeks of news, financials, instruction.
    filler_words lengthens every news summary (for over-long examples)."""
    start = WEEK_STARTS[week_index]
    intro = (f"[Company Introduction]:\n\n{symbol} Inc is a leading entity in the Technology sector. "
             f"{symbol} operates primarily in the US, trading under the ticker {symbol} on the NASDAQ.")
    weeks = []
    for k in range(n_weeks, 0, -1):
        a, b = _next_day(start, -7 * k), _next_day(start, -7 * (k - 1))
        news = "\n".join(f"[Headline]: {symbol} item {j} of week {a}\n[Summary]: {symbol} reported "
                         f"steady demand and new products in week {a}. " + "word " * filler_words
                         for j in range(news_per_week))
        weeks.append(f"From {a} to {b}, {symbol}'s stock price increased from 100.00 to 101.00. Company news "
                     f"during this period are listed below:\n\n{news}")
    financials = (f"Some recent basic financials of {symbol}, for the fiscal quarter ended 2023-09-30, are "
                  "presented below:\n\n[Basic Financials]:\n\ncurrentRatio: 1.1\nnetMargin: 0.25")
    instruction = (f"Based on all the information before {start}, let's first analyze the positive developments "
                   f"and potential concerns for {symbol}. Then make your prediction of the {symbol} stock "
                   f"price movement for next week ({start} to {_next_day(start, 7)}).")
    return "\n\n".join([intro] + weeks + [financials]) + "\n\n" + instruction


def make_answer(symbol, label):
    return (f"[Positive Developments]:\n1. {symbol} shows steady demand.\n2. New products launched.\n\n"
            f"[Potential Concerns]:\n1. Competition is rising.\n\n[Prediction & Analysis]:\n"
            f"Prediction: {label[0].upper() + label[1:]}\nAnalysis: Demand outweighs competition this week.")


def make_rows(week_indices, system=None, **prompt_kwargs):
    from prompt import SYSTEM_PROMPT, wrap_public_prompt
    system = system or SYSTEM_PROMPT
    rows = []
    for w in week_indices:
        for s, symbol in enumerate(SYMBOLS):
            start = WEEK_STARTS[w]
            label = LABELS[(w + s) % len(LABELS)]
            rows.append({"prompt": wrap_public_prompt(system, make_user_prompt(symbol, w, **prompt_kwargs)),
                         "answer": make_answer(symbol, label), "period": f"{start} to {_next_day(start, 7)}",
                         "label": label, "symbol": symbol})
    return rows


@pytest.fixture(scope="session")
def tiny_forecast_dataset(tmp_path_factory):
    """A save_to_disk DatasetDict: train 12 rows (6 weeks x 2 symbols), validation 4, test 4."""
    from datasets import Dataset, DatasetDict
    path = tmp_path_factory.mktemp("tiny-dataset") / "dataset"
    dd = DatasetDict({"train": Dataset.from_list(make_rows(range(0, 6))),
                      "validation": Dataset.from_list(make_rows(range(6, 8))),
                      "test": Dataset.from_list(make_rows(range(8, 10)))})
    dd.save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def short_forecast_dataset(tmp_path_factory):
    """Like tiny_forecast_dataset but ~150 tokens per example (short system prompt, one news item per
    week), so CPU training tests stay fast."""
    from datasets import Dataset, DatasetDict
    path = tmp_path_factory.mktemp("short-dataset") / "dataset"
    short = dict(system="You are a stock analyst. Answer in the usual three sections.", news_per_week=1)
    dd = DatasetDict({"train": Dataset.from_list(make_rows(range(0, 4), **short)),
                      "validation": Dataset.from_list(make_rows(range(4, 5), **short)),
                      "test": Dataset.from_list(make_rows(range(5, 6), **short))})
    dd.save_to_disk(str(path))
    return path
