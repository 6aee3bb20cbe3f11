"""One way to fail (issue 15): every script, run as a user runs it (`python SCRIPT ARGS` in a fresh folder,
offline, no API keys), answers a bad input with exactly one `Error: ...` line on stderr, exit status 1 and
no traceback, and leaves nothing half-written behind.

The table holds at least one row per mistake the README warns about; each row names the words its
`Error:` line must contain, so a row fails if the error is caught by the wrong check.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import review_store

ROOT = Path(__file__).resolve().parent.parent
ROW = {"prompt": "p", "answer": "a", "period": "2024-01-07 to 2024-01-14", "label": "up by 0-1%", "symbol": "AAPL"}


# --- inputs written into the test's own folder; each returns what {input} stands for -------------------------
def duplicate_ids(folder):
    path = folder / "dupes.jsonl"
    path.write_text((json.dumps(ROW) + "\n") * 2)
    return path


def not_json_lines(folder):
    path = folder / "bad.jsonl"
    path.write_text("this is not json\n{\"prompt\": \n")
    return path


def empty_folder(folder):
    (folder / "empty").mkdir()
    return folder / "empty"


def jsonl_dataset(folder, name, splits):
    """A dataset of one-row JSON lines splits in the test's own folder (a row's other checks must not depend on
    anything `make demo` leaves in data/: a clean clone has none of it)."""
    (folder / name).mkdir()
    for n, split in enumerate(splits):
        (folder / name / f"{split}.jsonl").write_text(json.dumps(dict(ROW, id=f"AAPL|w{n}")) + "\n")
    return folder / name


def only_a_test_split(folder):
    return jsonl_dataset(folder, "test-only", ("test",))


def small_dataset(folder):
    return jsonl_dataset(folder, "small", ("train", "validation", "test"))


def folder_without_adapter(folder):
    """An output dir of something else, beside the valid dataset `small` the row passes as --dataset."""
    small_dataset(folder)
    (folder / "not-an-adapter").mkdir()
    (folder / "not-an-adapter" / "README.md").write_text("an output dir of something else")
    return folder / "not-an-adapter"


def db_without_reviews(folder):
    review_store.ReviewStore(folder / "no-reviews.sqlite")       # the tables `hitl.py serve` creates, no review
    return folder / "no-reviews.sqlite"


def zero_byte_file(folder):
    (folder / "zero-bytes.sqlite").touch()
    return folder / "zero-bytes.sqlite"


def missing(name):
    return lambda folder: folder / name


# (script, arguments with {input}, the input's writer or None, words the Error: line must hold)
BAD_INPUTS = {
    "data_pipeline --check a missing path": ("data_pipeline.py", ["--check", "{input}"], missing("nope"),
                                             "no such file or folder"),
    "data_pipeline --check an empty folder": ("data_pipeline.py", ["--check", "{input}"], empty_folder,
                                              "no saved dataset"),
    "data_pipeline --check invalid JSON lines": ("data_pipeline.py", ["--check", "{input}"], not_json_lines,
                                                 "not a JSON lines file"),
    "data_pipeline --check duplicate ids": ("data_pipeline.py", ["--check", "{input}"], duplicate_ids,
                                            "duplicate example ids"),
    "data_pipeline sample, unknown ticker": ("data_pipeline.py", ["--source", "sample", "--tickers", "ZZZZ",
                                                                  "--out", "ds"], None,
                                             "ZZZZ: not in the offline sample"),
    "data_pipeline sample, dates outside it": ("data_pipeline.py", ["--source", "sample", "--start", "1999-01-03",
                                                                    "--end", "1999-06-27", "--out", "ds"], None,
                                               "outside the offline sample"),
    "data_pipeline finnhub, no key set": ("data_pipeline.py", ["--source", "finnhub", "--tickers", "AAPL", "--start",
                                                               "2024-01-07", "--end", "2024-02-04", "--out", "ds"],
                                          None, "needs an API key: set FINNHUB_KEY"),
    "train_lora, missing dataset": ("train_lora.py", ["--dataset", "{input}", "--output_dir", "out"],
                                    missing("nope"), "no such file or folder"),
    "train_lora, unknown base model offline": ("train_lora.py", ["--base_model", "no-such-org/no-such-model",
                                                                 "--dataset", "{input}", "--max_steps", "1",
                                                                 "--output_dir", "out", "--report_to", "none"],
                                               small_dataset, "cannot load the tokenizer of no-such-org/no-such-model"),
    "train_lora, only a test split": ("train_lora.py", ["--dataset", "{input}", "--output_dir", "out"],
                                      only_a_test_split, "no split 'train'; it has test"),
    "inference, missing dataset": ("inference.py", ["--dataset", "{input}", "--out", "run"], missing("nope"),
                                   "no such file or folder"),
    "inference, --adapter without an adapter": ("inference.py", ["--adapter", "{input}", "--dataset", "small",
                                                                 "--out", "run"], folder_without_adapter,
                                                "no adapter_config.json there"),
    "inference, unknown --ticker": ("inference.py", ["--ticker", "ZZZZ", "--date", "2012-06-01"], None,
                                    "ZZZZ: not in the offline sample"),
    "inference, --date outside the data": ("inference.py", ["--ticker", "AAPL", "--date", "1999-01-01"], None,
                                           "no prices before"),
    "comparison, missing folder": ("comparison.py", ["{input}", "--out", "cmp"], missing("nope"), "not a folder"),
    "comparison, a folder that is not a run": ("comparison.py", ["{input}", "--out", "cmp"], empty_folder,
                                               "missing run.json, predictions.jsonl"),
    "hitl serve, missing run dir": ("hitl.py", ["serve", "--runs", "{input}", "--db", "r.sqlite"],
                                    missing("no-such-run"), "no-such-run: no such folder"),
    "hitl export, missing db": ("hitl.py", ["export", "--db", "{input}", "--out", "x"], missing("missing.sqlite"),
                                "missing.sqlite: no such file"),
    "hitl export, db without reviews": ("hitl.py", ["export", "--db", "{input}", "--out", "x"], db_without_reviews,
                                        "holds no reviews yet"),
    "hitl export, not a review db": ("hitl.py", ["export", "--db", "{input}", "--out", "x"], zero_byte_file,
                                     "not a review db from `hitl.py serve`"),
    "report, no inputs": ("report.py", ["--out", "rep"], None, "nothing to report"),
    "report, missing --dataset": ("report.py", ["--dataset", "{input}", "--out", "rep"], missing("nope"),
                                  "no such file or folder"),
}

# what a failed command must not leave behind (relative to its folder)
NOT_WRITTEN = ("ds", "out", "run", "cmp", "x", "r.sqlite", "rep")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_exit_1_and_no_traceback(case, tmp_path):
    script, arguments, make_input, words = BAD_INPUTS[case]
    given = make_input(tmp_path) if make_input else None
    env = {k: v for k, v in os.environ.items()
           if k not in ("FINNHUB_KEY", "OPENAI_API_KEY", "OPENAI_KEY", "WANDB_API_KEY")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    # cwd = a fresh folder: the .env lookup starts there, so a developer's own .env (and key) cannot leak in
    proc = subprocess.run([sys.executable, str(ROOT / script), *[a.format(input=given) for a in arguments]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(errors) == 1 and words in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    left = [name for name in NOT_WRITTEN if (tmp_path / name).exists() and not (given and Path(given).name == name)]
    assert not left, f"{case} left {left} behind"
