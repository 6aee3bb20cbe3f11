"""Outputs made outside the pipeline -> a run dir (what `inference.py --backend file` does).

    python inference.py --backend file --outputs results.csv --dataset DIR --split test --out runs/NAME
    python inference.py --backend file --outputs generated_predictions.jsonl --out runs/lf      # no dataset

A file of model outputs (a notebook's CSV, LLaMA-Factory's generated_predictions.jsonl, a JSON list,
a Parquet table) is read, its columns are found by name, every row is joined to a dataset row, and
inference.py writes the run dir with its own writer, so comparison.py, hitl.py and report.py read it
like any generated run. This module owns the reading, the column detection, the join and the import
manifest; it writes nothing itself.

Join rules, first that matches: 1. an `id` column; 2. `symbol` + `period` columns; 3. the ticker and
the period parsed from the prompt text ("ticker AXP", "(2024-02-25 to 2024-03-03)"); 4. the exact
prompt text once chat markers are removed. Rows that join nowhere, rows whose id was already taken
(the first wins) and, without a dataset, rows with no readable truth are counted and listed by row
number (1-based records; JSONL: line numbers) in run.json and on the console.
"""
import csv
import hashlib
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dataset_io import example_id, rows_of, read_split
from errors import ForecasterError
from prompt import BIN_LABELS, PROMPT_STYLES, bin_label, parse_answer, split_public_prompt
from runs import differing_keys

# ---------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
# a role's column is the first of these names the file has (case-insensitive); `label` is decided
# by its values: bin labels ("up by 1-2%") make it the truth, anything else the reference text
COLUMN_NAMES = {
    "output": ("output", "prediction", "response", "generated", "predict"),
    "prompt": ("prompt", "input", "query"),
    "reference": ("reference", "answer"),
    "truth": ("truth",),
    "latency": ("latency_s", "inference_time_s", "time"),
    "id": ("id",),
    "symbol": ("symbol",),
    "period": ("period",),
}
ROLES = tuple(COLUMN_NAMES)
JOIN_RULES = ("id", "symbol+period", "prompt ticker+period", "prompt text")
CONSOLE_ROWS = 20                 # row numbers shown on the console per list; run.json keeps all of them
BINARY_SNIFF_BYTES = 8192         # a NUL byte in the first 8 KiB = not a text file
TRUTH_FROM_DATASET = "dataset labels"
TRUTH_FROM_FILE = "the file's truth column (no --dataset)"
TRUTH_FROM_REFERENCE = "the reference answers' Prediction lines (no --dataset)"

# outermost chat template first: LLaMA-Factory wraps the public (Llama-2 form) prompt in its own template
STYLE_MARKERS = (("llama3", "<|start_header_id|>"), ("chatml", "<|im_start|>"), ("deepseek-r1", "<｜User｜>"),
                 ("llama2", "[INST]"))
_USER_PART_RE = {
    "llama3": re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\s*(.*?)<\|eot_id\|>", re.S),
    "chatml": re.compile(r"<\|im_start\|>user\n?(.*?)<\|im_end\|>", re.S),
    "deepseek-r1": re.compile(r"<｜User｜>(.*?)<｜Assistant｜>", re.S),
}
_TICKER_RE = re.compile(r"\bticker\s+([A-Z][A-Z0-9.\-]{0,9})\b")
_PERIOD_RE = re.compile(r"\((\d{4}-\d{2}-\d{2})\s+to\s+(\d{4}-\d{2}-\d{2})\)")
_DATES_RE = re.compile(r"(\d{4}-\d{2}-\d{2})\D+(\d{4}-\d{2}-\d{2})")
_BIN_LABEL_SET = {label.lower() for label in BIN_LABELS}


class OutputsError(ForecasterError, ValueError):
    """An unusable outputs file or flag: one `Error:` line, nothing written."""


# ---------------------------------------------------------------------------------------------
# Reading the file
# ---------------------------------------------------------------------------------------------
def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_records(path):
    """(records, format): records = [(row number, {column: value})] in file order.

    Row numbers are 1-based records (the CSV header is not a row); for JSONL they are line numbers.
    Raises OutputsError for an empty, binary, undecodable or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise OutputsError(f"--outputs {path}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OutputsError(f"--outputs {path}: unknown format {path.suffix or '(no extension)'!r}; "
                           f"use {', '.join(FORMATS)}")
    if path.stat().st_size == 0:
        raise OutputsError(f"--outputs {path}: the file is empty")
    if fmt == "parquet":
        return _read_parquet(path), fmt
    data = path.read_bytes()
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        raise OutputsError(f"--outputs {path}: a binary file, not {fmt.upper()} text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OutputsError(f"--outputs {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    records = {"csv": _read_csv, "jsonl": _read_jsonl, "json": _read_json}[fmt](text, path)
    if not records:
        raise OutputsError(f"--outputs {path}: holds no rows")
    return records, fmt


def _read_csv(text, path):
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))     # answers and prompts are long fields
    reader = csv.reader(io.StringIO(text, newline=""))      # newline="": line breaks inside fields kept as is
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            return []
        header = [h.strip() for h in header]
        records = []
        for number, values in enumerate(reader, start=1):
            if not values:
                continue
            if len(values) > len(header):
                raise OutputsError(f"--outputs {path}: row {number} has {len(values)} fields but the header "
                                   f"has {len(header)} (an unquoted comma or newline?)")
            records.append((number, dict(zip(header, values))))
    except csv.Error as exc:
        raise OutputsError(f"--outputs {path}: not readable as CSV ({exc})") from None
    return records


def _read_jsonl(text, path):
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OutputsError(f"--outputs {path}: line {number} is not JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise OutputsError(f"--outputs {path}: line {number} is a JSON {type(obj).__name__}, not an object")
        records.append((number, obj))
    return records


def _read_json(text, path):
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OutputsError(f"--outputs {path}: not JSON ({exc.msg}, line {exc.lineno} column {exc.colno}); "
                           "one object per line is .jsonl") from None
    if not isinstance(obj, list):
        raise OutputsError(f"--outputs {path}: a .json file must hold a list of objects, not a "
                           f"{type(obj).__name__}")
    bad = next((k for k, item in enumerate(obj, start=1) if not isinstance(item, dict)), None)
    if bad:
        raise OutputsError(f"--outputs {path}: item {bad} of the list is not an object")
    return list(enumerate(obj, start=1))


def _read_parquet(path):
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(str(path))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise OutputsError(f"--outputs {path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    if table.num_rows == 0:
        raise OutputsError(f"--outputs {path}: holds no rows")
    return list(enumerate(table.to_pylist(), start=1))


def file_columns(records):
    """Column names in first-seen order (JSONL rows may differ in their keys)."""
    return list(dict.fromkeys(k for _, rec in records for k in rec))


# ---------------------------------------------------------------------------------------------
# Columns
# ---------------------------------------------------------------------------------------------
def parse_columns_flag(text):
    """--columns 'output=pred,prompt=question' -> {role: column}; an empty column (`reference=`) turns
    the role off.

    >>> parse_columns_flag("output=pred, prompt=question,reference=")
    {'output': 'pred', 'prompt': 'question', 'reference': None}
    """
    mapping = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        role, sep, column = part.partition("=")
        role = role.strip()
        if not sep or role not in ROLES:
            raise OutputsError(f"--columns {part!r}: expected ROLE=COLUMN with ROLE one of {', '.join(ROLES)}")
        mapping[role] = column.strip() or None
    return mapping


def is_bin_label(value):
    """True for the 12 label texts, any case.

    >>> is_bin_label("Up by 1-2%"), is_bin_label("[Positive Developments]: ... up by 1-2%")
    (True, False)
    """
    return isinstance(value, str) and value.strip().lower() in _BIN_LABEL_SET


def detect_columns(records, overrides=None, source="--outputs"):
    """{role: column or None}: --columns first, then the names in COLUMN_NAMES; a `label` column is the
    truth when every non-empty value is a bin label, else the reference text."""
    columns = file_columns(records)
    overrides = overrides or {}
    unknown = {r: c for r, c in overrides.items() if c is not None and c not in columns}
    if unknown:
        raise OutputsError(f"--columns: {', '.join(f'{r}={c}' for r, c in unknown.items())}: no such column in "
                           f"{source}; it has {', '.join(columns)}")
    by_lower = {}
    for c in columns:
        by_lower.setdefault(c.lower(), c)
    mapping = {}
    for role, names in COLUMN_NAMES.items():
        if role in overrides:
            mapping[role] = overrides[role]
            continue
        mapping[role] = next((by_lower[n] for n in names if n in by_lower), None)
    label = by_lower.get("label")
    if label and label not in mapping.values():
        values = [rec.get(label) for _, rec in records if _text(rec.get(label))]
        role = "truth" if values and all(is_bin_label(v) for v in values) else "reference"
        if mapping[role] is None and role not in overrides:
            mapping[role] = label
    if not mapping["output"]:
        raise OutputsError(f"{source}: no output column; it has {', '.join(columns)}. Name it one of "
                           f"{', '.join(COLUMN_NAMES['output'])}, or pass --columns output=NAME")
    return mapping


def _text(value):
    """A cell as text: None / NaN -> ''; numbers -> str."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)


def _seconds(value, number, column):
    text = _text(value).strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise OutputsError(f"row {number}: latency column {column!r} holds {text[:40]!r}, not seconds") from None
    return None if math.isnan(seconds) else seconds


# ---------------------------------------------------------------------------------------------
# Prompt text: style, user part, ticker and period
# ---------------------------------------------------------------------------------------------
def detect_style(prompt):
    """The prompt style whose chat markers a prompt carries (outermost template first), or None.

    >>> detect_style("[INST]<<SYS>>\\nsys\\n<</SYS>>\\n\\nuser[/INST]"), detect_style("plain text")
    ('llama2', None)
    """
    for name, marker in STYLE_MARKERS:
        if marker in (prompt or ""):
            return name
    return None


def user_part(prompt):
    """The user message of a prompt with its chat markers removed (Llama-2, ChatML, Llama-3, R1), stripped.

    >>> user_part("<|im_start|>user\\n[INST]<<SYS>>\\ns\\n<</SYS>>\\n\\nHello[/INST]<|im_end|>")
    'Hello'
    >>> user_part("[INST] <<SYS>>\\nBe helpful.\\n<</SYS>>\\n\\n[INST]<<SYS>>\\ns\\n<</SYS>>\\n\\nHello[/INST] [/INST]")
    'Hello'
    """
    text = prompt or ""
    for name, pattern in _USER_PART_RE.items():
        if name == detect_style(text):
            m = pattern.search(text)
            if m:
                text = m.group(1)
            break
    for _ in range(3):                   # a template around a prompt already in Llama-2 form: peel both
        user = split_public_prompt(text)[1]
        if user == text.strip():
            break
        text = user
    return text.strip()


def ticker_and_period(prompt):
    """(ticker, period) parsed from a prompt: 'ticker AXP' and the last '(YYYY-MM-DD to YYYY-MM-DD)';
    None for a part the prompt does not state.

    >>> ticker_and_period("trading under the ticker AXP on the NYSE ... next week (2024-02-25 to 2024-03-03).")
    ('AXP', '2024-02-25 to 2024-03-03')
    >>> ticker_and_period("for next week (2024-02-25 to 2024-03-03).")
    (None, '2024-02-25 to 2024-03-03')
    """
    text = prompt or ""
    ticker = _TICKER_RE.search(text)
    periods = _PERIOD_RE.findall(text)
    return (ticker.group(1) if ticker else None,
            f"{periods[-1][0]} to {periods[-1][1]}" if periods else None)


def normal_period(value):
    """'2024-02-25 to 2024-03-03' from any text holding the two dates in order, else the stripped text."""
    text = _text(value).strip()
    m = _DATES_RE.search(text)
    return f"{m.group(1)} to {m.group(2)}" if m else text


def truth_from_reference(reference):
    """The bin label of a reference answer's Prediction line (upstream's truth), or None.

    >>> truth_from_reference("[Prediction & Analysis]:\\nPrediction: Down by more than 5%\\nAnalysis: x")
    'down by more than 5%'
    """
    parsed = parse_answer(reference or "")
    return None if parsed.bin_code is None else bin_label(parsed.bin_code)


# ---------------------------------------------------------------------------------------------
# The join
# ---------------------------------------------------------------------------------------------
class DatasetIndex:
    """A dataset split's rows by id, by (symbol, period) and by the prompt's user text."""

    def __init__(self, rows):
        self.by_id = {r["id"]: r for r in rows}
        self.by_symbol_period = {(r["symbol"].upper(), r["period"]): r for r in rows}
        self.by_user_text = {}
        for r in rows:
            self.by_user_text.setdefault(user_part(r["prompt"]), r)

    def join(self, file_id, symbol, period, prompt):
        """(dataset row, rule) of the first rule that matches, or (None, None)."""
        if file_id and file_id in self.by_id:
            return self.by_id[file_id], "id"
        if symbol and period and (symbol.upper(), period) in self.by_symbol_period:
            return self.by_symbol_period[(symbol.upper(), period)], "symbol+period"
        if prompt:
            ticker, parsed_period = ticker_and_period(prompt)
            if ticker and parsed_period and (ticker.upper(), parsed_period) in self.by_symbol_period:
                return self.by_symbol_period[(ticker.upper(), parsed_period)], "prompt ticker+period"
            row = self.by_user_text.get(user_part(prompt))
            if row is not None:
                return row, "prompt text"
        return None, None


@dataclass
class ImportPlan:
    """What to write: `rows` in the inference.py row shape, the outputs by id, the manifest, counts."""
    rows: list
    outputs: dict                   # id -> (output text, latency_s or None)
    manifest: dict
    notes: list = field(default_factory=list)
    unchanged: bool = False         # the same file is already imported into --out: write nothing

    def generator(self):
        return ImportedOutputs(self.outputs)


class ImportedOutputs:
    """inference.py's generator interface over outputs read from a file: text verbatim, no token
    counts, the file's latency (or None)."""

    def __init__(self, outputs):
        self.outputs = outputs

    def generate(self, rows):
        return [(self.outputs[r["id"]][0], None, False, self.outputs[r["id"]][1]) for r in rows]


def _cell(rec, column):
    return _text(rec.get(column)) if column else ""


def build_rows(records, mapping, index=None):
    """Join every record. Returns (rows, outputs, stats): rows in the inference.py shape (id, symbol,
    period, label, answer, prompt) in file order, the first row per id winning."""
    rows, outputs, seen = [], {}, set()
    stats = {"read": len(records), "joined": 0, "joined_by": {rule: 0 for rule in JOIN_RULES}, "unjoined": 0,
             "unjoined_rows": [], "duplicated": 0, "duplicate_rows": [], "no_truth": 0, "no_truth_rows": [],
             "truth_disagreements": 0, "truth_disagreement_rows": []}
    for number, rec in records:
        file_id = _cell(rec, mapping["id"]).strip()
        symbol = _cell(rec, mapping["symbol"]).strip().upper()
        period = normal_period(rec.get(mapping["period"])) if mapping["period"] else ""
        prompt = _cell(rec, mapping["prompt"])
        reference = _cell(rec, mapping["reference"])
        file_truth = _cell(rec, mapping["truth"]).strip()
        if index is not None:
            match, rule = index.join(file_id, symbol, period, prompt)
            if match is None:
                stats["unjoined"] += 1
                stats["unjoined_rows"].append(number)
                continue
            row_id, symbol, period, label = match["id"], match["symbol"], match["period"], match["label"]
            reference = reference or match["answer"]
            prompt = match["prompt"]
            if is_bin_label(file_truth) and file_truth.lower() != label.lower() and row_id not in seen:
                stats["truth_disagreements"] += 1
                stats["truth_disagreement_rows"].append(number)
        else:
            rule = None
            if not (symbol and period) and prompt:
                ticker, parsed_period = ticker_and_period(prompt)
                symbol, period = symbol or ticker or "", period or parsed_period or ""
            row_id = file_id or (example_id(symbol, period) if symbol and period else f"row-{number}")
            label = file_truth.lower() if is_bin_label(file_truth) else truth_from_reference(reference)
            if label is None:
                stats["no_truth"] += 1
                stats["no_truth_rows"].append(number)
                continue
            symbol, period = symbol or "unknown", period or "unknown"
        if row_id in seen:
            stats["duplicated"] += 1
            stats["duplicate_rows"].append(number)
            continue
        seen.add(row_id)
        if rule:
            stats["joined_by"][rule] += 1
        stats["joined"] += 1
        latency = _seconds(rec.get(mapping["latency"]), number, mapping["latency"]) if mapping["latency"] else None
        rows.append({"id": row_id, "symbol": symbol, "period": period, "label": label, "answer": reference,
                     "prompt": prompt})
        outputs[row_id] = (_cell(rec, mapping["output"]), latency)
    return rows, outputs, stats


def _other_split_hint(dd, split, records, mapping):
    """' (N rows join split 'validation': pass --split validation)' when another split fits better."""
    best = None
    for name in dd:
        if name == split:
            continue
        rows = rows_of(dd[name])
        joined = build_rows(records, mapping, DatasetIndex(rows))[2]["joined"]
        if joined and (best is None or joined > best[1]):
            best = (name, joined)
    return f" ({best[1]} rows join split {best[0]!r}: pass --split {best[0]})" if best else ""


def _listed(numbers):
    shown = ", ".join(map(str, numbers[:CONSOLE_ROWS]))
    more = len(numbers) - CONSOLE_ROWS
    return shown + (f", ... {more} more (all in run.json)" if more > 0 else "")


def plan_import(outputs_path, dataset=None, split="test", columns=None, prompt_style=None, model=None,
                out=None, overwrite=False):
    """Read, check and join an outputs file. Returns an ImportPlan; raises OutputsError (nothing written).

    The manifest is inference.py's run.json with backend 'file' and: source {file, path, format, size_bytes,
    sha256}, columns {role: column}, rows {read, joined, joined_by, unjoined(_rows), duplicated/duplicate_rows,
    no_truth(_rows)}, truth {source, from_dataset}, prompt_style (+ prompt_style_source), dataset."""
    path = Path(outputs_path)
    records, fmt = read_records(path)
    mapping = detect_columns(records, parse_columns_flag(columns), source=f"--outputs {path}")
    index, dd, fingerprint, dataset_path = None, None, None, None
    if dataset:
        dataset_rows, fingerprint, dataset_path, dd = read_split(dataset, split)
        index = DatasetIndex(dataset_rows)
    elif not (mapping["reference"] or mapping["truth"]):
        raise OutputsError(f"--outputs {path}: without --dataset the file needs a reference column "
                           f"({', '.join(COLUMN_NAMES['reference'])} or a text 'label') or bin labels to score "
                           f"against; it has {', '.join(file_columns(records))}")
    rows, outputs, stats = build_rows(records, mapping, index)
    if not rows:
        if dataset:
            raise OutputsError(f"--outputs {path}: none of its {len(records)} rows joins {dataset} [{split}] by "
                               f"id, symbol+period, the prompt's ticker and period or the prompt text"
                               f"{_other_split_hint(dd, split, records, mapping)}")
        raise OutputsError(f"--outputs {path}: no row has a readable truth (a 'Prediction: Up by 1-2%' line in "
                           "its reference, or a bin-label column); pass --dataset to take labels from it")
    notes = []
    prompts = [r[1].get(mapping["prompt"]) for r in records] if mapping["prompt"] else []
    styles = [s for s in (detect_style(_text(p)) for p in prompts) if s]
    detected = max(set(styles), key=styles.count) if styles else None
    if detected:
        style, style_source = detected, "detected from the file's prompts"
        if prompt_style and prompt_style != detected:
            notes.append(f"note: the prompts carry {detected} markers; --prompt_style {prompt_style} is ignored")
    elif prompt_style:
        style, style_source = prompt_style, "--prompt_style"
    else:
        style, style_source = None, "unknown"
        notes.append("note: the prompt style is unknown (no chat markers in the file's prompts); pass "
                     f"--prompt_style ({', '.join(PROMPT_STYLES)}) to review the run with hitl.py")
    truth_source = (TRUTH_FROM_DATASET if dataset else
                    TRUTH_FROM_FILE if mapping["truth"] else TRUTH_FROM_REFERENCE)
    manifest = {
        "model": model, "adapter": None, "prompt_style": style, "prompt_style_source": style_source,
        "backend": "file", "batch_size": None, "dtype": None, "decoding": {},
        "source": {"file": path.name, "path": str(path.resolve()), "format": fmt, "size_bytes": path.stat().st_size,
                   "sha256": file_digest(path)},
        "columns": mapping,
        "rows": stats,
        "truth": {"source": truth_source, "from_dataset": bool(dataset)},
        "dataset": {"path": dataset_path, "split": split if dataset else None, "fingerprint": fingerprint,
                    "limit": None},
    }
    plan = ImportPlan(rows, outputs, manifest, notes)
    if out is not None:
        plan.unchanged = check_existing(out, manifest, overwrite)
    return plan


IDENTITY_KEYS = (("source", "sha256"), ("columns",), ("prompt_style",), ("model",), ("dataset", "path"),
                 ("dataset", "split"), ("dataset", "fingerprint"))


def check_existing(out, manifest, overwrite=False):
    """True when --out already holds this very import (same file, columns and dataset): nothing to do.
    A run dir holding anything else is refused unless overwrite."""
    run_json, predictions = Path(out) / "run.json", Path(out) / "predictions.jsonl"
    if overwrite or not (run_json.is_file() and predictions.is_file()):
        return False
    try:
        old = json.loads(run_json.read_text())
    except ValueError:
        old = {}
    if old.get("backend") != "file":
        raise OutputsError(f"--out {out} holds a run made with backend {old.get('backend')!r}; pass another "
                           "--out, or --overwrite to replace it")
    differences = [name for name, _, _ in differing_keys(old, manifest, IDENTITY_KEYS)]
    if differences:
        what = ("a different file (" + old.get("source", {}).get("file", "?") + ")"
                if "source.sha256" in differences else "other settings (" + ", ".join(differences) + ")")
        raise OutputsError(f"--out {out} holds an import of {what}; pass another --out, or --overwrite to "
                           "replace it")
    return old.get("status") == "complete"


def summary_lines(plan, out):
    """The console summary of an import (counts, rows not imported by number, truth source)."""
    m, stats = plan.manifest, plan.manifest["rows"]
    joined_by = ", ".join(f"{rule} {n}" for rule, n in stats["joined_by"].items() if n)
    lines = [f"Imported {stats['joined']}/{stats['read']} rows of {m['source']['file']} into {out}/predictions.jsonl"
             + (f" (joined by {joined_by})" if joined_by else "")
             + f"; truth: {m['truth']['source']}; prompt style: {m['prompt_style'] or 'unknown'}"]
    if stats["unjoined"]:
        lines.append(f"  {stats['unjoined']} row(s) joined no dataset row: {_listed(stats['unjoined_rows'])}")
    if stats["duplicated"]:
        lines.append(f"  {stats['duplicated']} duplicate row(s) left out (the first row per id wins): "
                     f"{_listed(stats['duplicate_rows'])}")
    if stats["no_truth"]:
        lines.append(f"  {stats['no_truth']} row(s) without a readable truth left out: "
                     f"{_listed(stats['no_truth_rows'])}")
    if stats["truth_disagreements"]:
        lines.append(f"  {stats['truth_disagreements']} row(s) whose truth column disagrees with the dataset's "
                     f"label (a wrong join, or another labelling?): {_listed(stats['truth_disagreement_rows'])}")
    return lines + plan.notes
