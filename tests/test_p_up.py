"""Direction probabilities of the hf backend (embedded model, fp32): p_up from the LogitsProcessor equals a
separate forward pass, p_bins from the KV cache equals 12 separate passes, self-consistency samples are
reproducible across runs and batch sizes, and --weeks keeps whole weeks."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import direction_probs  # noqa: E402
import generation  # noqa: E402
import dataset_io  # noqa: E402
import inference  # noqa: E402
from prompt import BIN_CODES, get_style, wrap_public_prompt  # noqa: E402

# the embedded model copies these with a 'Prediction: Up/Down by ...' line first (greedy, fp32)
ECHO = ("Copy these lines exactly:\nPrediction: Up by 1-2%\nPrediction: Down by 2-3%",
        "Copy this line exactly:\nPrediction: Down by 2-3%")


@pytest.fixture(scope="module")
def fp32_model(embedded_model_dir):
    import torch

    import models
    threads = torch.get_num_threads()
    torch.set_num_threads(1)         # tiny prompts: one thread, no stalls when the cores are shared
    model, tokenizer, spec = models.load_model("smollm2-135m", dtype="fp32")
    yield model, tokenizer, get_style(spec.prompt_style)
    torch.set_num_threads(threads)


def echo_rows():
    return [{"id": f"echo{k}", "prompt": wrap_public_prompt("You are a stock analyst.", user)}
            for k, user in enumerate(ECHO)]


def forward_logprobs(model, tokenizer, text_ids):
    import torch
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([text_ids])).logits[0].float(), dim=-1)


def test_p_up_from_the_processor_equals_a_separate_forward_pass(fp32_model):
    import torch
    model, tokenizer, style = fp32_model
    gen = generation.HFGenerator(model, tokenizer, style, max_new_tokens=6, bin_probs=True)
    rows = echo_rows()
    results = gen.generate(rows)                      # a batch of 2 prompts of different lengths: left padding
    probe = direction_probs.DirectionProbe(tokenizer)
    checked = 0
    for row, res in zip(rows, results):
        assert "Prediction: Up" in res[0] or "Prediction: Down" in res[0], res[0]
        prompt_ids = gen.prompt_ids(row)
        new_ids = tokenizer(res[0], add_special_tokens=False)["input_ids"]
        step = direction_probs.direction_step(tokenizer, new_ids, res[0])
        assert probe.is_direction_token(new_ids[step])
        logp = forward_logprobs(model, tokenizer, prompt_ids + new_ids[:step])[-1]
        up = torch.logsumexp(logp[probe.up_ids], 0)
        down = torch.logsumexp(logp[probe.down_ids], 0)
        expected = float(torch.sigmoid(up - down))
        assert res.extra["p_up"] == pytest.approx(expected, abs=1e-4)
        # p_bins from the cut KV cache = the 12 label continuations scored by full separate passes
        word = tokenizer.decode([new_ids[step]])
        texts = direction_probs.label_texts(word.startswith(" "), word.strip()[:1].isupper())
        scores = []
        for text in texts:
            cont = tokenizer(text, add_special_tokens=False)["input_ids"]
            full = prompt_ids + new_ids[:step] + cont
            lp = forward_logprobs(model, tokenizer, full)
            start = len(full) - len(cont)
            scores.append(sum(float(lp[start + t - 1, cont[t]]) for t in range(len(cont))))
        total = float(torch.logsumexp(torch.tensor(scores), 0))
        p_bins = res.extra["p_bins"]
        assert list(p_bins) == BIN_CODES and sum(p_bins.values()) == pytest.approx(1.0)
        for code, s in zip(BIN_CODES, scores):
            assert p_bins[code] == pytest.approx(float(torch.exp(torch.tensor(s - total))), abs=1e-4), code
        checked += 1
    assert checked == 2


def test_a_run_without_a_prediction_line_has_no_p_up(fp32_model):
    model, tokenizer, style = fp32_model
    gen = generation.HFGenerator(model, tokenizer, style, max_new_tokens=2)
    res = gen.generate(echo_rows()[:1])[0]
    assert "p_up" in res.extra and res.extra["p_up"] is None        # 2 tokens: no direction word yet


def run_samples(dataset, out, batch_size):
    assert inference.main(["--dataset", str(dataset), "--out", str(out), "--max_new_tokens", "6", "--dtype", "fp32",
                           "--samples", "3", "--temperature", "1.0", "--seed", "0", "--batch_size", str(batch_size),
                           "--quiet"]) == 0
    return {p["id"]: p for p in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


def test_samples_with_a_seed_repeat_across_runs_and_batch_sizes(short_forecast_dataset, tmp_path, fp32_model,
                                                                monkeypatch):
    model, tokenizer, style = fp32_model          # the module's model: three runs, one load
    monkeypatch.setattr(inference, "load_hf", lambda args: (model, tokenizer, style, "fp32", "smollm2-135m"))
    first = run_samples(short_forecast_dataset, tmp_path / "a", 2)
    again = run_samples(short_forecast_dataset, tmp_path / "b", 2)
    single = run_samples(short_forecast_dataset, tmp_path / "c", 1)
    assert len(first) == 2
    for i, p in first.items():
        assert len(p["samples"]) == 3 and p["output"] in p["samples"]
        assert p["samples"] == again[i]["samples"] == single[i]["samples"]
        assert p["p_up"] is None or 0 <= p["p_up"] <= 1
    assert len({s for p in first.values() for s in p["samples"]}) > 1        # sampling, not greedy
    manifest = json.loads((tmp_path / "a" / "run.json").read_text())
    assert manifest["decoding"]["samples"] == 3 and manifest["decoding"]["seed"] == 0


def test_weeks_keeps_every_ticker_of_the_last_whole_weeks(tiny_forecast_dataset):
    rows, _, _, _ = dataset_io.read_split(str(tiny_forecast_dataset), "train", weeks=2)
    periods = sorted({r["period"] for r in rows})
    assert len(rows) == 4 and len(periods) == 2 and {r["symbol"] for r in rows} == {"AAPL", "MSFT"}
    all_rows, _, _, _ = dataset_io.read_split(str(tiny_forecast_dataset), "train")
    assert periods == sorted({r["period"] for r in all_rows})[-2:]


def test_sampling_flags_are_checked(tiny_forecast_dataset, tmp_path, capsys):
    base = ["--dataset", str(tiny_forecast_dataset), "--out", str(tmp_path / "x")]
    assert inference.main(base + ["--samples", "3"]) == 1
    assert "needs --temperature > 0" in capsys.readouterr().err
    assert inference.main(base + ["--weeks", "2", "--limit", "4"]) == 1
    assert "not combined with --limit" in capsys.readouterr().err


def test_votes_score_the_first_majority_sample():
    assert direction_probs.vote(["up", "down", "down"]) == (1, 1 / 3)
    assert direction_probs.vote(["down", "up"]) == (0, 0.5)                 # tie: the first sample's direction
    assert direction_probs.seed_for(0, "A|w", 1) == direction_probs.seed_for(0, "A|w", 1) != \
        direction_probs.seed_for(0, "A|w", 2)
