"""inference.py --backend file (run_import.py): outputs made elsewhere -> a run dir that comparison.py,
hitl.py and report.py read. Fixtures are written here in the shapes users bring: a notebook CSV without
ids, LLaMA-Factory's generated_predictions.jsonl, a JSONL with ids, a Parquet table with symbol+period.

Every fixture row states its expected `correct` literally (from the label table below, not from the
scorer), and per_sample.csv is checked row by row: a row joined to the wrong week or symbol flips it."""
import csv
import hashlib
import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import comparison  # noqa: E402
import inference  # noqa: E402
import run_import  # noqa: E402
from conftest import WEEK_STARTS, _next_day, make_answer, make_user_prompt  # noqa: E402
from errors import ForecasterError  # noqa: E402
from prompt import SYSTEM_PROMPT, wrap_public_prompt  # noqa: E402

TEST_WEEKS = (8, 9, 10, 11)
VALIDATION_WEEKS = (6, 7)
# the realised labels of the test split: neighbours (same week, or same symbol next week) differ in direction
LABELS = {
    "AXP": ("up by 1-2%", "down by 2-3%", "up by 0-1%", "down by more than 5%"),
    "BA": ("down by 0-1%", "up by 3-4%", "down by 1-2%", "up by more than 5%"),
    "CAT": ("up by 4-5%", "down by 0-1%", "up by 2-3%", "down by 1-2%"),
}
VALIDATION_LABELS = {"AXP": ("up by 1-2%", "down by 1-2%"), "BA": ("down by 2-3%", "up by 0-1%"),
                     "CAT": ("up by 0-1%", "up by 1-2%")}
# (symbol, test week, the answer's prediction, answer form, expected correct against LABELS)
NOTEBOOK_ROWS = [
    ("AXP", 0, "Up by 1-2%", "think", True),
    ("AXP", 1, "Up by 1-2%", "hash", False),
    ("AXP", 2, "Up by 0-1%", "plain", True),
    ("AXP", 3, "Down by more than 5%", "think", True),
    ("BA", 0, "Up by 0-1%", "hash", False),
    ("BA", 1, "Up by 3-4%", "think", True),
    ("BA", 2, "Down by 1-2%", "plain", True),
    ("BA", 3, "Down by 2-3%", "hash", False),
    ("CAT", 0, "Up by 4-5%", "think", True),
    ("CAT", 1, "Up by 1-2%", "plain", False),
    ("CAT", 2, "Down by 2-3%", "hash", False),
    ("CAT", 3, "Down by 1-2%", "think", True),
]


def period(week_index):
    return f"{WEEK_STARTS[week_index]} to {_next_day(WEEK_STARTS[week_index], 7)}"


def example_id(symbol, week_index):
    return f"{symbol}|{period(week_index)}"


def user_prompt(symbol, week_index):
    """Our prompt layout; CAT's intro leaves out the 'ticker CAT' sentence, so only the prompt text joins it."""
    text = make_user_prompt(symbol, week_index)
    if symbol == "CAT":
        text = text.replace(f"trading under the ticker {symbol} on the NASDAQ", "listed on the NASDAQ")
    return text


def public_prompt(symbol, week_index):
    return wrap_public_prompt(SYSTEM_PROMPT, user_prompt(symbol, week_index))


def chatml(prompt):
    """LLaMA-Factory's stored prompt: its template around the dataset's (Llama-2 form) instruction."""
    return f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n" \
           "<|im_start|>assistant\n"


def answer(prediction, form="plain", symbol="AXP"):
    body = {"plain": "[Positive Developments]:\n1. {s} demand holds.\n\n[Potential Concerns]:\n1. Costs rise.\n\n"
                     "[Prediction & Analysis]:\nPrediction: {p}\nAnalysis: Demand outweighs costs.",
            "hash": "### Positive Developments\n1. {s} demand holds.\n\n### Potential Concerns\n1. Costs rise.\n\n"
                    "### Prediction & Analysis\nPrediction: {p}\nAnalysis: Demand outweighs costs."}
    text = body["hash" if form == "hash" else "plain"].format(s=symbol, p=prediction)
    return f"<think>\nWeighing the news for {symbol}.\n</think>\n\n{text}" if form == "think" else text


def rows_for(weeks, labels):
    return [{"prompt": public_prompt(s, w), "answer": make_answer(s, labels[s][k]), "period": period(w),
             "label": labels[s][k], "symbol": s} for k, w in enumerate(weeks) for s in LABELS]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from datasets import Dataset, DatasetDict
    path = tmp_path_factory.mktemp("import-data") / "dataset"
    train = [{"prompt": public_prompt("AXP", w), "answer": make_answer("AXP", "down by 0-1%"), "period": period(w),
              "label": "down by 0-1%", "symbol": "AXP"} for w in range(4)]
    DatasetDict({"train": Dataset.from_list(train),
                 "validation": Dataset.from_list(rows_for(VALIDATION_WEEKS, VALIDATION_LABELS)),
                 "test": Dataset.from_list(rows_for(TEST_WEEKS, LABELS))}).save_to_disk(str(path))
    return path


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def notebook_csv(path):
    """prompt, reference, prediction, inference_time_s, rouge1 (a notebook's own scores); no ids. Row 13 is
    another stock (joins nowhere), row 14 repeats AXP's first week with another answer (the first wins)."""
    rows = [[public_prompt(s, TEST_WEEKS[w]), make_answer(s, LABELS[s][w]), answer(p, form, s), 1.0 + k, 0.5]
            for k, (s, w, p, form, _) in enumerate(NOTEBOOK_ROWS)]
    rows.append([wrap_public_prompt(SYSTEM_PROMPT, make_user_prompt("DIS", 8)), make_answer("DIS", "up by 1-2%"),
                 answer("Up by 1-2%"), 9.0, 0.5])
    rows.append([public_prompt("AXP", TEST_WEEKS[0]), make_answer("AXP", LABELS["AXP"][0]), answer("Down by 1-2%"),
                 9.0, 0.5])
    return write_csv(path, ["prompt", "reference", "prediction", "inference_time_s", "rouge1"], rows)


def run_inference(*args):
    return inference.main(["--backend", "file", "--quiet", *map(str, args)])


def compare(run_dirs, out):
    assert comparison.main([*map(str, run_dirs), "--out", str(out), "--bootstrap", "100"]) == 0
    with open(out / "per_sample.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh)), json.loads((out / "metrics.json").read_text())


def correct_by_id(per_sample, run):
    return {r["id"]: r["correct"] == "True" for r in per_sample if r["run"] == run}


def expected_correct(rows=NOTEBOOK_ROWS):
    return {example_id(s, TEST_WEEKS[w]): ok for s, w, _, _, ok in rows}


# ---------------------------------------------------------------------------------------------
# The join rules and the per-row truth
# ---------------------------------------------------------------------------------------------
def test_a_notebook_csv_without_ids_is_joined_by_its_prompts_and_scored_row_by_row(tmp_path, dataset, capsys):
    source = notebook_csv(tmp_path / "results.csv")
    out = tmp_path / "runs" / "notebook"
    assert run_inference("--outputs", source, "--dataset", dataset, "--split", "test", "--out", out) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["backend"] == "file" and manifest["prompt_style"] == "llama2"
    assert manifest["source"]["file"] == "results.csv" and manifest["source"]["size_bytes"] == source.stat().st_size
    assert manifest["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["columns"] == {"output": "prediction", "prompt": "prompt", "reference": "reference",
                                   "truth": None, "latency": "inference_time_s", "id": None, "symbol": None,
                                   "period": None}
    rows = manifest["rows"]
    assert (rows["read"], rows["joined"], rows["unjoined"], rows["duplicated"]) == (14, 12, 1, 1)
    # AXP and BA prompts name their ticker; CAT's do not, so only the prompt text joins them
    assert rows["joined_by"] == {"id": 0, "symbol+period": 0, "prompt ticker+period": 8, "prompt text": 4}
    assert rows["unjoined_rows"] == [13] and rows["duplicate_rows"] == [14]
    assert "1 row(s) joined no dataset row: 13" in printed and "duplicate row(s) left out" in printed
    assert manifest["dataset"]["split"] == "test" and manifest["dataset"]["fingerprint"]
    assert manifest["truth"] == {"source": run_import.TRUTH_FROM_DATASET, "from_dataset": True}

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    by_id = {p["id"]: p for p in predictions}
    first = by_id[example_id("AXP", TEST_WEEKS[0])]
    assert first["output"] == answer("Up by 1-2%", "think", "AXP")        # verbatim, <think> kept; first row wins
    assert first["latency_s"] == 1.0 and first["label"] == "up by 1-2%"
    assert by_id[example_id("CAT", TEST_WEEKS[3])]["latency_s"] == 12.0

    per_sample, metrics = compare([out], tmp_path / "cmp")
    assert correct_by_id(per_sample, "notebook") == expected_correct()
    m = metrics["rows"]["notebook"]["metrics"]
    assert m["parsed"] == 12 and m["format_failures"] == 0        # ### headers and <think> prefixes parse
    assert m["binary_accuracy"] == pytest.approx(7 / 12)
    assert m["think"]["share"] == pytest.approx(5 / 12)
    think_texts = [f"Weighing the news for {s}." for s, _, _, form, _ in NOTEBOOK_ROWS if form == "think"]
    assert m["think"]["mean_chars"] == pytest.approx(sum(map(len, think_texts)) / 5)
    assert metrics["imported"]["notebook"]["file"] == "results.csv"


def test_llama_factory_predictions_join_through_their_chat_template(tmp_path, dataset, capsys):
    """generated_predictions.jsonl: prompt (LLaMA-Factory's chatml around the public prompt), predict, label =
    the reference text (not a bin label)."""
    source = tmp_path / "generated_predictions.jsonl"
    with open(source, "w", encoding="utf-8") as fh:
        for s, w, p, form, _ in NOTEBOOK_ROWS:
            fh.write(json.dumps({"prompt": chatml(public_prompt(s, TEST_WEEKS[w])), "predict": answer(p, form, s),
                                 "label": make_answer(s, LABELS[s][w])}) + "\n")
    out = tmp_path / "lf"
    assert run_inference("--outputs", source, "--dataset", dataset, "--out", out, "--base_model", "qwen-lf") == 0
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["model"] == "qwen-lf"
    assert manifest["prompt_style"] == "chatml" and manifest["prompt_style_source"].startswith("detected")
    assert manifest["columns"]["output"] == "predict" and manifest["columns"]["reference"] == "label"
    assert manifest["columns"]["truth"] is None
    assert manifest["rows"]["joined_by"]["prompt text"] == 4 and manifest["rows"]["joined"] == 12
    per_sample, _ = compare([out], tmp_path / "cmp")
    assert correct_by_id(per_sample, "lf") == expected_correct()


def test_an_id_column_joins_first_and_falls_through_to_the_next_rule(tmp_path, dataset):
    source = tmp_path / "with_ids.jsonl"
    lines = [{"id": example_id("BA", TEST_WEEKS[1]), "output": answer("Down by 1-2%"), "latency_s": 2.5},
             {"id": example_id("CAT", TEST_WEEKS[0]), "output": answer("Up by 1-2%"), "latency_s": 3.0},
             # an id the dataset does not know, but a prompt that names ticker and week: rule 3 joins it
             {"id": "row-77", "output": answer("Up by 1-2%"), "latency_s": 1.0,
              "prompt": public_prompt("AXP", TEST_WEEKS[1])},
             {"id": "nowhere", "output": answer("Up by 1-2%"), "latency_s": 1.0}]
    source.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "ids"
    assert run_inference("--outputs", source, "--dataset", dataset, "--out", out) == 0
    rows = json.loads((out / "run.json").read_text())["rows"]
    assert rows["joined_by"]["id"] == 2 and rows["joined_by"]["prompt ticker+period"] == 1
    assert rows["unjoined_rows"] == [4]
    per_sample, metrics = compare([out], tmp_path / "cmp")
    assert correct_by_id(per_sample, "ids") == {example_id("BA", TEST_WEEKS[1]): False,
                                                example_id("CAT", TEST_WEEKS[0]): True,
                                                example_id("AXP", TEST_WEEKS[1]): False}
    assert metrics["rows"]["ids"]["metrics"]["latency_s"]["median"] == 2.5


def test_symbol_and_period_columns_join_a_parquet_file(tmp_path, dataset):
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = {"symbol": ["cat", "AXP", "BA"], "period": [period(TEST_WEEKS[2]), period(TEST_WEEKS[3]),
                                                        f"{WEEK_STARTS[TEST_WEEKS[0]]}_{_next_day(WEEK_STARTS[8], 7)}"],
             "response": [answer("Up by 2-3%"), answer("Up by 1-2%"), answer("Down by 0-1%")]}
    pq.write_table(pa.table(table), tmp_path / "outputs.parquet")
    out = tmp_path / "pq"
    assert run_inference("--outputs", tmp_path / "outputs.parquet", "--dataset", dataset, "--out", out) == 0
    assert json.loads((out / "run.json").read_text())["rows"]["joined_by"]["symbol+period"] == 3
    per_sample, _ = compare([out], tmp_path / "cmp")
    assert correct_by_id(per_sample, "pq") == {example_id("CAT", TEST_WEEKS[2]): True,
                                               example_id("AXP", TEST_WEEKS[3]): False,
                                               example_id("BA", TEST_WEEKS[0]): True}


def test_a_json_list_with_other_column_names_imports_with_columns(tmp_path, dataset, capsys):
    source = tmp_path / "partner.json"
    source.write_text(json.dumps([{"question": public_prompt("BA", TEST_WEEKS[3]), "model_answer": answer("Up by 5%"),
                                   "secs": "4.5"}]))
    out = tmp_path / "partner"
    assert run_inference("--outputs", source, "--dataset", dataset, "--out", out) == 1
    assert "no output column; it has question, model_answer, secs" in capsys.readouterr().err
    assert run_inference("--outputs", source, "--dataset", dataset, "--out", out,
                         "--columns", "output=model_anwser") == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: --columns: output=model_anwser: no such column") and "question, model_answer" in err
    assert not out.exists()
    assert run_inference("--outputs", source, "--dataset", dataset, "--out", out,
                         "--columns", "output=model_answer,prompt=question,latency=secs") == 0
    per_sample, metrics = compare([out], tmp_path / "cmp")
    assert correct_by_id(per_sample, "partner") == {example_id("BA", TEST_WEEKS[3]): True}
    assert metrics["rows"]["partner"]["metrics"]["latency_s"]["mean"] == 4.5


def test_csv_fields_of_any_length_and_column_names_in_any_case(tmp_path, dataset):
    long_output = answer("Down by 0-1%", symbol="BA") + "\r\n" + "more analysis " * 20_000     # 280k characters
    source = write_csv(tmp_path / "long.csv", ["Prompt", "Response", "Time"],
                       [[public_prompt("BA", TEST_WEEKS[0]), long_output, "7.5"]])
    out = tmp_path / "long"
    assert run_inference("--outputs", source, "--dataset", dataset, "--out", out, "--columns", "latency=") == 0
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["columns"]["output"] == "Response" and manifest["columns"]["latency"] is None
    prediction = json.loads((out / "predictions.jsonl").read_text())
    assert prediction["output"] == long_output and prediction["latency_s"] is None
    assert prediction["id"] == example_id("BA", TEST_WEEKS[0])


def test_a_label_column_of_bin_labels_is_the_truth_and_disagreements_with_the_dataset_are_counted(tmp_path, dataset,
                                                                                                  capsys):
    source = tmp_path / "labelled.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in [
        {"prompt": public_prompt("AXP", TEST_WEEKS[0]), "output": answer("Down by 1-2%"),
         "reference": make_answer("AXP", "up by 1-2%"), "label": "Down by 1-2%"},     # label says down, reference up
        {"prompt": public_prompt("BA", TEST_WEEKS[0]), "output": answer("Down by 1-2%"),
         "reference": make_answer("BA", "down by 0-1%"), "label": "down by 0-1%"}]))
    assert run_inference("--outputs", source, "--out", tmp_path / "nodata") == 0
    manifest = json.loads((tmp_path / "nodata" / "run.json").read_text())
    assert manifest["columns"]["truth"] == "label" and manifest["columns"]["reference"] == "reference"
    assert manifest["truth"]["source"] == run_import.TRUTH_FROM_FILE
    per_sample, _ = compare([tmp_path / "nodata"], tmp_path / "cmp")
    assert correct_by_id(per_sample, "nodata") == {example_id("AXP", TEST_WEEKS[0]): True,
                                                   example_id("BA", TEST_WEEKS[0]): True}
    capsys.readouterr()
    assert run_inference("--outputs", source, "--dataset", dataset, "--out", tmp_path / "joined") == 0
    assert "1 row(s) whose truth column disagrees with the dataset's label" in capsys.readouterr().out
    assert json.loads((tmp_path / "joined" / "run.json").read_text())["rows"]["truth_disagreement_rows"] == [1]
    per_sample, _ = compare([tmp_path / "joined"], tmp_path / "cmp2")
    assert correct_by_id(per_sample, "joined") == {example_id("AXP", TEST_WEEKS[0]): False,
                                                   example_id("BA", TEST_WEEKS[0]): True}


# ---------------------------------------------------------------------------------------------
# Without a dataset
# ---------------------------------------------------------------------------------------------
def test_without_a_dataset_the_truth_is_the_references_prediction_line_and_every_table_says_so(tmp_path, capsys):
    """LLaMA-Factory keys; the reference of AXP's second week says 'Up' although the week went down: without
    a dataset that reference is the truth, so the 'Up by 1-2%' answer counts as correct there."""
    source = tmp_path / "generated_predictions.jsonl"
    with open(source, "w", encoding="utf-8") as fh:
        for s, w, p, form, _ in NOTEBOOK_ROWS:
            label = "up by 2-3%" if (s, w) == ("AXP", 1) else LABELS[s][w]
            fh.write(json.dumps({"prompt": public_prompt(s, TEST_WEEKS[w]), "predict": answer(p, form, s),
                                 "label": make_answer(s, label)}) + "\n")
        fh.write(json.dumps({"prompt": "no ticker here", "predict": answer("Up by 1-2%"),
                             "label": "an answer without a prediction"}) + "\n")
    out = tmp_path / "nodata"
    assert run_inference("--outputs", source, "--out", out) == 0
    assert "1 row(s) without a readable truth left out: 13" in capsys.readouterr().out
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["truth"] == {"source": run_import.TRUTH_FROM_REFERENCE, "from_dataset": False}
    assert manifest["dataset"]["path"] is None and manifest["rows"]["no_truth_rows"] == [13]
    per_sample, metrics = compare([out], tmp_path / "cmp")
    expected = expected_correct()
    expected[example_id("AXP", TEST_WEEKS[1])] = True     # the reference's 'Up' is the truth here
    # ids come from the ticker and period in the prompts (CAT's name no ticker: row numbers instead)
    got = correct_by_id(per_sample, "nodata")
    cat_rows = {f"row-{k + 1}": ok for k, (s, w, _, _, ok) in enumerate(NOTEBOOK_ROWS) if s == "CAT"}
    assert got == {**{k: v for k, v in expected.items() if not k.startswith("CAT")}, **cat_rows}
    cat = [r for r in per_sample if r["id"].startswith("row-")]
    assert {r["symbol"] for r in cat} == {"unknown"} and {r["period"] for r in cat} == {period(w) for w in TEST_WEEKS}
    assert metrics["weeks"] == 4
    assert metrics["truth"]["from_dataset"] is False
    table = (tmp_path / "cmp" / "metrics.md").read_text()
    assert "| nodata ‡ |" in table and "*majority (baseline)* ‡" in table and "not realised labels" in table
    assert "| symbol | nodata ‡ |" in table


# ---------------------------------------------------------------------------------------------
# Re-running and malformed files
# ---------------------------------------------------------------------------------------------
def test_importing_the_same_file_twice_changes_nothing_and_another_file_needs_overwrite(tmp_path, dataset, capsys):
    source = notebook_csv(tmp_path / "results.csv")
    out = tmp_path / "run"
    assert run_inference("--outputs", source, "--dataset", dataset, "--out", out) == 0
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    capsys.readouterr()
    assert run_inference("--outputs", source, "--dataset", dataset, "--out", out) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    assert run_inference("--outputs", source, "--dataset", dataset, "--out", out, "--columns", "latency=") == 1
    assert "other settings (columns)" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": example_id("BA", TEST_WEEKS[0]), "output": answer("Down by 1-2%")}) + "\n")
    assert run_inference("--outputs", other, "--dataset", dataset, "--out", out) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "a different file (results.csv)" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {k: v[0] for k, v in before.items()}
    assert run_inference("--outputs", other, "--dataset", dataset, "--out", out, "--overwrite") == 0
    predictions = (out / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 1 and json.loads(predictions[0])["id"] == example_id("BA", TEST_WEEKS[0])
    assert json.loads((out / "run.json").read_text())["source"]["file"] == "other.jsonl"


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "the file is empty"),
    ("header_only.csv", b"prompt,prediction\n", "holds no rows"),
    ("no_output.csv", b"prompt,reference\nhello,world\n", "no output column; it has prompt, reference"),
    ("bad_line.jsonl", b'{"output": "a"}\n{"output": "b",\n', "line 2 is not JSON"),
    ("binary.csv", bytes(range(256)) * 4, "a binary file, not CSV text"),
    ("binary.parquet", b"PAR1 not really parquet", "not a readable Parquet file"),
    ("notalist.json", b'{"output": "a"}', "must hold a list of objects"),
])
def test_a_malformed_file_gets_one_clear_error_and_nothing_is_written(tmp_path, dataset, capsys, name, content,
                                                                       message):
    source = tmp_path / name
    source.write_bytes(content)
    out = tmp_path / "out"
    assert run_inference("--outputs", source, "--dataset", dataset, "--out", out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and message in err[0], err
    assert not out.exists()


def test_flag_mistakes_are_one_error_line(tmp_path, capsys):
    assert inference.main(["--backend", "file", "--out", str(tmp_path / "x")]) == 1
    assert "--backend file needs --outputs" in capsys.readouterr().err
    assert inference.main(["--outputs", "a.csv", "--dataset", "d", "--out", str(tmp_path / "x")]) == 1
    assert "--outputs/--columns apply to --backend file only" in capsys.readouterr().err
    assert run_inference("--outputs", tmp_path / "results.txt", "--out", tmp_path / "x") == 1
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "results.txt").write_text("x")
    assert run_inference("--outputs", tmp_path / "results.txt", "--out", tmp_path / "x") == 1
    assert "unknown format '.txt'" in capsys.readouterr().err


def test_outputs_of_another_split_are_refused_with_a_hint(tmp_path, dataset, capsys):
    source = tmp_path / "val.jsonl"
    source.write_text(json.dumps({"prompt": public_prompt("AXP", VALIDATION_WEEKS[0]), "output": answer("Up by 1-2%")})
                      + "\n")
    assert run_inference("--outputs", source, "--dataset", dataset, "--split", "test", "--out", tmp_path / "o") == 1
    assert "1 rows join split 'validation': pass --split validation" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Review and comparison metrics on imported runs
# ---------------------------------------------------------------------------------------------
def test_the_review_page_serves_an_imported_validation_run_in_its_prompt_style(tmp_path, dataset):
    from fastapi.testclient import TestClient

    import hitl
    source = tmp_path / "generated_predictions.jsonl"
    source.write_text("".join(json.dumps({"prompt": chatml(public_prompt(s, w)), "label": "reference text",
                                          "predict": answer("Up by 1-2%", "think", s)}) + "\n"
                              for w in VALIDATION_WEEKS for s in LABELS))
    out = tmp_path / "lf-validation"
    assert run_inference("--outputs", source, "--dataset", dataset, "--split", "validation", "--out", out) == 0
    client = TestClient(hitl.create_app(tmp_path / "reviews.sqlite", [out]))
    meta = client.get("/api/meta").json()
    assert meta["runs"][0]["name"] == "lf-validation" and meta["runs"][0]["prompt_style"] == "chatml"
    assert meta["runs"][0]["split"] == "validation"
    listed = client.get("/api/examples", params={"reviewer": "ann"}).json()
    assert len(listed["examples"]) == 6
    one = client.get("/api/example", params={"id": example_id("BA", 7), "reviewer": "ann"}).json()
    assert one["outputs"]["A"]["text"].startswith("<think>\nWeighing the news for BA.")


def test_comparison_writes_rouge_distributions_per_symbol_rouge_and_per_sample_scores(tmp_path, dataset):
    source = notebook_csv(tmp_path / "results.csv")
    out = tmp_path / "nb"
    assert run_inference("--outputs", source, "--dataset", dataset, "--out", out) == 0
    per_sample, metrics = compare([out], tmp_path / "cmp")
    assert list(per_sample[0]) == comparison.PER_SAMPLE_FIELDS
    assert len(per_sample) == 12
    row = next(r for r in per_sample if r["id"] == example_id("AXP", TEST_WEEKS[1]))
    assert (row["symbol"], row["direction"], row["bin_code"], row["truth"]) == ("AXP", "up", "U2", "down by 2-3%")
    assert float(row["squared_error"]) == (1.5 - -2.5) ** 2 and row["format_problems"] == ""
    assert row["think_chars"] == "" and float(row["rouge_analysis_rougeL"]) > 0
    m = metrics["rows"]["nb"]["metrics"]
    dist = m["rouge_distribution"]["analysis"]["rougeL"]
    values = sorted(float(r["rouge_analysis_rougeL"]) for r in per_sample)
    assert dist["n"] == 12 and dist["mean"] == pytest.approx(sum(values) / 12)
    assert dist["q1"] <= dist["median"] <= dist["q3"] and dist["median"] == pytest.approx((values[5] + values[6]) / 2)
    axp = [float(r["rouge_positive_rouge1"]) for r in per_sample if r["symbol"] == "AXP"]
    assert m["per_symbol_rouge"]["AXP"]["positive"]["rouge1"] == pytest.approx(sum(axp) / len(axp))
    assert set(m["per_symbol_rouge"]) == set(m["per_symbol_accuracy"]) == {"AXP", "BA", "CAT"}
    assert (tmp_path / "cmp" / "rouge_distribution.png").stat().st_size > 0
    table = (tmp_path / "cmp" / "metrics.md").read_text()
    assert "Imported run nb: results.csv (csv; 12 of 14 rows imported, 1 unjoined, 1 duplicates" in table
    assert "nb 42% (mean 26 chars)" in table
    axp_rouge_l = [statistics.fmean(float(r[f"rouge_{s}_rougeL"]) for r in per_sample if r["symbol"] == "AXP")
                   for s in ("positive", "concerns", "analysis")]
    assert f"| AXP | 0.75 / {statistics.fmean(axp_rouge_l):.2f} | 0.50 |" in table     # majority: always down


def test_doctests_pass():
    import doctest
    assert doctest.testmod(run_import).failed == 0 and doctest.testmod(comparison).failed == 0


def test_the_report_names_imported_runs_flags_the_truth_and_shows_the_rouge_distributions(tmp_path):
    import report
    source = tmp_path / "generated_predictions.jsonl"
    source.write_text("".join(json.dumps({"prompt": public_prompt(s, TEST_WEEKS[w]), "predict": answer(p, form, s),
                                          "label": make_answer(s, LABELS[s][w])}) + "\n"
                              for s, w, p, form, _ in NOTEBOOK_ROWS))
    assert run_inference("--outputs", source, "--out", tmp_path / "lf") == 0
    assert report.main(["--runs", str(tmp_path / "lf"), "--tokenizer", "chars", "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "**lf** from `generated_predictions.jsonl` (jsonl" in text and "12 of 12 rows imported" in text
    assert "| lf ‡ |" in text and "not realised labels" in text
    assert "comparison_rouge_distribution.png" in text
    assert (tmp_path / "rep" / "comparison_rouge_distribution.png").stat().st_size > 0


def test_the_review_page_refuses_an_imported_run_of_unknown_style_naming_the_fix(tmp_path, dataset, capsys):
    import hitl
    source = tmp_path / "bare.jsonl"
    source.write_text(json.dumps({"id": example_id("AXP", VALIDATION_WEEKS[0]), "output": answer("Up by 1-2%")}) + "\n")
    out = tmp_path / "bare"
    assert run_inference("--outputs", source, "--dataset", dataset, "--split", "validation", "--out", out) == 0
    assert "the prompt style is unknown" in capsys.readouterr().out
    with pytest.raises(ForecasterError, match="--prompt_style NAME --overwrite"):   # runs.RunError: one Error: line
        hitl.create_app(tmp_path / "reviews.sqlite", [out])
    assert run_inference("--outputs", source, "--dataset", dataset, "--split", "validation", "--out", out,
                         "--prompt_style", "llama3", "--overwrite") == 0
    assert json.loads((out / "run.json").read_text())["prompt_style_source"] == "--prompt_style"
    hitl.create_app(tmp_path / "reviews2.sqlite", [out])
