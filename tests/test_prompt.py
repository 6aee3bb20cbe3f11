"""The prompt contract: bins, rendering, styles, parsing, public-prompt round trip."""
import math

import pytest

import prompt as P


@pytest.mark.parametrize("r, code", [
    (0.0, "U1"), (0.004, "U1"), (0.01, "U1"), (0.0100001, "U2"), (-0.01, "D1"), (-0.0100001, "D2"),
    (0.05, "U5"), (0.050001, "U5+"), (-0.05, "D5"), (-0.050001, "D5+"), (0.3, "U5+"), (-1e-12, "D1"),
])
def test_returns_fall_in_the_right_bin_at_every_edge(r, code):
    assert P.bin_return(r) == code


def test_zero_return_gets_the_up_0_1_bin():
    assert P.label_from_return(0.0) == "up by 0-1%"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None, "0.1"])
def test_non_finite_returns_are_a_clear_error(bad):
    with pytest.raises(ValueError, match="finite"):
        P.bin_return(bad)


def test_float_noise_at_one_percent_stays_in_the_lower_bin():
    assert P.bin_return(P.weekly_return(100.0, 101.0)) == "U1"
    assert P.bin_return(P.weekly_return(100.0, 99.0)) == "D1"


def test_all_twelve_labels_round_trip_through_codes_and_midpoints():
    assert len(P.BIN_LABELS) == 12
    for code in P.BIN_CODES:
        assert P.label_to_code(P.bin_label(code)) == code
    assert [P.bin_midpoint(c) for c in P.BIN_CODES[:6]] == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    assert P.bin_midpoint("D5+") == -5.5


RECORD = {
    "symbol": "ACME", "curday": "2024-01-14", "period": "2024-01-14 to 2024-01-21", "as_of": None,
    "profile": {"name": "Acme Corp", "industry": "Tools", "ipo": "1999-01-04", "country": "US",
                "ticker": "ACME", "exchange": "NYSE"},
    "weeks": [
        {"start": "2024-01-07", "end": "2024-01-14", "start_price": 10.0, "end_price": 10.5,
         "news": [{"date": "2024-01-09", "headline": "Acme wins order", "summary": "A big order."},
                  {"date": "2024-01-11", "headline": "Acme hires CFO", "summary": "New CFO named."}]},
    ],
    "financials": {"period": "2023-09-30", "available": "2023-11-14", "metrics": {"eps": 1.2, "roe": "9%"}},
}

GOLDEN = """[Company Introduction]:

Acme Corp is a leading entity in the Tools sector. Incorporated and publicly traded since 1999-01-04, the company has established its reputation as one of the key players in the market.

Acme Corp operates primarily in the US, trading under the ticker ACME on the NYSE. As a dominant force in the Tools space, the company continues to innovate and drive progress within the industry.

From 2024-01-07 to 2024-01-14, Acme Corp's stock price increased from 10.00 to 10.50. Company news during this period are listed below:

[Headline]: Acme wins order
[Summary]: A big order.

[Headline]: Acme hires CFO
[Summary]: New CFO named.

Some recent basic financials of Acme Corp, for the fiscal quarter ended 2023-09-30, are presented below:

[Basic Financials]:

eps: 1.2
roe: 9%

Based on all the information before 2024-01-14, let's first analyze the positive developments and potential concerns for ACME. Come up with 2-4 most important factors respectively and keep them concise. Most factors should be inferred from company related news. Then make your prediction of the ACME stock price movement for next week (2024-01-14 to 2024-01-21). Provide a summary analysis to support your prediction."""


def test_rendered_prompt_matches_the_hand_written_golden_prompt():
    text = P.render_prompt(RECORD, P.neutral_instruction("ACME", "2024-01-14", "2024-01-14 to 2024-01-21"))
    assert text == GOLDEN


def test_prompt_says_stock_never_cryptocurrency_and_handles_missing_financials_and_news():
    record = dict(RECORD, financials=None, weeks=[dict(RECORD["weeks"][0], news=[], end_price=9.0)])
    text = P.render_prompt(record, P.neutral_instruction("ACME", "2024-01-14", "p"))
    assert "No basic financial reported." in text and "No relative news reported." in text
    assert "decreased from 10.00 to 9.00" in text
    assert "cryptocurrency" not in text.lower() and "stock price movement" in text


def test_market_cap_sentence_appears_only_with_point_in_time_values():
    profile = dict(RECORD["profile"], market_cap=1234.5, shares_outstanding=100.0)
    text = P.render_company_intro(profile, as_of="2024-01-12")
    assert "As of 2024-01-12, Acme Corp has a market capitalization of 1234.50 in USD" in text
    assert "market capitalization" not in P.render_company_intro(RECORD["profile"])


def test_more_than_five_news_items_in_a_week_is_refused():
    week = dict(RECORD["weeks"][0], news=RECORD["weeks"][0]["news"] * 3)
    with pytest.raises(ValueError, match="at most 5"):
        P.render_week(week, "Acme")


def test_hindsight_instruction_states_the_label_and_blind_does_not():
    hind = P.teacher_instruction("ACME", "d", "p", "hindsight", "up by 1-2%")
    blind = P.teacher_instruction("ACME", "d", "p", "blind")
    assert "is up by 1-2%" in hind
    assert "up by 1-2%" not in blind.lower().replace("'prediction: up by 1-2%'", "")
    with pytest.raises(ValueError):
        P.teacher_instruction("ACME", "d", "p", "hindsight")
    with pytest.raises(ValueError, match="unknown teacher mode"):
        P.teacher_instruction("ACME", "d", "p", "oracle")


ANSWER = ("[Positive Developments]:\n1. Orders.\n\n[Potential Concerns]:\n1. Costs.\n\n"
          "[Prediction & Analysis]:\nPrediction: Up by 2-3%\nAnalysis: Orders win.")


@pytest.mark.parametrize("style", list(P.PROMPT_STYLES))
def test_each_style_formats_and_parses_its_own_answers(style):
    s = P.get_style(style)
    full = s.format("SYS", "USER", ANSWER, eos_token="</s>")
    prefix = s.format_prompt("SYS", "USER")
    assert full.startswith(prefix) and "SYS" in prefix and "USER" in prefix
    completion = full[len(prefix):]
    parsed = s.parse(completion)
    assert parsed.ok and parsed.direction == "up" and parsed.magnitude == 2.5
    assert parsed.positive == "1. Orders." and parsed.concerns == "1. Costs."


def test_deepseek_style_prefills_an_empty_think_block():
    assert P.get_style("deepseek-r1").format_prompt("S", "U").endswith("<think>\n\n</think>\n\n")


def test_style_is_saved_and_loaded_unchanged(tmp_path):
    s = P.get_style("chatml")
    s.save(tmp_path)
    assert P.PromptStyle.load(tmp_path) == s


def test_unknown_style_lists_the_known_ones():
    with pytest.raises(ValueError, match="chatml"):
        P.get_style("alpaca")


def test_public_prompt_splits_and_retemplates_losslessly():
    user = P.render_prompt(RECORD, P.neutral_instruction("ACME", "2024-01-14", "p"))
    public = P.wrap_public_prompt(P.SYSTEM_PROMPT, user)
    assert public.startswith("[INST]<<SYS>>\n") and public.endswith("[/INST]")
    system, back = P.split_public_prompt(public)
    assert (system, back) == (P.SYSTEM_PROMPT.strip("\n"), user)
    assert P.wrap_public_prompt(system, back) == P.wrap_public_prompt(P.SYSTEM_PROMPT.strip("\n"), user)
    chatml = P.get_style("chatml").format_prompt(system, back)
    assert "[INST]" not in chatml and user in chatml


def test_a_prompt_without_markers_is_taken_as_the_user_part():
    assert P.split_public_prompt("  just a question ") == (P.SYSTEM_PROMPT, "just a question")


@pytest.mark.parametrize("text, direction, magnitude", [
    ("### Positive Developments\n- a\n### Potential Concerns\n- b\n### Prediction & Analysis\n"
     "Prediction: **Up by more than 5%**\nx", "up", 5.5),
    ("<think>\nhmm\n</think>\n\n**Positive Developments:**\n1. a\n\n**Potential Concerns:**\n1. b\n\n"
     "**Prediction and Analysis:**\nPrediction: down 10%\n", "down", -5.5),
    ("Sure.\nPositive Developments:\n1. a\nPotential Concerns:\n1. b\nPrediction: Up by 2.5%\nAnalysis: x",
     "up", 2.5),
    ("[Positive Developments]:\n1. a\n[Potential Concerns]:\n1. b\n[Prediction & Analysis]:\n"
     "The stock will likely go down by 0-1% because...", "down", -0.5),
])
def test_parser_reads_common_answer_shapes(text, direction, magnitude):
    parsed = P.parse_answer(text)
    assert parsed.ok, parsed.problems
    assert (parsed.direction, parsed.magnitude) == (direction, magnitude)


def test_parser_lists_what_is_missing_instead_of_raising():
    parsed = P.parse_answer("I cannot help with that.")
    assert not parsed.ok and parsed.direction is None
    assert "missing positive section" in parsed.problems and "no predicted direction" in parsed.problems


def test_insert_prediction_puts_the_label_at_the_top_of_the_analysis():
    text = P.insert_prediction("[Positive Developments]:\n1. a\n\n[Potential Concerns]:\n1. b\n\n"
                               "[Prediction & Analysis]:\nIt rallies.", "up by more than 5%")
    assert text.endswith("[Prediction & Analysis]:\nPrediction: Up by more than 5%\nAnalysis: It rallies.")
    assert P.parse_answer(text).bin_code == "U5+"


def test_docstring_examples_hold():
    import doctest

    import indices
    for module in (P, indices):
        assert doctest.testmod(module).failed == 0


def test_insert_prediction_replaces_a_guessed_prediction_and_refuses_a_missing_header():
    text = P.insert_prediction("[Positive Developments]:\n1. a\n\n[Potential Concerns]:\n1. b\n\n"
                               "**Prediction & Analysis:**\nPrediction: Down by 1-2%\nAnalysis: meh", "up by 0-1%")
    assert text.endswith("[Prediction & Analysis]:\nPrediction: Up by 0-1%\nAnalysis: meh")
    with pytest.raises(ValueError, match="no \\[Prediction & Analysis\\] header"):
        P.insert_prediction("[Positive Developments]:\n1. a\n\n[Potential Concerns]:\n1. b\nIt rises.", "up by 0-1%")
