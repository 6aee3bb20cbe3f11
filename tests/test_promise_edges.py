"""Edges of the promise-carrying functions that mutation testing (`make mutate`, TESTING.md) showed no
test guarded: each test here kills mutants that survived the rest of the suite."""
import math

import pytest

import prompt as P
from utils import calc_metrics, score_pair

SECTIONS = "[Positive Developments]:\n1. Orders grew.\n\n[Potential Concerns]:\n1. Costs rose.\n\n"


# ---------------------------------------------------------------------------------------------
# prompt.py: returns, bins, labels
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("start, end", [(0.0, 101.0), (math.nan, 101.0), (100.0, math.nan), (100.0, math.inf),
                                        (math.inf, 101.0)])
def test_a_weekly_return_from_a_missing_or_broken_price_is_a_clear_error(start, end):
    with pytest.raises(ValueError, match=r"cannot compute a weekly return from prices"):
        P.weekly_return(start, end)


def test_float_noise_below_the_1e9_grid_never_moves_a_return_into_the_next_bin():
    assert P.bin_return(0.0100000000006) == "U1"       # 1.00000000006 %: noise
    assert P.bin_return(-0.0300000000006) == "D3"
    assert P.bin_return(0.010000001) == "U2"           # 1.0000001 %: a real move past 1 %


def test_unknown_bin_codes_and_unreadable_labels_are_errors_that_name_the_value():
    with pytest.raises(ValueError, match=r"unknown bin code 'U7'; expected one of U1, U2, U3, U4, U5, U5\+, D1"):
        P.bin_label("U7")
    with pytest.raises(ValueError, match=r"unknown bin code 'X1'"):
        P.bin_midpoint("X1")
    for label in ("up sharply", "by 2-3%", "flat"):      # a direction without a size, a size without one
        with pytest.raises(ValueError, match=rf"cannot read a bin from label '{label}'"):
            P.label_to_code(label)


# ---------------------------------------------------------------------------------------------
# prompt.py: the hindsight answer rewrite
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("guessed", ["prediction: down by 1-2%", "PREDICTION: Down by 1-2%", "Prediction: Down"])
def test_the_realised_label_replaces_a_guessed_prediction_line_in_any_case(guessed):
    answer = SECTIONS + f"[Prediction & Analysis]:\n{guessed}\nanalysis: Demand holds up."
    out = P.insert_prediction(answer, "up by 2-3%")
    assert out.endswith("[Prediction & Analysis]:\nPrediction: Up by 2-3%\nAnalysis: Demand holds up.")
    assert out.lower().count("prediction:") == 1 and out.lower().count("analysis:") == 1


def test_the_rewritten_analysis_starts_at_its_first_word_and_keeps_its_end():
    answer = SECTIONS + "[Prediction & Analysis]:\n\n   Demand holds up.\n"
    assert P.insert_prediction(answer, "down by 0-1%").endswith(
        "Prediction: Down by 0-1%\nAnalysis: Demand holds up.\n")


def test_an_answer_without_the_analysis_header_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^off-format answer: no \[Prediction & Analysis\] header$"):
        P.insert_prediction(SECTIONS + "Prediction: Up by 1-2%", "up by 1-2%")


# ---------------------------------------------------------------------------------------------
# prompt.py: section headers
# ---------------------------------------------------------------------------------------------
def test_a_bare_prediction_heading_opens_the_analysis_section():
    text = ("### Positive Developments\n1. Orders grew.\n\n### Potential Concerns\n1. Costs rose.\n\n"
            "### Prediction\nUp by 2-3%, on orders.")
    p = P.parse_answer(text)
    assert p.ok and p.analysis == "Up by 2-3%, on orders." and p.bin_code == "U3"
    assert p.concerns == "1. Costs rose."


def test_a_prediction_stated_before_the_sections_does_not_replace_the_analysis_section():
    text = ("### Prediction\nUp by 1-2%\n\n" + SECTIONS
            + "[Prediction & Analysis]:\nPrediction: Down by 2-3%\nAnalysis: Costs win.")
    p = P.parse_answer(text)
    assert p.analysis == "Prediction: Down by 2-3%\nAnalysis: Costs win."
    assert (p.direction, p.bin_code, p.positive) == ("down", "D3", "1. Orders grew.")


# ---------------------------------------------------------------------------------------------
# prompt.py: think blocks, the Prediction line, a lone analysis section, public prompts
# ---------------------------------------------------------------------------------------------
ANSWER = SECTIONS + "[Prediction & Analysis]:\nPrediction: Up by 1-2%\nAnalysis: Orders win."


@pytest.mark.parametrize("thinking", [
    "<think>Maybe [Prediction & Analysis]:\nPrediction: Down by 3-4%\nno.</think>",     # a whole block
    "Maybe [Prediction & Analysis]:\nPrediction: Down by 3-4%\nno.\n</THINK>",          # opened in the prefill
])
def test_reasoning_before_the_answer_is_never_read_as_the_answer(thinking):
    p = P.parse_answer(thinking + ANSWER)          # the answer starts right after the closing tag
    assert p.ok and (p.direction, p.bin_code) == ("up", "U2")
    assert p.positive == "1. Orders grew." and p.analysis == "Prediction: Up by 1-2%\nAnalysis: Orders win."


def test_an_answer_cut_off_while_thinking_again_keeps_only_what_came_before():
    p = P.parse_answer(ANSWER + "\n<think>Prediction: Down by 3-4%\n<think>more")
    assert p.analysis == "Prediction: Up by 1-2%\nAnalysis: Orders win." and p.direction == "up"


def test_a_verdict_on_the_line_after_prediction_is_read_and_an_empty_one_is_no_crash():
    p = P.parse_answer(SECTIONS + "[Prediction & Analysis]:\nPrediction:\nBullish, size unclear\nAnalysis: x")
    assert (p.prediction, p.direction, p.bin_code) == ("Bullish, size unclear", "up", None)
    empty = P.parse_answer(SECTIONS + "[Prediction & Analysis]:\nNo call this week.\nPrediction:")
    assert (empty.prediction, empty.direction) == ("", None) and "no predicted direction" in empty.problems


def test_an_answer_that_is_only_the_analysis_section_still_yields_that_section():
    p = P.parse_answer("[Prediction & Analysis]:\nUp by 2-3% on demand.")
    assert p.analysis == "Up by 2-3% on demand." and p.bin_code == "U3"
    assert p.problems == ["missing positive section", "missing concerns section"]


@pytest.mark.parametrize("system", ["Answer in format X", "Be brief. "])
def test_a_public_prompt_splits_back_into_its_exact_system_and_user_parts(system):
    user = "X marks the news."
    assert P.split_public_prompt(P.wrap_public_prompt(system, user)) == (system, user)


@pytest.mark.parametrize("written, code, midpoint", [
    ("+2-3%", "U3", 2.5), ("-3% to -4%", "D4", -3.5),                 # a sign and no direction word
    ("Up by 5-10%", "U5+", 5.5), ("Down by 4-9%", "D5+", -5.5),        # ranges reaching past 5 %
    ("Up by 5-6%", "U5+", 5.5), ("Up by 2.00000000004%", "U2", 1.5),   # float noise on the 1e-9 grid
    ("Up by 1.5-2.50000000012%", "U2", 1.5),
])
def test_signs_wide_ranges_and_float_noise_give_the_right_bin(written, code, midpoint):
    p = P.parse_answer(SECTIONS + f"[Prediction & Analysis]:\nPrediction: {written}\nAnalysis: x")
    assert (p.bin_code, p.magnitude) == (code, midpoint)


def test_without_an_analysis_header_the_prediction_line_after_the_concerns_opens_the_analysis():
    text = ("[Positive Developments]:\n1. Orders grew.\nPrediction: consensus says down by 4-5%\n\n"
            "[Potential Concerns]:\n1. Costs rose.\n\nPrediction: Up by 1-2%\nAnalysis: Orders win.")
    p = P.parse_answer(text)
    assert p.analysis == "Prediction: Up by 1-2%\nAnalysis: Orders win." and p.concerns == "1. Costs rose."
    assert (p.direction, p.bin_code, p.ok) == ("up", "U2", True)
    alone = P.parse_answer("Prediction: Down by 0-1%\nAnalysis: short.")
    assert alone.analysis == "Prediction: Down by 0-1%\nAnalysis: short." and alone.bin_code == "D1"
    assert alone.problems == ["missing positive section", "missing concerns section"]


def test_the_analysis_sections_prediction_wins_over_one_stated_before_the_sections():
    p = P.parse_answer("Prediction: Up by 1-2%\n\n" + SECTIONS
                       + "[Prediction & Analysis]:\nPrediction: Down by 2-3%\nAnalysis: Costs win.")
    assert (p.prediction, p.direction, p.bin_code) == ("Down by 2-3%", "down", "D3")


@pytest.mark.parametrize("line, prediction", [
    ("Prediction: **Up by 1-2%**", "Up by 1-2%"), ("**Prediction:** _Down by 2-3%_", "Down by 2-3%"),
    ("Prediction: Up by 2-3% on demand for the iPhone X", "Up by 2-3% on demand for the iPhone X"),
])
def test_the_prediction_phrase_loses_its_markdown_and_nothing_else(line, prediction):
    p = P.parse_answer(SECTIONS + f"[Prediction & Analysis]:\n{line}\nAnalysis: x")
    assert p.prediction == prediction


# ---------------------------------------------------------------------------------------------
# utils.py: the per-pair record and calc_metrics' edges
# ---------------------------------------------------------------------------------------------
REFERENCE = SECTIONS + "[Prediction & Analysis]:\nPrediction: Down by 2-3%\nAnalysis: Costs win."


def test_a_scored_pair_is_a_record_with_every_field_comparison_reads():
    pair = score_pair(ANSWER, REFERENCE, label="up by 0-1%")
    rouge = pair.pop("rouge")                      # on by default, one entry per reference section
    assert pair == {"direction": "up", "bin_code": "U2", "magnitude": 1.5, "truth_direction": "up",
                    "truth_magnitude": 0.5, "reference_direction": "down", "correct": True,
                    "agrees_with_reference": False, "format_ok": True, "problems": []}
    assert set(rouge) == {"positive", "concerns", "analysis"} and rouge["positive"]["rouge1"] == 1.0
    assert score_pair("no sections", REFERENCE)["problems"] == [
        "missing positive section", "missing concerns section", "missing analysis section", "no predicted direction"]


def test_truth_unknown_counts_exactly_the_pairs_without_a_truth():
    no_prediction = "[Positive Developments]:\n1. A"
    m = calc_metrics([ANSWER, ANSWER], [REFERENCE, no_prediction], rouge=False)
    assert m["truth_unknown"] == 1 and m["binary_accuracy"] == 0.0
    assert "truth_unknown" not in calc_metrics([ANSWER], [REFERENCE], rouge=False)


def test_no_pairs_give_empty_metrics_not_a_crash():
    m = calc_metrics([], [], latencies=[], labels=[])
    assert m["n"] == 0 and m["mse"] is None and m["mse_coverage"] is None and m["binary_accuracy"] is None
    assert m["latency_s"] == {"mean": None, "median": None}


def test_labels_or_latencies_of_the_wrong_length_are_errors_that_say_so():
    with pytest.raises(ValueError, match=r"^calc_metrics: 2 answers but 1 labels$"):
        calc_metrics([ANSWER, ANSWER], [REFERENCE, REFERENCE], labels=["up by 0-1%"])
    with pytest.raises(ValueError, match=r"^calc_metrics: 2 answers but 3 latencies$"):
        calc_metrics([ANSWER, ANSWER], [REFERENCE, REFERENCE], latencies=[1, 2, 3])


# ---------------------------------------------------------------------------------------------
# supervision.py: padding and the audit's counts
# ---------------------------------------------------------------------------------------------
def test_the_collator_pads_right_to_a_multiple_with_a_zero_mask_and_masked_labels():
    import supervision
    features = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
                {"input_ids": [5] * 10, "attention_mask": [1] * 10, "labels": [-100] * 9 + [5]}]
    batch = supervision.PaddingCollator(pad_token_id=2, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape == (2, 16) and batch["input_ids"].dtype.is_floating_point is False
    assert batch["input_ids"][0].tolist() == [5, 6, 7] + [2] * 13
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 13
    assert batch["labels"][0].tolist() == [-100, 6, 7] + [-100] * 13
    assert batch["attention_mask"][1].tolist() == [1] * 10 + [0] * 6
    assert supervision.PaddingCollator(2)(features)["input_ids"].shape == (2, 10)   # no multiple: longest


def test_the_audit_counts_every_news_week_removed(embedded_tokenizer):
    import supervision
    from conftest import make_answer, make_user_prompt
    from prompt import get_style, wrap_public_prompt
    tok, style, answer = embedded_tokenizer, get_style("chatml"), make_answer("X", "up by 0-1%")
    users = [make_user_prompt("X", 2, n_weeks=4, filler_words=40), make_user_prompt("X", 3, n_weeks=5, filler_words=40)]
    max_length = len(supervision.tokenize_example(tok, style, "S", users[0], answer, 8192)["input_ids"]) - 60
    removed = [supervision.tokenize_example(tok, style, "S", u, answer, max_length)["weeks_removed"] for u in users]
    rows = [{"id": f"X|{i}", "prompt": wrap_public_prompt("S", u), "answer": answer} for i, u in enumerate(users)]
    _, audit = supervision.tokenize_split(tok, style, rows, max_length)
    assert min(removed) >= 1 and audit["news_weeks_removed"] == sum(removed)
    assert audit["trimmed_news"] == 2 and audit["examples"]["trimmed_news"] == ["X|0", "X|1"]


def test_fit_prompt_removes_exactly_the_oldest_weeks_needed_and_keeps_the_newest(embedded_tokenizer):
    import supervision
    from conftest import make_user_prompt
    from prompt import get_style
    tok, style = embedded_tokenizer, get_style("chatml")
    user = make_user_prompt("X", 5, n_weeks=4, filler_words=20)
    head, weeks, tail = supervision.split_news_weeks(user)
    lengths = [len(supervision.prompt_token_ids(tok, style, "S", head + "".join(weeks[k:]) + tail)) for k in range(4)]
    assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) == 4
    for removed in range(4):                   # a budget that fits exactly after removing `removed` weeks
        ids, n = supervision.fit_prompt(tok, style, "S", user, lengths[removed])
        assert n == removed
        assert ids == supervision.prompt_token_ids(tok, style, "S", head + "".join(weeks[removed:]) + tail)
    assert supervision.fit_prompt(tok, style, "S", user, 10) == (                # never below one week
        supervision.prompt_token_ids(tok, style, "S", head + weeks[-1] + tail), 3)


def test_the_audit_and_features_record_every_example_by_id_with_its_reason(embedded_tokenizer):
    """tokenize_split's record (train_lora writes it to supervision_audit.json) on a known mix of rows."""
    import supervision
    from conftest import make_answer, make_user_prompt
    from prompt import get_style, wrap_public_prompt
    tok = embedded_tokenizer
    style, answer = get_style("chatml"), make_answer("X", "up by 0-1%")
    users = {"fits": make_user_prompt("X", 1, n_weeks=1), "trim": make_user_prompt("X", 2, n_weeks=4, filler_words=40),
             "cut": make_user_prompt("X", 4, n_weeks=1), "drop": make_user_prompt("X", 3, n_weeks=1, filler_words=400)}
    answers = dict.fromkeys(users, answer) | {"cut": answer + " More analysis." * 80}
    max_length = len(supervision.tokenize_example(tok, style, "Sys", users["fits"], answer, 8192)["input_ids"]) + 120
    rows = [{"symbol": "X", "period": f"week {k}", "prompt": wrap_public_prompt("Sys", u), "answer": answers[k]}
            | ({} if k == "fits" else {"id": f"id-{k}"}) for k, u in users.items()]
    ids = ["X|week fits", "id-trim", "id-cut", "id-drop"]
    each = {i: supervision.tokenize_example(tok, style, "Sys", users[k], answers[k], max_length)
            for i, k in zip(ids, users)}
    features, audit = supervision.tokenize_split(tok, style, rows, max_length)
    kept = [i for i in ids if not each[i]["dropped"]]
    assert kept == ids[:3] and each["id-cut"]["answer_cut"] and each["id-trim"]["weeks_removed"] >= 1
    assert features == [{"id": i, "input_ids": each[i]["input_ids"], "attention_mask": each[i]["attention_mask"],
                         "labels": each[i]["labels"], "length": len(each[i]["input_ids"]),
                         "supervised_tokens": each[i]["supervised_tokens"]} for i in kept]
    assert audit == {
        "examples_in": 4, "examples_out": 3, "over_max_length": 3, "trimmed_news": 1,
        "news_weeks_removed": each["id-trim"]["weeks_removed"], "answers_cut": 1, "dropped": 1,
        "supervised_tokens_per_example": supervision.length_stats([each[i]["supervised_tokens"] for i in kept]),
        "tokens_per_example": supervision.length_stats([len(each[i]["input_ids"]) for i in kept]),
        "examples": {"over_max_length": ids[1:], "trimmed_news": ["id-trim"], "answers_cut": ["id-cut"],
                     "dropped": [{"id": "id-drop", "reason": each["id-drop"]["reason"]}]}}


def test_the_audit_lists_at_most_twenty_example_ids_per_kind(embedded_tokenizer):
    import supervision
    from prompt import get_style
    rows = [{"id": f"r{i}", "prompt": "Hi " * 40, "answer": "Fine."} for i in range(25)]
    _, audit = supervision.tokenize_split(embedded_tokenizer, get_style("chatml"), rows, 20, overlong="drop")
    assert audit["over_max_length"] == audit["dropped"] == 25
    assert audit["examples"]["over_max_length"] == [f"r{i}" for i in range(20)]
    assert [d["id"] for d in audit["examples"]["dropped"]] == [f"r{i}" for i in range(20)]
    from conftest import make_user_prompt
    from prompt import wrap_public_prompt
    user = make_user_prompt("X", 2, n_weeks=3, filler_words=40)
    full = len(supervision.tokenize_example(embedded_tokenizer, "chatml", "S", user, "Fine.", 8192)["input_ids"])
    trimmed_rows = [{"id": f"t{i}", "prompt": wrap_public_prompt("S", user), "answer": "Fine."} for i in range(25)]
    _, audit = supervision.tokenize_split(embedded_tokenizer, get_style("chatml"), trimmed_rows, full - 30)
    assert audit["trimmed_news"] == 25 and audit["examples"]["trimmed_news"] == [f"t{i}" for i in range(20)]
    cut_rows = [{"id": f"c{i}", "prompt": wrap_public_prompt("S", "Hi"), "answer": "Fine. " * 80} for i in range(25)]
    _, audit = supervision.tokenize_split(embedded_tokenizer, get_style("chatml"), cut_rows, 60)
    assert audit["answers_cut"] == 25 and audit["examples"]["answers_cut"] == [f"c{i}" for i in range(20)]


def _tokenizer_variant(tokenizer, adds_bos_and_eos=False, splits_special_text=False):
    """The embedded tokenizer made to behave like other real ones: adding BOS and EOS to every text
    (as Llama-2's may), or reading special-token text as plain text (split_special_tokens)."""
    import copy
    from tokenizers import processors
    variant = copy.deepcopy(tokenizer)
    if adds_bos_and_eos:
        bos, eos = tokenizer.bos_token, tokenizer.eos_token
        variant.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)])
    variant.split_special_tokens = splits_special_text
    return variant


@pytest.mark.parametrize("style_name", ["llama2", "chatml"])
def test_a_tokenizer_adding_bos_and_eos_gives_the_prompt_its_bos_only_and_the_answer_neither(
        embedded_tokenizer, style_name):
    import supervision
    from prompt import get_style
    tok = _tokenizer_variant(embedded_tokenizer, adds_bos_and_eos=True)
    style, bos, eos = get_style(style_name), tok.bos_token_id, tok.eos_token_id
    text_ids = embedded_tokenizer(style.format_prompt("S", "U"), add_special_tokens=False)["input_ids"]
    assert supervision.prompt_token_ids(tok, style, "S", "U") == [bos] + text_ids       # as inference feeds it
    answer = supervision.answer_token_ids(tok, style, "Up by 1-2%.")
    assert answer[0] != bos and answer[-1] == eos and answer.count(eos) == 1


def test_the_end_of_answer_is_one_eos_token_even_when_special_text_would_be_split(embedded_tokenizer):
    import supervision
    from prompt import PromptStyle, get_style
    tok = _tokenizer_variant(embedded_tokenizer, splits_special_text=True)
    answer = supervision.answer_token_ids(tok, get_style("llama2"), "Up by 1-2%.")       # end marker "{eos}"
    assert answer[-1] == tok.eos_token_id and answer[:-1] == tok("Up by 1-2%.", add_special_tokens=False)["input_ids"]
    custom = PromptStyle("custom", "an end marker around the EOS", "{system}\n{user}\n", "</answer>{eos}")
    ids = supervision.answer_token_ids(embedded_tokenizer, custom, "Up.")
    assert ids[-1] == embedded_tokenizer.eos_token_id and embedded_tokenizer.decode(ids).endswith("</answer>" + embedded_tokenizer.eos_token)


def test_news_weeks_split_without_financials_or_instruction_and_without_any_week():
    import supervision
    user = "[Company Introduction]:\n\nX\n\nFrom 2024-01-07 to 2024-01-14, a.\n\nFrom 2024-01-14 to 2024-01-21, b."
    head, weeks, tail = supervision.split_news_weeks(user)
    assert (head, tail, len(weeks)) == ("[Company Introduction]:\n\nX\n\n", "", 2) and weeks[-1].endswith("b.")
    assert supervision.split_news_weeks("No weeks here.") == ("No weeks here.", [], "")


def test_max_length_edges_keep_drop_and_cut_exactly_where_promised(embedded_tokenizer):
    import supervision
    from conftest import make_user_prompt
    from prompt import get_style
    tok, style = embedded_tokenizer, get_style("chatml")
    answer = "Prediction: Up by 1-2%. " + "Demand holds. " * 20
    prompt = supervision.prompt_token_ids(tok, style, "S", "No news.")
    answer_ids = supervision.answer_token_ids(tok, style, answer)
    exact = supervision.tokenize_example(tok, style, "S", "No news.", answer, len(prompt) + len(answer_ids))
    assert exact["overlong"] is False and exact["reason"] is None and exact["attention_mask"] == [1] * len(exact["input_ids"])
    dropped = supervision.tokenize_example(tok, style, "S", "No news.", answer, len(prompt) + len(answer_ids) - 1,
                                           overlong="drop")
    assert dropped["reason"] == f"over --max_length ({len(prompt) + len(answer_ids)} tokens)"
    room32 = supervision.tokenize_example(tok, style, "S", "No news.", answer, len(prompt) + 32)
    assert room32["answer_cut"] and room32["supervised_tokens"] == 32 and not room32["dropped"]
    room31 = supervision.tokenize_example(tok, style, "S", "No news.", answer, len(prompt) + 31)
    assert room31["dropped"] and room31["reason"] == (f"prompt of {len(prompt)} tokens after trimming news "
                                                      "leaves 31 answer tokens")
    # trimming one week makes exactly enough room: the answer is whole, the prompt is the trimmed one
    user = make_user_prompt("X", 5, n_weeks=3, filler_words=20)
    head, weeks, tail = supervision.split_news_weeks(user)
    trimmed = supervision.prompt_token_ids(tok, style, "S", head + "".join(weeks[1:]) + tail)
    ex = supervision.tokenize_example(tok, style, "S", user, answer, len(trimmed) + len(answer_ids))
    assert (ex["weeks_removed"], ex["answer_cut"]) == (1, False)
    assert ex["input_ids"] == trimmed + answer_ids


# ---------------------------------------------------------------------------------------------
# hitl.py: what the page is told about an answer, and an empty store
# ---------------------------------------------------------------------------------------------
def test_the_page_gets_the_shared_parsers_whole_verdict():
    import hitl
    assert hitl.parsed_summary(ANSWER) == {"ok": True, "problems": [], "prediction": "Up by 1-2%",
                                           "direction": "up", "magnitude": 1.5, "bin_code": "U2"}
    assert hitl.parsed_summary(None)["problems"][-1] == "no predicted direction"


def test_serving_a_store_without_runs_says_how_to_start(tmp_path):
    import hitl
    with pytest.raises(hitl.HitlError, match=r"reviews.sqlite holds no runs yet; start once with --runs RUN_DIR"):
        hitl.create_app(tmp_path / "reviews.sqlite")


@pytest.fixture
def review_client(tmp_path):
    import hitl
    from fastapi.testclient import TestClient
    from test_hitl import make_two_runs
    run_a, run_b, ids = make_two_runs(tmp_path)
    return TestClient(hitl.create_app(tmp_path / "reviews.sqlite", [run_a, run_b])), ids


def test_the_page_is_served_whole_and_no_api_docs_page_pulls_assets_from_a_cdn(review_client):
    import hitl
    client = review_client[0]
    assert client.get("/").text == hitl.PAGE_FILE.read_text()
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404, path


def test_a_refused_request_says_why_in_error_and_detail(review_client):
    client, ids = review_client
    refused = client.post("/api/review", json={"example_id": ids[0], "reviewer": "ann", "direction_A": "right"})
    assert refused.status_code == 422
    assert refused.json() == {"error": "reveal the outcome before marking a direction right or wrong",
                              "detail": "reveal the outcome before marking a direction right or wrong"}
    invalid = client.post("/api/review", json={"example_id": ids[0], "reviewer": "ann", "rating_A": 9})
    body = invalid.json()
    assert invalid.status_code == 422 and body["error"].startswith("rating_A: ")
    assert [d["loc"] for d in body["detail"]] == [["body", "rating_A"]]


# ---------------------------------------------------------------------------------------------
# review_store.py: the reveal is logged like every other change
# ---------------------------------------------------------------------------------------------
def test_the_reveal_is_logged_once_in_the_history_as_revealed_true(review_client):
    client, ids = review_client
    for _ in range(2):                                              # a second reveal changes nothing
        assert client.post("/api/reveal", json={"example_id": ids[0], "reviewer": "ann"}).status_code == 200
    history = client.get("/api/history", params={"id": ids[0], "reviewer": "ann"}).json()["history"]
    assert [(h["field"], h["value"], h["after_reveal"]) for h in history] == [("revealed", "true", 1)]


def test_either_direction_mark_needs_the_reveal_first(review_client):
    client, ids = review_client
    for field in ("direction_A", "direction_B"):
        refused = client.post("/api/review", json={"example_id": ids[0], "reviewer": "ann", field: "wrong"})
        assert refused.status_code == 422 and refused.json()["error"].startswith("reveal the outcome"), field


def test_a_change_saved_with_the_reveal_counts_as_after_it_and_each_save_returns_its_own_review(tmp_path):
    from review_store import ReviewStore
    from test_hitl import make_two_runs
    import hitl
    run_a, run_b, ids = make_two_runs(tmp_path)
    store = ReviewStore(tmp_path / "reviews.sqlite")
    store.register(*hitl.load_review_set([run_a, run_b]))
    first, second = sorted(ids[:2])
    store.apply(second, "bob", {"rating_A": 2})          # another reviewer of the same example, sorting first
    store.apply(first, "zoe", {"rating_A": 3})           # this reviewer's review of an example sorting first
    review = store.apply(second, "zoe", {"direction_A": "right", "edit_A": "Prediction: Up"}, reveal=True)
    assert (review["example_id"], review["reviewer"], review["direction_A"]) == (second, "zoe", "right")
    assert review["revealed_at"] and review["edit_A_after_reveal"] == 1
    assert [(h["field"], h["after_reveal"]) for h in store.history(second, "zoe")] == [
        ("revealed", 1), ("direction_A", 1), ("edit_A", 1)]


# ---------------------------------------------------------------------------------------------
# records.py: split cutoffs on Sundays, default cutoffs, reporting lags
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("start, end, split", [
    ("2024-02-25", "2024-03-03", "train"),          # ends on --val_start: its label uses no later price
    ("2024-03-03", "2024-03-10", "validation"),     # starts on --val_start
    ("2024-03-10", "2024-03-17", "validation"),     # ends on --test_start
    ("2024-03-17", "2024-03-24", "test"),           # starts on --test_start
])
def test_weeks_touching_a_sunday_cutoff_stay_in_their_split(start, end, split):
    import records
    assert records.assign_split(start, end, "2024-03-03", "2024-03-17") == split


def test_default_cutoffs_leave_15_percent_of_weeks_each_to_validation_and_test():
    import pandas as pd
    import records
    weeks = [d.strftime("%Y-%m-%d") for d in pd.date_range("2024-01-07", periods=20, freq="W-SUN")]
    assert records.default_cutoffs(weeks + weeks[:5]) == (weeks[14], weeks[17])     # duplicates count once
    assert records.default_cutoffs(weeks[:3]) == (weeks[1], weeks[2])               # the fewest: one week each
    with pytest.raises(records.RecordError, match=r"^only 2 prediction week\(s\): need at least 3 for "
                                                  r"train/validation/test; widen --start/--end$"):
        records.default_cutoffs(weeks[:2])


@pytest.mark.parametrize("quarter, available", [(1, "2023-05-15"), (2, "2023-05-15"), (3, "2023-05-15"),
                                                (4, "2023-06-29"), (None, "2023-06-29")])
def test_quarters_wait_45_days_and_fiscal_q4_or_unknown_quarters_90(quarter, available):
    import records
    assert records.financials_available({"period": "2023-03-31", "fiscal_quarter": quarter}) == available
    assert records.financials_available({"period": "2023-03-31", "fiscal_quarter": quarter,
                                         "filed": "2023-04-20"}) == "2023-04-20"
