"""Dataset I/O and validation for forecasting datasets (the concept every stage reads).

One schema everywhere: five string columns `prompt, answer, period, label, symbol` (the public
FinGPT dataset's), extra columns kept, plus a stable `id` = "{symbol}|{period}". Loads a hub id, a
`save_to_disk` folder (DatasetDict or single split) or .jsonl/.json/.parquet files.
`summarize()` is what `python data_pipeline.py --check PATH` prints.
"""
import json
import re
import statistics
from collections import Counter
from pathlib import Path

from errors import ForecasterError
from prompt import BIN_LABELS, SECTION_HEADERS, label_to_code, parse_answer

REQUIRED_COLUMNS = ("prompt", "answer", "period", "label", "symbol")
PERIOD_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}) to (\d{4}-\d{2}-\d{2})$")
SPLIT_ORDER = ("train", "validation", "test")
ROW_COLUMNS = ("id", "symbol", "period", "label", "answer", "prompt")   # what the stages read of a row


class DatasetError(ForecasterError, ValueError):
    """A structural problem: the dataset cannot be used until it is fixed."""


def example_id(symbol, period):
    return f"{symbol}|{period}"


def _with_ids(ds, where):
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {', '.join(missing)}; a forecasting dataset needs "
                           f"{', '.join(REQUIRED_COLUMNS)}")
    for column in REQUIRED_COLUMNS:      # a row without one of them would fail later, far from its cause
        dtype = getattr(ds.features[column], "dtype", type(ds.features[column]).__name__)
        if dtype not in ("string", "large_string"):
            raise DatasetError(f"{where}: column {column!r} holds {dtype} values; it must be text in every row")
        nulls = ds.data.column(column).null_count
        if nulls:
            raise DatasetError(f"{where}: {nulls} row(s) have no {column!r}; every row needs "
                               f"{', '.join(REQUIRED_COLUMNS)}")
    if "id" not in ds.column_names:
        ds = ds.map(lambda row: {"id": example_id(row["symbol"], row["period"])}, desc=f"ids for {where}")
    return ds


def _check_unique_ids(dd):
    seen, dupes = {}, []
    for split, ds in dd.items():
        for i in ds["id"]:
            if i in seen:
                dupes.append(f"{i} ({seen[i]} and {split})" if seen[i] != split else f"{i} (twice in {split})")
            seen[i] = split
    if dupes:
        shown = "; ".join(dupes[:5]) + (f"; ... {len(dupes) - 5} more" if len(dupes) > 5 else "")
        raise DatasetError(f"duplicate example ids (symbol|period): {shown}")


def _read_file(p):
    """One .jsonl/.json/.parquet file as a Dataset; DatasetError when it is empty or not that format."""
    import pyarrow
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError
    from datasets.utils import logging as datasets_logging
    kind = "Parquet" if p.suffix == ".parquet" else "JSON lines"
    if p.stat().st_size == 0:
        raise DatasetError(f"{p}: empty file; a forecasting dataset needs one {kind} row per example")
    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)   # its "Failed to load" line repeats our Error
    try:
        return Dataset.from_parquet(str(p)) if p.suffix == ".parquet" else Dataset.from_json(str(p))
    except (DatasetGenerationError, pyarrow.ArrowException, ValueError, StopIteration) as exc:   # unreadable input
        cause = exc.__cause__ or exc     # datasets wraps the parser's own message (which row, what is wrong)
        raise DatasetError(f"{p}: not a {kind} file ({type(cause).__name__}: {cause})".replace(" ()", "")) from None
    finally:
        datasets_logging.set_verbosity(verbosity)


def _load_files(paths):
    from datasets import DatasetDict, concatenate_datasets
    groups = {}
    for p in paths:
        split = next((s for s in SPLIT_ORDER if s in p.stem.lower()), "train")
        groups.setdefault(split, []).append(_read_file(p))
    return DatasetDict({k: concatenate_datasets(v) if len(v) > 1 else v[0] for k, v in groups.items()})


def load_forecast_dataset(path, from_remote=False, cache_dir=None):
    """Load a forecasting dataset into a DatasetDict with an `id` column.

    path: a `save_to_disk` folder (DatasetDict or a single Dataset, loaded as split "train"), a
    .jsonl/.json/.parquet file or a folder of them (split taken from the file name: *train*,
    *validation*, *test*), or — with from_remote=True or when nothing exists locally — a hub id.
    Raises DatasetError with one message naming the problem and the fix.
    """
    from datasets import DatasetDict, load_dataset, load_from_disk
    from datasets.utils.logging import disable_progress_bar
    disable_progress_bar()   # a summary line per stage is what users read; bars here are noise
    p = Path(path)
    if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "dataset_info.json").exists()
                       or (p / "state.json").exists()):
        loaded = load_from_disk(str(p))
        dd = loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    elif p.is_file() and p.suffix in (".jsonl", ".json", ".parquet"):
        dd = _load_files([p])
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".jsonl", ".json", ".parquet")
                       and f.name != "build.json")
        if not files:
            raise DatasetError(f"{path}: folder holds no saved dataset and no .jsonl/.parquet files")
        dd = _load_files(files)
    elif from_remote or (not p.exists() and "/" in str(path) and not str(path).startswith((".", "/"))):
        try:
            loaded = load_dataset(str(path), cache_dir=cache_dir)
        except Exception as exc:  # the hub client raises many types; one clear line for the user
            raise DatasetError(f"{path}: could not load from the hub ({type(exc).__name__}: {exc}). "
                               "Offline? Download it once with datasets.load_dataset(...).save_to_disk(DIR) "
                               "and pass DIR.") from None
        dd = loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    else:
        raise DatasetError(f"{path}: no such file or folder (pass a save_to_disk folder, .jsonl/.parquet, "
                           "or a hub id with --from_remote)")
    dd = DatasetDict({split: _with_ids(ds, f"{path} [{split}]") for split, ds in dd.items()})
    _check_unique_ids(dd)
    return dd


def get_split(dd, split, path=""):
    if split not in dd:
        raise DatasetError(f"{path}: no split {split!r}; it has {', '.join(dd)}")
    return dd[split]


def rows_of(ds):
    """A split's rows as plain dicts of ROW_COLUMNS (extra columns left out)."""
    return ds.select_columns(list(ROW_COLUMNS)).to_list()


def read_split(dataset, split, limit=None, weeks=None):
    """(rows, fingerprint, resolved path, all splits) of one split, the way inference.py, run_import.py and
    the report read a dataset. `limit` keeps the first N rows in dataset order; `weeks` keeps every ticker's
    rows of the last N whole weeks (periods that have a row for every ticker of the split)."""
    dd = load_forecast_dataset(dataset)
    ds = get_split(dd, split, dataset)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    if weeks is not None:
        keep = set(last_whole_weeks(ds["period"], ds["symbol"], weeks))
        ds = ds.select([k for k, period in enumerate(ds["period"]) if period in keep])
    path = str(Path(dataset).resolve()) if Path(dataset).exists() else str(dataset)
    return rows_of(ds), dataset_fingerprint(dd), path, dd


def last_whole_weeks(periods, symbols, n):
    """The last n periods (by start date) that have a row for every symbol seen in the split.

    >>> last_whole_weeks(["w1", "w1", "w2", "w2", "w3"], ["A", "B", "A", "B", "A"], 1)
    ['w2']
    """
    tickers = set(symbols)
    by_period = {}
    for period, symbol in zip(periods, symbols):
        by_period.setdefault(period, set()).add(symbol)
    whole = sorted(p for p, s in by_period.items() if s == tickers)
    return whole[-n:] if n else []


def dataset_fingerprint(dd):
    """A short stable fingerprint of the dataset contents (ids and answers), for run manifests."""
    import hashlib
    h = hashlib.sha256()
    for split in sorted(dd):
        for i, a in zip(dd[split]["id"], dd[split]["answer"]):
            h.update(f"{split}|{i}|{a}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Validation summary
# ---------------------------------------------------------------------------------------------
PROBLEM_KINDS = ("empty answer", "missing section header", "unparseable period", "unknown label",
                 "label does not match the answer's Prediction")


def row_problems(row, hindsight=False):
    """Problems of one row, by kind. `hindsight` datasets must agree label vs Prediction line."""
    problems = []
    answer = (row.get("answer") or "").strip()
    if not answer:
        problems.append("empty answer")
    else:
        missing = [h for h in SECTION_HEADERS.values() if h.lower() not in answer.lower()]
        if missing:
            problems.append("missing section header")
    if not PERIOD_RE.match(row.get("period") or ""):
        problems.append("unparseable period")
    if (row.get("label") or "").strip().lower() not in BIN_LABELS:
        problems.append("unknown label")
    elif hindsight and answer and parse_answer(answer).bin_code != label_to_code(row["label"]):
        problems.append("label does not match the answer's Prediction")
    return problems


def _is_hindsight(path):
    manifest = Path(path) / "build.json" if path else None
    if manifest and manifest.exists():
        return json.loads(manifest.read_text()).get("teacher_mode") == "hindsight"
    return None


def length_stats(values):
    """Count, min, mean, median, max and total of a list of lengths (dataset summaries, supervision audits).

    >>> length_stats([3, 1, 2])
    {'n': 3, 'min': 1, 'mean': 2.0, 'median': 2, 'max': 3, 'total': 6}
    >>> length_stats([])
    {'n': 0}
    """
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "mean": round(statistics.fmean(values), 1),
            "median": statistics.median(values), "max": max(values), "total": sum(values)}


def summarize(dd, path=None, hindsight=None):
    """Summary dict of a DatasetDict: rows per split, symbols, periods, labels, lengths, problems.

    hindsight=None reads the mode from the dataset's build.json; the public dataset is a hindsight
    dataset (its labels were given to the teacher), so pass True for it to check label agreement.
    """
    if hindsight is None:
        hindsight = bool(_is_hindsight(path))
    out = {"path": str(path) if path else None, "hindsight_checked": hindsight, "splits": {}}
    for split in sorted(dd, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 9):
        ds = dd[split]
        rows = rows_of(ds)
        labels = Counter(r["label"] for r in rows)
        periods = sorted({r["period"] for r in rows if PERIOD_RE.match(r["period"] or "")})
        problems = {}
        for r in rows:
            for kind in row_problems(r, hindsight):
                problems.setdefault(kind, []).append(r["id"])
        n = len(rows)
        ups = sum(c for lbl, c in labels.items() if lbl.lower().startswith("up"))
        out["splits"][split] = {
            "rows": n,
            "symbols": len({r["symbol"] for r in rows}),
            "first_period": periods[0] if periods else None,
            "last_period": periods[-1] if periods else None,
            "weeks": len(periods),
            "labels": {lbl: labels[lbl] for lbl in BIN_LABELS if labels.get(lbl)}
                      | {lbl: c for lbl, c in labels.items() if lbl not in BIN_LABELS},
            "up_share": round(ups / n, 4) if n else None,
            "prompt_chars": length_stats([len(r["prompt"] or "") for r in rows]),
            "answer_chars": length_stats([len(r["answer"] or "") for r in rows]),
            "problems": {k: {"count": len(v), "examples": v[:3]} for k, v in problems.items()},
        }
    return out


def format_summary(summary):
    """Human-readable text of summarize()'s dict."""
    lines = [f"Dataset {summary['path'] or ''}".rstrip()]
    for split, s in summary["splits"].items():
        lines.append(f"\n[{split}] {s['rows']} rows, {s['symbols']} symbols, {s['weeks']} weeks "
                     f"({s['first_period']} ... {s['last_period']}), up-share {s['up_share']}")
        lines.append("  labels: " + ", ".join(f"{k}: {v}" for k, v in s["labels"].items()))
        for key in ("prompt_chars", "answer_chars"):
            st = s[key]
            if st["n"]:
                lines.append(f"  {key.replace('_', ' ')}: min {st['min']}, mean {st['mean']}, "
                             f"median {st['median']}, max {st['max']}")
        if s["problems"]:
            for kind, p in s["problems"].items():
                lines.append(f"  problem: {kind}: {p['count']} rows (e.g. {', '.join(p['examples'])})")
        else:
            lines.append("  problems: none")
    if not summary["hindsight_checked"]:
        lines.append("\n(label vs Prediction agreement not checked: not a hindsight dataset, or unknown — "
                     "pass --hindsight to check it)")
    return "\n".join(lines)
