"""Promises that single-line bugs slipped past (issue 14, found by planting them): each test is written
as the promise the README makes, so it fails on the planted bug and on its neighbours.

  * the parser reads every direction word it accepts, with every magnitude form, the right way round;
  * a build with mid-week cutoffs keeps no label that uses prices past the cutoff (the embargo);
  * the review page sends no outcome (label, return, teacher answer) before the reviewer reveals it.
"""
import json
import re

import pytest
from fastapi.testclient import TestClient

import data_pipeline as dp
import hitl
import prompt as P
from dataset_io import load_forecast_dataset
from test_hitl import answer, make_dataset, make_run, validation_ids

# ---------------------------------------------------------------------------------------------
# 1. Parser: the direction vocabulary x the magnitude forms
# ---------------------------------------------------------------------------------------------
UP_WORDS = ["up", "upward", "increase", "increases", "increased", "rise", "rising", "rises", "gain", "gains",
            "higher", "bullish", "positive", "grow", "climb"]
DOWN_WORDS = ["down", "downward", "decrease", "decreases", "decreased", "decline", "declines", "declined",
              "declining", "fall", "falls", "falling", "drop", "drops", "lower", "bearish", "negative"]
# (as written, bin number 1..5 or "5+")
MAGNITUDES = [("0-1%", "1"), ("1-2%", "2"), ("2-3%", "3"), ("3-4%", "4"), ("4-5%", "5"),
              ("more than 5%", "5+"), ("0.4%", "1"), ("2.5%", "3"), ("4.99%", "5"), ("7.5%", "5+"),
              ("12%", "5+"), ("1.0-2.0%", "2"), ("3-4 percent", "4"), ("2.5 percent", "3"),
              ("about 3%", "3")]


def _spelled_out(alternatives):
    """Every word an alternation like 'up|increase[sd]?|...' accepts ([sd]? expanded)."""
    words = []
    for alt in alternatives.split("|"):
        m = re.fullmatch(r"(\w+)\[(\w+)\]\?", alt)
        words += [m.group(1)] + [m.group(1) + c for c in m.group(2)] if m else [alt]
    return sorted(words)


def test_the_vocabulary_lists_here_are_every_word_the_parser_accepts():
    """Adding a word to the parser (or moving one to the other side) must show up here first."""
    assert _spelled_out(P._UP_WORDS) == sorted(UP_WORDS)
    assert _spelled_out(P._DOWN_WORDS) == sorted(DOWN_WORDS)
    assert not set(UP_WORDS) & set(DOWN_WORDS)


def full_answer(analysis):
    return ("[Positive Developments]:\n1. Orders grew.\n\n[Potential Concerns]:\n1. Costs.\n\n"
            f"[Prediction & Analysis]:\n{analysis}")


@pytest.mark.parametrize("direction, words", [("up", UP_WORDS), ("down", DOWN_WORDS)])
def test_every_direction_word_with_every_magnitude_form_gives_the_right_direction_and_bin(direction, words):
    sign = 1 if direction == "up" else -1
    wrong = []
    for word in words:
        for spelling in (word, word.capitalize(), word.upper()):
            for magnitude, k in MAGNITUDES:
                code = ("U" if direction == "up" else "D") + k
                midpoint = sign * (6 - 0.5 if k == "5+" else int(k) - 0.5)
                # the Prediction line form, and the same words inside the analysis without one
                for text in (full_answer(f"Prediction: {spelling} by {magnitude}\nAnalysis: Steady demand."),
                             full_answer(f"Analysis: We expect the shares to {spelling} by {magnitude} "
                                         "next week.")):
                    p = P.parse_answer(text)
                    if (p.direction, p.bin_code, p.magnitude, p.ok) != (direction, code, midpoint, True):
                        wrong.append((spelling, magnitude, p.direction, p.bin_code, p.magnitude, p.problems))
    assert not wrong, f"{len(wrong)} misread, e.g. {wrong[:5]}"


@pytest.mark.parametrize("word", UP_WORDS + DOWN_WORDS)
def test_a_direction_word_decides_the_label_code_too(word):
    """label_to_code reads labels with the same vocabulary ('Decrease by 2-3%' is D3, never U3)."""
    expected = ("U" if word in UP_WORDS else "D") + "3"
    assert P.label_to_code(f"{word.capitalize()} by 2-3%") == expected


# ---------------------------------------------------------------------------------------------
# 2. Embargo: no label uses prices from after the next split's cutoff
# ---------------------------------------------------------------------------------------------
VAL_START, TEST_START = "2012-08-15", "2012-09-12"      # Wednesdays: weeks straddle both cutoffs


@pytest.fixture(scope="module")
def midweek_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("embargo") / "ds"
    assert dp.main(["--source", "sample", "--teacher", "offline", "--out", str(out), "--start", "2012-06-03",
                    "--end", "2012-10-28", "--val_start", VAL_START, "--test_start", TEST_START]) == 0
    return out


def test_with_midweek_cutoffs_no_label_uses_prices_past_the_next_splits_start(midweek_build):
    dd = load_forecast_dataset(midweek_build)
    train, val, test = (dd[s] for s in ("train", "validation", "test"))
    late_train = [r["id"] for r in train if r["prediction_end"] > VAL_START]
    late_val = [r["id"] for r in val if r["prediction_end"] > TEST_START]
    assert not late_train, f"train rows labelled with prices after --val_start {VAL_START}: {late_train}"
    assert not late_val, f"validation rows labelled with prices after --test_start {TEST_START}: {late_val}"
    assert all(VAL_START <= s < TEST_START for s in val["prediction_start"])
    assert all(s >= TEST_START for s in test["prediction_start"])
    assert all(s < VAL_START for s in train["prediction_start"])


def test_the_weeks_straddling_each_cutoff_are_embargoed_and_counted(midweek_build):
    """The test above is not vacuous: a week starts before each cutoff and ends after it, and it went."""
    manifest = json.loads((midweek_build / "build.json").read_text())
    assert manifest["cutoffs"] == {"val_start": VAL_START, "test_start": TEST_START}
    dd = load_forecast_dataset(midweek_build)
    kept = {r["id"] for split in dd.values() for r in split}
    straddling = ["2012-08-12 to 2012-08-19", "2012-09-09 to 2012-09-16"]
    for period in straddling:
        assert not [i for i in kept if i.endswith("|" + period)], period
    n_symbols = len(manifest["tickers"])
    assert manifest["embargoed"] == len(straddling) * n_symbols
    # the weeks right before the straddling ones are kept in the earlier split (no over-embargo)
    assert "2012-08-12" in dd["train"]["prediction_end"] and "2012-09-09" in dd["validation"]["prediction_end"]


# ---------------------------------------------------------------------------------------------
# 3. Review page: the outcome stays hidden until the reviewer reveals it
# ---------------------------------------------------------------------------------------------
TEACHER_MARK = "teacher point for"               # in every reference answer (tests/test_hitl.py rows)
REALISED_RETURN = -0.0734                        # a weekly_return column the store must never serve


def all_keys(value):
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in all_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in all_keys(v)}
    return set()


@pytest.fixture
def review_app(tmp_path):
    """One run whose outputs always predict 'Up by 0-1%' over examples whose label never is that, and
    a dataset that also carries the realised weekly_return (as data_pipeline.py's datasets do)."""
    from datasets import load_from_disk
    data = make_dataset(tmp_path)
    dd = load_from_disk(str(data))
    dd = dd.map(lambda row: {"weekly_return": REALISED_RETURN})
    data = tmp_path / "dataset-with-returns"
    dd.save_to_disk(str(data))
    ids = validation_ids(data)
    labels = dict(zip(ids, load_forecast_dataset(data)["validation"]["label"]))
    outputs = {i: answer("Up by 0-1%", positive=f"model point on {i}") for i in ids}
    run = make_run(tmp_path, "run-a", data, outputs)
    client = TestClient(hitl.create_app(tmp_path / "reviews.sqlite", [run]))
    return client, ids, labels


def hidden_outcome_problems(payload, label):
    """What in a response would give the outcome away."""
    text = json.dumps(payload).lower()
    problems = [f"key {k!r}" for k in all_keys(payload) & {"label", "reference", "weekly_return"}]
    problems += [f"text {t!r}" for t in (label.lower(), TEACHER_MARK, str(REALISED_RETURN), "7.34")
                 if t in text]
    return problems


def test_rating_commenting_and_editing_never_reveal_the_outcome_only_the_reveal_does(review_app):
    client, ids, labels = review_app
    # labels no output, edit or prompt spells out (the outputs say 'Up by 0-1%', the edit 'Up by 1-2%')
    target = next(i for i in ids if labels[i] == "down by more than 5%")
    untouched = next(i for i in ids if labels[i] == "down by 2-3%")
    label = labels[target]
    seen = {}

    def call(method, path, **kwargs):
        response = client.request(method, path, **kwargs)
        assert response.status_code == 200, (path, response.text)
        seen[f"{method} {path} #{len(seen)}"] = response.json() if path.startswith("/api") else response.text
        return seen[f"{method} {path} #{len(seen) - 1}"] if path.startswith("/api") else response.text

    who = {"example_id": target, "reviewer": "ann"}
    # everything the page does before a reveal (hitl_page.html: meta, list, example, review, parse)
    call("GET", "/")
    call("GET", "/api/meta")
    call("GET", "/api/examples", params={"reviewer": "ann"})
    call("GET", "/api/example", params={"id": target, "reviewer": "ann"})
    call("POST", "/api/review", json={**who, "rating_A": 4})
    call("POST", "/api/review", json={**who, "comment": "Sound reasoning, thin evidence."})
    edited = answer("Up by 1-2%", positive="A better point.")
    call("POST", "/api/parse", json={"text": edited})
    call("POST", "/api/review", json={**who, "edit_A": edited})
    call("GET", "/api/examples", params={"reviewer": "ann", "unreviewed": "true"})
    call("GET", "/api/examples", params={"reviewer": "ann", "disagreement": "true", "format_failures": "true"})
    call("GET", "/api/history", params={"id": target, "reviewer": "ann"})
    before = call("GET", "/api/example", params={"id": target, "reviewer": "ann"})
    assert before["revealed"] is False and before["review"]["rating_A"] == 4
    assert before["review"]["edit_A"] == edited and before["review"]["comment"].startswith("Sound")
    leaks = {name: problems for name, payload in seen.items()
             if (problems := hidden_outcome_problems(payload, label))}
    assert not leaks, f"the outcome was sent before the reveal: {leaks}"
    # a direction mark needs the reveal first (the page disables it; the API refuses it)
    refused = client.post("/api/review", json={**who, "direction_A": "right"})
    assert refused.status_code == 422 and "reveal" in refused.json()["error"]

    shown = client.post("/api/reveal", json=who).json()
    assert shown["label"] == label and TEACHER_MARK in shown["reference"]
    after = client.get("/api/example", params={"id": target, "reviewer": "ann"}).json()
    assert after["revealed"] and after["label"] == label and TEACHER_MARK in after["reference"]
    # revealing is per reviewer and per example
    for example_id, reviewer in ((target, "bob"), (untouched, "ann")):
        other = client.get("/api/example", params={"id": example_id, "reviewer": reviewer}).json()
        assert other["revealed"] is False and not hidden_outcome_problems(other, labels[example_id])
