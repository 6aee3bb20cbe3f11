"""hitl.py: the review API, the store (history, concurrency), the SFT / DPO export and the CLI's errors.

Run dirs and a small dataset are built inside the tests; the helpers below are reused by
tests/test_hitl_browser.py.
"""
import json
import sqlite3
import threading

import pytest
from datasets import Dataset, DatasetDict, load_from_disk
from fastapi.testclient import TestClient

import hitl
import hitl_export
import review_store
from dataset_io import load_forecast_dataset
from prompt import SYSTEM_PROMPT, get_style, split_public_prompt, wrap_public_prompt


def answer(prediction="Up by 1-2%", positive="Strong iPhone sales.", concerns="Supply chain risk."):
    return (f"[Positive Developments]:\n1. {positive}\n\n[Potential Concerns]:\n1. {concerns}\n\n"
            f"[Prediction & Analysis]:\nPrediction: {prediction}\nAnalysis: Demand outweighs the risks.")


PERIODS = ["2012-01-08 to 2012-01-15", "2012-01-15 to 2012-01-22", "2012-01-22 to 2012-01-29"]
LABELS = {("AAA", 0): "up by 1-2%", ("AAA", 1): "down by 0-1%", ("AAA", 2): "up by 2-3%",
          ("BBB", 0): "down by 2-3%", ("BBB", 1): "up by 0-1%", ("BBB", 2): "down by more than 5%"}


def dataset_rows(split_offset=0):
    rows = []
    for (symbol, k), label in LABELS.items():
        period = PERIODS[k].replace("2012-01", f"2012-{1 + split_offset:02d}")
        teacher = answer("Up by 1-2%" if label.startswith("up") else "Down by 2-3%",
                         positive=f"teacher point for {symbol}")
        rows.append({"prompt": wrap_public_prompt(SYSTEM_PROMPT, f"News for {symbol} before {period}."),
                     "answer": teacher, "period": period, "label": label, "symbol": symbol})
    return rows


def make_dataset(root):
    path = root / "dataset"
    DatasetDict({"train": Dataset.from_list(dataset_rows(0)), "validation": Dataset.from_list(dataset_rows(2)),
                 "test": Dataset.from_list(dataset_rows(4))}).save_to_disk(str(path))
    return path


def make_run(root, name, dataset_path, outputs, split="validation", prompt_style="chatml"):
    """A run dir as inference.py writes it: predictions.jsonl + run.json."""
    run = root / name
    run.mkdir()
    dd = load_forecast_dataset(dataset_path)
    by_id = {r["id"]: r for r in dd[split].to_list()}
    with open(run / "predictions.jsonl", "w") as f:
        for example_id, output in outputs.items():
            r = by_id[example_id]
            f.write(json.dumps({"id": example_id, "symbol": r["symbol"], "period": r["period"],
                                "label": r["label"], "reference": r["answer"], "output": output,
                                "latency_s": 0.1, "output_tokens": 50, "hit_max_new_tokens": False}) + "\n")
    (run / "run.json").write_text(json.dumps({
        "model": "smollm2-135m", "adapter": None, "prompt_style": prompt_style, "decoding": {"do_sample": False},
        "backend": "transformers", "batch_size": 1, "dtype": "bf16",
        "dataset": {"path": str(dataset_path), "split": split, "fingerprint": "x"}, "n": len(outputs),
        "wall_time_s": 1.0}))
    return run


def validation_ids(dataset_path, split="validation"):
    return load_forecast_dataset(dataset_path)[split]["id"]


def make_two_runs(root, split="validation"):
    """Run A (chatml) answers 'up' everywhere; run B disagrees on two examples and is malformed on one."""
    data = make_dataset(root)
    ids = validation_ids(data, split)
    a = {i: answer("Up by 1-2%", positive=f"A on {i}") for i in ids}
    b = {i: answer("Up by 0-1%", positive=f"B on {i}") for i in ids}
    b[ids[1]] = answer("Down by 1-2%", positive=f"B on {ids[1]}")
    b[ids[4]] = answer("Down by 3-4%", positive=f"B on {ids[4]}")
    b[ids[2]] = "I think it will go up."                       # no sections: a format failure
    return make_run(root, "run-a", data, a, split), make_run(root, "run-b", data, b, split), ids


@pytest.fixture
def setup(tmp_path):
    run_a, run_b, ids = make_two_runs(tmp_path)
    db = tmp_path / "reviews.sqlite"
    client = TestClient(hitl.create_app(db, [run_a, run_b]))
    return client, ids, db, tmp_path


def review(client, example_id, reviewer="ann", **changes):
    r = client.post("/api/review", json={"example_id": example_id, "reviewer": reviewer, **changes})
    assert r.status_code == 200, r.text
    return r.json()


def reveal(client, example_id, reviewer="ann"):
    r = client.post("/api/reveal", json={"example_id": example_id, "reviewer": reviewer})
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------------------------------------
# The page and the read endpoints
# ---------------------------------------------------------------------------------------------
def test_the_page_is_one_html_file_with_no_external_assets(setup):
    client = setup[0]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for remote in ('src="http', "src='http", 'href="http', "@import", "url(http", "//cdn"):
        assert remote not in page.text


def test_meta_lists_both_runs_their_prompt_style_and_the_rubric(setup):
    meta = setup[0].get("/api/meta").json()
    assert [(r["slot"], r["name"], r["prompt_style"], r["split"]) for r in meta["runs"]] == [
        ("A", "run-a", "chatml", "validation"), ("B", "run-b", "chatml", "validation")]
    assert [r["name"] for r in meta["rubric"]] == ["Evidence", "Factual accuracy", "Reasoning", "Format"]
    assert meta["total"] == 6 and meta["symbols"] == ["AAA", "BBB"] and meta["test_split_examples"] == 0


def test_outcome_and_teacher_answer_stay_hidden_until_the_reviewer_reveals_them(setup):
    client, ids = setup[:2]
    before = client.get("/api/example", params={"id": ids[0], "reviewer": "ann"}).json()
    assert "label" not in before and "reference" not in before and before["revealed"] is False
    assert "teacher point" not in json.dumps(before)               # not even hidden in the payload
    assert before["outputs"]["A"]["parsed"]["prediction"] == "Up by 1-2%"
    assert before["user"].startswith("News for AAA") and before["system"] == SYSTEM_PROMPT.strip("\n")
    shown = reveal(client, ids[0])
    assert shown["label"] == "up by 1-2%" and "teacher point for AAA" in shown["reference"]
    after = client.get("/api/example", params={"id": ids[0], "reviewer": "ann"}).json()
    assert after["revealed"] and after["label"] == "up by 1-2%"
    other = client.get("/api/example", params={"id": ids[0], "reviewer": "bob"}).json()
    assert "label" not in other                                    # revealing is per reviewer


def test_every_action_is_saved_with_timestamps_and_kept_in_history(setup):
    client, ids = setup[:2]
    review(client, ids[0], rating_A=4)
    review(client, ids[0], rating_B=2, preference="A", comment="A cites the news")
    reveal(client, ids[0])
    review(client, ids[0], direction_A="right", direction_B="wrong")
    edited = answer("Up by 1-2%", positive="Corrected point")
    state = review(client, ids[0], edit_B=edited)["review"]
    assert (state["rating_A"], state["rating_B"], state["preference"], state["comment"]) == (4, 2, "A", "A cites the news")
    assert (state["direction_A"], state["direction_B"], state["edit_B"]) == ("right", "wrong", edited)
    assert state["edit_B_after_reveal"] == 1 and state["revealed_at"] and state["created_at"] <= state["updated_at"]
    history = client.get("/api/history", params={"id": ids[0], "reviewer": "ann"}).json()["history"]
    assert [h["field"] for h in history] == ["rating_A", "rating_B", "preference", "comment", "revealed",
                                             "direction_A", "direction_B", "edit_B"]
    assert all(h["at"] for h in history)


def test_an_edit_never_overwrites_history(setup):
    client, ids, db = setup[:3]
    review(client, ids[0], edit_A=answer(positive="first fix"))
    review(client, ids[0], edit_A=answer(positive="second fix"))
    review(client, ids[0], edit_A=None)                            # revert to the model's answer
    history = client.get("/api/history", params={"id": ids[0]}).json()["history"]
    texts = [json.loads(h["value"]) for h in history if h["field"] == "edit_A"]
    assert "first fix" in texts[0] and "second fix" in texts[1] and texts[2] is None
    with sqlite3.connect(db) as con, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE history SET value = 'x'")
    with sqlite3.connect(db) as con, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM history")


def test_an_edit_equal_to_the_original_or_empty_counts_as_no_edit(setup):
    client, ids = setup[:2]
    original = client.get("/api/example", params={"id": ids[0], "reviewer": "ann"}).json()["outputs"]["A"]["text"]
    assert review(client, ids[0], edit_A=original + "\n")["review"]["edit_A"] is None
    assert review(client, ids[0], edit_A="   ")["review"]["edit_A"] is None


@pytest.mark.parametrize("body, message", [
    ({"rating_A": 6}, "rating_A: Input should be less than or equal to 5"),
    ({"rating_B": 0}, "rating_B: Input should be greater than or equal to 1"),
    ({"direction_A": "maybe"}, "direction_A: Input should be 'right' or 'wrong'"),
    ({"preference": "C"}, "preference: Input should be 'A', 'B' or 'tie'"),
    ({"comment": "x" * (hitl.MAX_COMMENT_CHARS + 1)}, "comment: String should have at most 4000 characters"),
    ({"edit_A": "x" * (hitl.MAX_ANSWER_CHARS + 1)}, "edit_A: String should have at most 20000 characters"),
    ({"reviewer": "r" * 65, "rating_A": 3}, "reviewer: String should have at most 64 characters"),
    ({"reviewer": "", "rating_A": 3}, "reviewer: String should have at least 1 character"),
    ({"reviewer": "<script>", "rating_A": 3}, "reviewer: String should match pattern"),
    ({"score": 3}, "score: Extra inputs are not permitted"),
    ({"example_id": "ZZZ|2012-01-01 to 2012-01-08", "rating_A": 3}, "unknown example id"),
    ({}, "nothing to save"),
    ({"direction_A": "right"}, "reveal the outcome before marking a direction"),
])
def test_invalid_inputs_get_a_422_with_a_clear_message(setup, body, message):
    client, ids = setup[:2]
    r = client.post("/api/review", json={"example_id": ids[0], "reviewer": "ann", **body})
    assert r.status_code == 422 and message in r.json()["error"], r.text
    assert client.get("/api/history", params={"id": ids[0]}).json()["history"] == []


def test_reveal_and_history_reject_unknown_ids_and_get_of_an_unknown_example_is_404(setup):
    client = setup[0]
    assert client.post("/api/reveal", json={"example_id": "nope", "reviewer": "ann"}).status_code == 422
    assert client.get("/api/history", params={"id": "nope"}).status_code == 422
    assert client.get("/api/example", params={"id": "nope", "reviewer": "ann"}).status_code == 404


def test_a_single_run_has_no_output_b_and_no_preference(tmp_path):
    data = make_dataset(tmp_path)
    ids = validation_ids(data)
    run = make_run(tmp_path, "only", data, {i: answer() for i in ids})
    client = TestClient(hitl.create_app(tmp_path / "db.sqlite", [run]))
    for body, message in (({"rating_B": 3}, "has no output B"), ({"preference": "A"}, "only one output")):
        r = client.post("/api/review", json={"example_id": ids[0], "reviewer": "ann", **body})
        assert r.status_code == 422 and message in r.json()["error"]


def test_filters_select_symbol_disagreement_format_failures_and_unreviewed(setup):
    client, ids = setup[:2]

    def listed(**params):
        return [e["id"] for e in client.get("/api/examples", params={"reviewer": "ann", **params}).json()["examples"]]
    assert listed() == ids
    assert listed(symbol="BBB") == [i for i in ids if i.startswith("BBB")]
    assert listed(disagreement=True) == [ids[1], ids[2], ids[4]]   # ids[2]: B has no direction
    assert listed(format_failures=True) == [ids[2]]
    review(client, ids[0], rating_A=5, rating_B=3)
    review(client, ids[1], rating_A=5)                              # B not rated yet: still unreviewed
    assert listed(unreviewed=True) == ids[1:]


def test_progress_counts_examples_whose_every_output_is_rated_by_this_reviewer(setup):
    client, ids = setup[:2]
    review(client, ids[0], rating_A=5, rating_B=3)
    review(client, ids[1], rating_A=5)
    review(client, ids[2], "bob", rating_A=1, rating_B=1)
    assert client.get("/api/examples", params={"reviewer": "ann"}).json()["progress"] == {"reviewed": 1, "total": 6}


def test_the_parse_endpoint_gives_the_shared_parsers_verdict(setup):
    client = setup[0]
    good = client.post("/api/parse", json={"text": answer("Down by 2-3%")}).json()
    assert good["ok"] and good["direction"] == "down" and good["bin_code"] == "D3"
    bad = client.post("/api/parse", json={"text": "[Positive Developments]:\n1. a"}).json()
    assert not bad["ok"] and "missing concerns section" in bad["problems"]


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------
def test_two_concurrent_writers_lose_no_write(setup):
    ids, db = setup[1], setup[2]
    writes = 40
    errors = []

    def writer(reviewer, field, values):
        store = review_store.ReviewStore(db)  # its own connection, as each request gets
        try:
            for n in range(writes):
                store.apply(ids[n % 3], reviewer, {field: values(n)})
        except Exception as exc:   # noqa: BLE001 - collected and asserted below
            errors.append(exc)
    threads = [threading.Thread(target=writer, args=("ann", "rating_A", lambda n: n % 5 + 1)),
               threading.Thread(target=writer, args=("ann", "comment", lambda n: f"note {n}")),
               threading.Thread(target=writer, args=("bob", "rating_B", lambda n: 5 - n % 5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = review_store.ReviewStore(db)
    assert len(store.history()) == 3 * writes
    last = {r["example_id"]: r for r in store.reviews("ann")}
    # the last write to each example from each writer is the one kept, field by field
    assert last[ids[0]]["rating_A"] == (39 % 5 + 1) and last[ids[0]]["comment"] == "note 39"
    assert last[ids[2]]["rating_A"] == (38 % 5 + 1) and last[ids[2]]["comment"] == "note 38"
    assert {r["example_id"]: r["rating_B"] for r in store.reviews("bob")}[ids[1]] == 5 - 37 % 5
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_serving_a_db_that_holds_other_runs_is_refused(setup):
    _, _, db, root = setup
    data = root / "dataset"
    other = make_run(root, "other", data, {i: answer() for i in validation_ids(data)})
    with pytest.raises(review_store.HitlError, match="holds reviews of other runs"):
        hitl.create_app(db, [other])
    hitl.create_app(db)                                             # reopening without --runs is fine


def test_a_missing_run_file_is_one_error_line(tmp_path, capsys):
    (tmp_path / "empty-run").mkdir()
    assert hitl.main(["serve", "--runs", str(tmp_path / "empty-run"), "--db", str(tmp_path / "db")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error:") and "missing run.json, predictions.jsonl" in err[0]




def make_db_without_reviews(root):
    db = root / "no-reviews.sqlite"
    review_store.ReviewStore(db)          # the tables serve creates, no review yet
    return db


# The bad-input table of `python hitl.py serve/export` is in tests/test_bad_input.py, beside every other CLI's.


def test_every_problem_with_the_command_line_is_named_at_once(tmp_path, capsys):
    (tmp_path / "empty-run").mkdir()
    (tmp_path / "not-sqlite.sqlite").write_text("reviews, honest")
    assert hitl.main(["serve", "--runs", str(tmp_path / "empty-run"), str(tmp_path / "nope"), "--port", "70000",
                      "--db", str(tmp_path / "not-sqlite.sqlite")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    for part in ("--port 70000 is not a TCP port", "empty-run: missing run.json, predictions.jsonl",
                 "nope: no such folder", "not-sqlite.sqlite: not a SQLite file"):
        assert part in err[0]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert hitl.main(["export", "--db", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "full"),
                      "--min_mean_rating", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    for part in ("missing.sqlite: no such file", "is not empty; pass --overwrite",
                 "--min_mean_rating 0.0 is outside the 1-5 rating scale"):
        assert part in err[0]


def test_serve_without_runs_needs_a_db_that_holds_runs(tmp_path, capsys):
    assert hitl.main(["serve", "--db", str(tmp_path / "new.sqlite")]) == 1
    assert "--runs is required" in capsys.readouterr().err
    assert hitl.main(["serve", "--db", str(make_db_without_reviews(tmp_path))]) == 1
    assert "holds no runs yet" in capsys.readouterr().err


def test_the_page_warns_on_test_split_runs_and_export_refuses_them(tmp_path, capsys):
    run_a, _, ids = make_two_runs(tmp_path, split="test")
    client = TestClient(hitl.create_app(tmp_path / "db.sqlite", [run_a]))
    assert client.get("/api/meta").json()["test_split_examples"] == 6
    review(client, ids[0], rating_A=5)
    assert hitl.main(["export", "--db", str(tmp_path / "db.sqlite"), "--out", str(tmp_path / "out")]) == 1
    assert "from the test split" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def run_export(db, out, *flags):
    assert hitl.main(["export", "--db", str(db), "--out", str(out), *flags]) == 0
    return json.loads((out / "export.json").read_text())


def test_export_writes_an_sft_datasetdict_that_load_forecast_dataset_reads(setup, capsys):
    client, ids, db, root = setup
    fixed = answer("Down by 0-1%", positive="Weak guidance, from the prompt")
    review(client, ids[1], rating_A=2, rating_B=3, edit_A=fixed)         # before the reveal
    review(client, ids[0], rating_A=5, rating_B=2, preference="A")
    review(client, ids[0], "bob", rating_A=4, preference="A")
    review(client, ids[3], rating_A=3, rating_B=2, preference="A")       # mean 3 < 4: not SFT
    report = run_export(db, root / "out")
    dd = load_forecast_dataset(root / "out" / "sft")
    assert list(dd) == ["train"] and dd["train"].column_names == list(hitl_export.SFT_COLUMNS)
    rows = {r["id"]: r for r in dd["train"].to_list()}
    assert set(rows) == {ids[0], ids[1]}
    assert rows[ids[1]]["answer"] == fixed and rows[ids[1]]["label"] == "down by 0-1%"
    assert rows[ids[0]]["answer"].startswith("[Positive Developments]:\n1. A on")
    assert rows[ids[0]]["prompt"].startswith("[INST]<<SYS>>")             # our dataset's public form
    assert report["sft_rows"] == 2
    out = capsys.readouterr().out
    assert "Exported 2 SFT rows and 3 DPO pairs" in out


def test_dpo_pairs_carry_trl_columns_and_the_prompt_exactly_as_at_generation(setup):
    client, ids, db, root = setup
    review(client, ids[0], preference="B")
    fixed = answer("Up by 1-2%", positive="Grounded point")
    review(client, ids[1], edit_A=fixed)
    run_export(db, root / "out")
    pairs = load_from_disk(str(root / "out" / "dpo"))["train"].to_list()
    assert [p["source"] for p in pairs] == ["preference", "edit"]
    example = load_forecast_dataset(root / "dataset")["validation"].to_list()
    system, user = split_public_prompt(example[0]["prompt"])
    chatml = get_style("chatml")
    assert pairs[0]["prompt"] == chatml.format_prompt(system, user) and pairs[0]["style"] == "chatml"
    assert pairs[0]["chosen"].startswith("[Positive Developments]:\n1. B on") and pairs[0]["chosen"].endswith("<|im_end|>")
    assert pairs[0]["rejected"].startswith("[Positive Developments]:\n1. A on")
    assert pairs[1]["chosen"] == fixed + "<|im_end|>" and "A on" in pairs[1]["rejected"]
    jsonl = [json.loads(line) for line in (root / "out" / "dpo.jsonl").read_text().splitlines()]
    assert jsonl == pairs and list(jsonl[0]) == list(hitl_export.DPO_COLUMNS)


def test_ties_and_conflicting_preferences_are_dropped(setup):
    client, ids, db, root = setup
    review(client, ids[0], preference="tie")
    review(client, ids[1], preference="A")
    review(client, ids[1], "bob", preference="B")
    review(client, ids[3], preference="B")
    review(client, ids[3], "bob", preference="B")
    report = run_export(db, root / "out")
    assert report["counts"]["preferences dropped: tie"] == 1
    assert report["counts"]["preferences dropped: conflicting"] == 1
    pairs = load_from_disk(str(root / "out" / "dpo"))["train"]
    assert pairs["id"] == [ids[3]] and pairs["reviewers"] == ["ann,bob"]


def test_prediction_only_edits_after_the_reveal_are_flagged_and_kept_out_of_dpo_by_default(setup):
    client, ids, db, root = setup
    original = client.get("/api/example", params={"id": ids[1], "reviewer": "ann"}).json()["outputs"]["A"]["text"]
    reveal(client, ids[1])
    review(client, ids[1], edit_A=original.replace("Up by 1-2%", "Down by 0-1%"))
    review(client, ids[4], edit_A=answer("Down by 0-1%"))               # before the reveal: a real judgement
    report = run_export(db, root / "out")
    assert report["flagged_edits"] == [{"id": ids[1], "reviewer": "ann", "slot": "A"}]
    assert load_from_disk(str(root / "out" / "dpo"))["train"]["id"] == [ids[4]]
    assert load_forecast_dataset(root / "out" / "sft")["train"]["id"] == [ids[4]]
    run_export(db, root / "out2", "--include_hindsight_edits")
    assert load_from_disk(str(root / "out2" / "dpo"))["train"]["id"] == [ids[1], ids[4]]
    assert load_forecast_dataset(root / "out2" / "sft")["train"]["id"] == [ids[1], ids[4]]


def test_malformed_edits_are_left_out_of_both_exports(setup):
    client, ids, db, root = setup
    review(client, ids[0], edit_A="Prediction: up, trust me")
    report = run_export(db, root / "out")
    assert report["counts"]["edits dropped: not well-formed"] == 1 and report["sft_rows"] == report["dpo_pairs"] == 0


def test_export_reports_agreement_when_several_reviewers_judged_the_same_examples(setup, capsys):
    client, ids, db, root = setup
    for i, (ann, bob) in enumerate([("A", "A"), ("B", "B"), ("A", "B"), ("B", "B")]):
        review(client, ids[i], preference=ann)
        review(client, ids[i], "bob", preference=bob)
    agreement = run_export(db, root / "out")["agreement"]["preferences"]
    assert agreement["examples_with_several_reviewers"] == 4 and agreement["percent_agreement"] == 75.0
    assert agreement["pairs"] == [{"reviewers": ["ann", "bob"], "examples": 4, "cohen_kappa": 0.5,
                                   "percent_agreement": 75.0}]
    assert "agreement on preferences: 75.0% over 4 examples" in capsys.readouterr().out


def test_export_fails_early_on_a_missing_db_a_full_out_dir_or_no_reviews(setup, capsys):
    client, ids, db, root = setup
    assert hitl.main(["export", "--db", str(root / "nope.sqlite"), "--out", str(root / "o")]) == 1
    assert hitl.main(["export", "--db", str(db), "--out", str(root / "o")]) == 1
    assert "holds no reviews yet" in capsys.readouterr().err
    review(client, ids[0], rating_A=5)
    (root / "full").mkdir()
    (root / "full" / "x").write_text("x")
    assert hitl.main(["export", "--db", str(db), "--out", str(root / "full")]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_a_run_killed_mid_write_is_reviewable_without_its_torn_line(tmp_path, capsys):
    run_a, run_b, ids = make_two_runs(tmp_path)
    with open(run_a / "predictions.jsonl", "a") as fh:
        fh.write('{"id": "AAA|torn')
    client = TestClient(hitl.create_app(tmp_path / "r.sqlite", [run_a, run_b]))
    assert client.get("/api/meta").json()["total"] == len(ids)
    assert "skipped 1 unreadable line" in capsys.readouterr().out
