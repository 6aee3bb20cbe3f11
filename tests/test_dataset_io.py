"""Loading every input form into one schema, and `data_pipeline.py --check`."""
import json

import pytest
from datasets import Dataset, DatasetDict

import data_pipeline
from dataset_io import DatasetError, load_forecast_dataset, summarize
from prompt import SYSTEM_PROMPT, wrap_public_prompt

GOOD = ("[Positive Developments]:\n1. a\n\n[Potential Concerns]:\n1. b\n\n"
        "[Prediction & Analysis]:\nPrediction: Up by 1-2%\nAnalysis: c")


def row(symbol="AAA", period="2024-01-07 to 2024-01-14", label="up by 1-2%", answer=GOOD):
    return {"prompt": wrap_public_prompt(SYSTEM_PROMPT, f"news for {symbol}"), "answer": answer,
            "period": period, "label": label, "symbol": symbol}


ROWS = [row("AAA"), row("BBB"), row("AAA", "2024-01-14 to 2024-01-21", "down by 0-1%",
                                     GOOD.replace("Up by 1-2%", "Down by 0-1%"))]


def test_loads_a_saved_datasetdict_and_derives_stable_ids(tmp_path):
    DatasetDict({"train": Dataset.from_list(ROWS[:2]), "test": Dataset.from_list(ROWS[2:])}).save_to_disk(
        str(tmp_path / "dd"))
    dd = load_forecast_dataset(tmp_path / "dd")
    assert set(dd) == {"train", "test"}
    assert dd["train"]["id"] == ["AAA|2024-01-07 to 2024-01-14", "BBB|2024-01-07 to 2024-01-14"]


def test_loads_a_single_saved_split_as_train(tmp_path):
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    assert list(load_forecast_dataset(tmp_path / "one")) == ["train"]


def test_loads_jsonl_and_parquet_files_and_keeps_extra_columns(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(json.dumps(dict(r, extra=1)) for r in ROWS))
    dd = load_forecast_dataset(path)
    assert len(dd["train"]) == 3 and "extra" in dd["train"].column_names
    Dataset.from_list(ROWS).to_parquet(str(tmp_path / "x.parquet"))
    assert len(load_forecast_dataset(tmp_path / "x.parquet")["train"]) == 3


def test_folder_of_files_takes_the_split_from_the_file_name(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS[:2]))
    (folder / "test.jsonl").write_text(json.dumps(ROWS[2]))
    dd = load_forecast_dataset(folder)
    assert {k: len(v) for k, v in dd.items()} == {"train": 2, "test": 1}


def test_duplicate_ids_are_a_structural_error(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (ROWS[0], ROWS[0])))
    with pytest.raises(DatasetError, match="duplicate example ids.*AAA"):
        load_forecast_dataset(path)


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "answer": "a"}))
    with pytest.raises(DatasetError, match="missing column.*period, label, symbol"):
        load_forecast_dataset(path)


def test_a_hub_id_offline_fails_with_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DatasetError, match="could not load from the hub"):
        load_forecast_dataset("FinGPT/no-such-dataset-here")


def test_missing_path_says_what_to_pass(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_forecast_dataset(tmp_path / "nothing")


def test_check_reports_every_problem_kind_and_exits_zero(tmp_path, capsys):
    rows = [row("EMP", answer=""),
            row("HDR", answer="[Positive Developments]:\n1. a\nPrediction: Up by 1-2%"),
            row("PER", period="last week"),
            row("LAB", label="sideways"),
            row("MIS", answer=GOOD.replace("Up by 1-2%", "Down by 3-4%")),
            row("OK1")]
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert data_pipeline.main(["--check", str(path), "--hindsight"]) == 0
    out = capsys.readouterr().out
    for kind, sym in [("empty answer", "EMP"), ("missing section header", "HDR"),
                      ("unparseable period", "PER"), ("unknown label", "LAB"),
                      ("label does not match the answer's Prediction", "MIS")]:
        assert f"problem: {kind}: 1 rows (e.g. {sym}|" in out
    assert "6 rows" in out and "OK1" not in out.split("problem")[1]


def test_check_exits_nonzero_on_a_structural_error(tmp_path, capsys):
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (ROWS[0], ROWS[0])))
    assert data_pipeline.main(["--check", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["Error: duplicate example ids (symbol|period): AAA|2024-01-07 to 2024-01-14 (twice in train)"]


def test_summary_counts_labels_and_up_share():
    dd = DatasetDict({"train": Dataset.from_list(ROWS)}).map(lambda r: {"id": r["symbol"] + r["period"]})
    s = summarize(dd)["splits"]["train"]
    assert s["rows"] == 3 and s["up_share"] == round(2 / 3, 4) and s["weeks"] == 2
    assert s["labels"] == {"up by 1-2%": 2, "down by 0-1%": 1}
