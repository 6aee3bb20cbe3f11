"""The one generation path (issue 15): inference.py and the training callback generate through
generation.HFGenerator, with one stop rule per style, one prompt-trimming rule and one meaning of greedy.
"""
import json

import pytest

import generation
import inference
import models
import train_lora
from conftest import make_user_prompt
from prompt import SYSTEM_PROMPT, get_style, wrap_public_prompt
from supervision import split_news_weeks


@pytest.fixture(scope="module")
def fp32_model(embedded_model_dir):          # conftest: the GGUF converted once per session
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # the CI box is 2 shared cores: one thread is faster under contention
    model, tokenizer, spec = models.load_model("smollm2-135m", dtype="fp32")
    yield model, tokenizer, get_style(spec.prompt_style)
    torch.set_num_threads(threads)


def rows_of(*weeks):
    return [{"id": f"AAPL|{n}", "prompt": wrap_public_prompt(SYSTEM_PROMPT, make_user_prompt("AAPL", 6, n_weeks=n))}
            for n in weeks]


def test_the_stop_rule_stops_on_eos_and_each_styles_end_marker(embedded_tokenizer):
    vocab = embedded_tokenizer.get_vocab()
    ids, text = generation.stop_rule(embedded_tokenizer, get_style("chatml"))
    assert ids == sorted({embedded_tokenizer.eos_token_id, vocab["<|im_end|>"]}) and text == []
    ids, text = generation.stop_rule(embedded_tokenizer, get_style("plain"))   # several tokens: matched as text
    assert ids == [embedded_tokenizer.eos_token_id] and text == ["\n### User:"]
    # a style saved with an end marker but no stop strings (an older prompt_style.json) still stops on it
    bare = get_style("chatml").__class__(**dict(get_style("chatml").to_dict(), stop_strings=()))
    assert generation.stop_rule(embedded_tokenizer, bare)[0] == ids_of(embedded_tokenizer, "<|im_end|>")


def ids_of(tokenizer, marker):
    return sorted({tokenizer.eos_token_id, tokenizer.get_vocab()[marker]})


def test_vllm_gets_the_same_greedy_and_stop_strings():
    kwargs = generation.vllm_sampling_kwargs(get_style("chatml"), 40)
    assert kwargs == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 40, "stop": ["<|im_end|>"],
                      "repetition_penalty": generation.GREEDY["repetition_penalty"]}
    assert generation.GREEDY["repetition_penalty"] == 1.0 and generation.GREEDY["do_sample"] is False


def test_a_prompt_is_trimmed_oldest_news_first_only_when_the_answer_would_not_fit(embedded_tokenizer):
    style = get_style("chatml")
    (row,) = rows_of(4)
    full = generation.HFGenerator(None, embedded_tokenizer, style, 16, context=100_000).prompt_ids(row)
    assert generation.HFGenerator(None, embedded_tokenizer, style, 16, context=len(full) + 16).prompt_ids(row) == full
    trimmed = generation.HFGenerator(None, embedded_tokenizer, style, 16, context=len(full) + 15).prompt_ids(row)
    assert len(trimmed) < len(full)
    text = embedded_tokenizer.decode(trimmed)
    _, weeks, _ = split_news_weeks(make_user_prompt("AAPL", 6, n_weeks=4))
    assert weeks[-1].strip()[:40] in text and weeks[0].strip()[:40] not in text    # the oldest week went first


def test_greedy_ignores_a_repetition_penalty_in_the_checkpoints_generation_config(fp32_model):
    import torch
    model, tokenizer, style = fp32_model
    rows = rows_of(1)
    gen = generation.HFGenerator(model, tokenizer, style, max_new_tokens=24, p_up=False)
    plain = gen.generate(rows)[0][0]
    saved = model.generation_config.repetition_penalty
    model.generation_config.repetition_penalty = 3.0           # what a checkpoint may ship (Qwen2.5: 1.05)
    try:
        assert gen.generate(rows)[0][0] == plain
        enc = gen._encode(rows)                                # the same penalty, applied: a different text
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=gen.pad_id,
                                 eos_token_id=gen.end_ids)
        penalised = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert penalised != plain
    finally:
        model.generation_config.repetition_penalty = saved


def test_generate_all_keeps_row_order_and_equals_one_batch(fp32_model):
    model, tokenizer, style = fp32_model
    rows = rows_of(1, 3, 2)
    gen = generation.HFGenerator(model, tokenizer, style, max_new_tokens=8, p_up=False)
    assert [g[0] for g in gen.generate_all(rows, batch_size=8)] == [g[0] for g in gen.generate(rows)]


def test_the_training_callback_and_inference_give_the_same_texts_for_the_same_checkpoint(
        short_forecast_dataset, tmp_path, capsys):
    out = tmp_path / "adapter"
    train_lora.run(["--dataset", str(short_forecast_dataset), "--output_dir", str(out), "--max_length", "512",
                    "--max_steps", "2", "--batch_size", "2", "--gradient_accumulation_steps", "1",
                    "--learning_rate", "1e-3", "--warmup_ratio", "0", "--eval_steps", "2", "--save_steps", "2",
                    "--dtype", "fp32", "--eval_generate", "2", "--eval_max_new_tokens", "16",
                    "--report_to", "none", "--seed", "7"])
    during = {r["id"]: r["output"] for r in map(json.loads, (out / "eval_generations" / "step-2.jsonl").open())}
    assert len(during) == 2
    run = tmp_path / "run"
    assert inference.main(["--adapter", str(out), "--dataset", str(short_forecast_dataset), "--split", "validation",
                           "--dtype", "fp32", "--max_new_tokens", "16", "--batch_size",
                           str(train_lora.eval_batch_size(train_lora.parse_args(["--batch_size", "2"]))),
                           "--out", str(run), "--quiet"]) == 0
    after = {r["id"]: r["output"] for r in map(json.loads, (run / "predictions.jsonl").open())}
    assert after == during
    assert all(after.values())
