"""train_lora.py: supervision by position, the audit, a real tiny LoRA run, resume, presets, DeepSpeed."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import models
import supervision
import train_lora
from prompt import PROMPT_STYLES, get_style

ROOT = Path(__file__).resolve().parents[1]
ANSWER = ("[Positive Developments]:\n1. Demand.\n\n[Potential Concerns]:\n1. Costs.\n\n"
          "[Prediction & Analysis]:\nPrediction: Up by 1-2%\nAnalysis: Demand wins.")


# ---------------------------------------------------------------------------------------------
# Supervision (tokenizer only)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("style_name", list(PROMPT_STYLES))
def test_labels_mask_exactly_the_prompt_and_padding_and_keep_the_final_eos(embedded_tokenizer, style_name):
    tok, style = embedded_tokenizer, get_style(style_name)
    assert tok.pad_token_id == tok.eos_token_id          # the hard case: pad == eos
    short = supervision.tokenize_example(tok, style, "Be brief.", "Hi", ANSWER, 512)
    long = supervision.tokenize_example(tok, style, "Be brief.", "Hello " * 20, ANSWER, 512)
    prompt_len = len(supervision.prompt_token_ids(tok, style, "Be brief.", "Hi"))
    assert short["labels"][:prompt_len] == [-100] * prompt_len
    assert short["labels"][prompt_len:] == short["input_ids"][prompt_len:]
    marker = style.end_of_answer.format(eos=tok.eos_token)
    assert tok.decode(short["labels"][prompt_len:]).endswith(marker)   # end-of-answer marker supervised
    batch = supervision.PaddingCollator(tok.pad_token_id)([short, long])
    labels, ids = batch["labels"][0].tolist(), batch["input_ids"][0].tolist()
    n = len(short["input_ids"])
    assert labels[n:] == [-100] * (len(labels) - n) and ids[n:] == [tok.pad_token_id] * (len(ids) - n)
    if style.end_of_answer in ("{eos}", "<|im_end|>"):   # styles whose marker is the EOS token here
        assert labels[n - 1] == tok.eos_token_id == tok.pad_token_id


def test_prompt_tokens_match_what_inference_feeds_the_model(embedded_tokenizer):
    style = get_style("chatml")
    ex = supervision.tokenize_example(embedded_tokenizer, style, "S", "U", ANSWER, 512)
    at_inference = embedded_tokenizer(style.format_prompt("S", "U"))["input_ids"]
    assert ex["input_ids"][:len(at_inference)] == at_inference and ex["prompt_tokens"] == len(at_inference)


def test_news_weeks_split_back_into_the_same_prompt():
    from conftest import make_user_prompt
    user = make_user_prompt("AAPL", 3, n_weeks=3)
    head, weeks, tail = supervision.split_news_weeks(user)
    assert len(weeks) == 3 and head + "".join(weeks) + tail == user
    assert head.startswith("[Company Introduction]") and tail.startswith("Some recent basic financials")


def test_overlong_examples_lose_their_oldest_news_and_keep_instruction_and_answer(embedded_tokenizer):
    from conftest import make_answer, make_user_prompt
    tok, style = embedded_tokenizer, get_style("chatml")
    user = make_user_prompt("AAPL", 3, n_weeks=4, filler_words=60)
    answer = make_answer("AAPL", "up by 1-2%")
    full = supervision.tokenize_example(tok, style, "S", user, answer, 4096)
    assert not full["overlong"]
    ex = supervision.tokenize_example(tok, style, "S", user, answer, full["prompt_tokens"] - 100 + full["supervised_tokens"])
    assert ex["overlong"] and ex["weeks_removed"] >= 1 and not ex["answer_cut"] and not ex["dropped"]
    text = tok.decode(ex["input_ids"])
    assert "Based on all the information" in text and "Prediction: Up by 1-2%" in text
    oldest = supervision.split_news_weeks(user)[1][0][:35]
    assert oldest not in text and supervision.split_news_weeks(user)[1][-1][:35] in text
    assert ex["supervised_tokens"] == full["supervised_tokens"]
    dropped = supervision.tokenize_example(tok, style, "S", user, answer, 300, overlong="drop")
    assert dropped["dropped"] and "max_length" in dropped["reason"]


def test_audit_counts_trimmed_cut_and_dropped_examples(embedded_tokenizer):
    from conftest import make_answer, make_user_prompt
    from prompt import wrap_public_prompt
    tok, style = embedded_tokenizer, get_style("chatml")

    def row(i, user):
        return {"id": f"X|{i}", "prompt": wrap_public_prompt("S", user), "answer": make_answer("X", "up by 0-1%")}
    short = make_user_prompt("X", 1, n_weeks=1)                       # fits
    trimmable = make_user_prompt("X", 2, n_weeks=4, filler_words=40)  # fits once old weeks go
    hopeless = make_user_prompt("X", 3, n_weeks=1, filler_words=400)  # one huge week: cannot fit
    base = len(supervision.tokenize_example(tok, style, "S", short, make_answer("X", "up by 0-1%"), 4096)["input_ids"])
    max_length = base + 120
    rows = [row(0, short), row(1, trimmable), row(2, hopeless)]
    feats, audit = supervision.tokenize_split(tok, style, rows, max_length, "trim")
    assert audit["examples_in"] == 3 and audit["examples_out"] == 2 == len(feats)
    assert audit["over_max_length"] == 2 and audit["trimmed_news"] == 1 and audit["dropped"] == 1
    assert audit["examples"]["dropped"][0]["id"] == "X|2"
    assert audit["supervised_tokens_per_example"]["min"] > 0
    assert all(len(f["input_ids"]) <= max_length for f in feats)
    _, dropping = supervision.tokenize_split(tok, style, rows, max_length, "drop")
    assert dropping["examples_out"] == 1 and dropping["dropped"] == 2 and dropping["trimmed_news"] == 0


def test_answer_longer_than_the_room_left_is_cut_and_counted(embedded_tokenizer):
    tok, style = embedded_tokenizer, get_style("chatml")
    long_answer = ANSWER + " More analysis." * 60
    ex = supervision.tokenize_example(tok, style, "S", "Short prompt", long_answer, 120)
    assert ex["answer_cut"] and len(ex["input_ids"]) == 120 and ex["labels"][-1] != tok.eos_token_id


def test_length_grouped_batches_keep_padding_waste_low():
    import random
    rng = random.Random(0)
    lengths = [rng.randint(2000, 4000) for _ in range(400)]
    grouped = supervision.padding_waste(lengths, 4, True, group_size=64)
    assert grouped <= 0.05 < supervision.padding_waste(lengths, 4, False)


# ---------------------------------------------------------------------------------------------
# Arguments, presets, dry runs (no model weights, no download)
# ---------------------------------------------------------------------------------------------
def test_upstream_constant_scheduler_with_warmup_means_constant_with_warmup():
    args = train_lora.parse_args(["--scheduler", "constant", "--warmup_ratio", "0.03"])
    assert train_lora.scheduler_name(args) == "constant_with_warmup"
    targs = train_lora.training_arguments(args, "fp32")
    assert targs.lr_scheduler_type == "constant_with_warmup" and targs.warmup_steps == 0.03


def test_presets_apply_under_explicit_flags():
    args = train_lora.parse_args(["--preset", "colab-t4", "--max_length", "1024"])
    assert args.load_in_4bit and args.dtype == "fp16" and args.gradient_checkpointing and args.max_length == 1024


def test_user_mistakes_end_in_one_error_line(capsys, tiny_forecast_dataset):
    assert train_lora.main(["--dataset", str(tiny_forecast_dataset), "--batch_size", "0", "--warmup_ratio", "2",
                            "--ds_config", "missing.json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and "--batch_size" in err[0] and "missing.json" in err[0]


@pytest.mark.parametrize("case", [["--base_model", m] for m in models.MODELS]
                         + [["--base_model", "llama3.1-8b", "--preset", p] for p in train_lora.PRESETS])
def test_dry_run_resolves_every_model_and_preset_without_downloading(case, tiny_forecast_dataset, capsys,
                                                                      embedded_model_dir):
    resolved = train_lora.run(["--dataset", str(tiny_forecast_dataset), "--dry_run", "--max_length", "2048"] + case)
    out = capsys.readouterr().out
    assert "Supervision audit" in out and "dry run: nothing trained" in out
    assert resolved["memory_estimate"]["total_gib"] > 0
    if case[1] != "smollm2-135m":
        assert "not available offline" in out       # one line, then the style's template is audited
        assert resolved["memory_estimate"]["parameters"] > 7e9


def test_deepspeed_config_uses_auto_values_for_what_trainer_fills():
    config = json.loads((ROOT / "config.json").read_text())
    assert config["zero_optimization"]["stage"] == 2
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                "gradient_clipping"):
        assert config[key] == "auto"
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    assert "scheduler" not in config and "optimizer" not in config   # Trainer's own (constant with warmup)


def test_deepspeed_config_is_accepted_by_training_arguments(tmp_path):
    import deepspeed  # noqa: F401  (make setup installs requirements-gpu.txt: a missing engine fails, never skips)
    from transformers import TrainingArguments
    args = TrainingArguments(output_dir=str(tmp_path), deepspeed=str(ROOT / "config.json"))
    assert args.hf_deepspeed_config.config["zero_optimization"]["stage"] == 2


def test_train_sh_is_valid_bash_and_names_the_three_models():
    subprocess.run(["bash", "-n", str(ROOT / "train.sh")], check=True)
    text = (ROOT / "train.sh").read_text()
    for name in ("llama3.1-8b", "deepseek-r1-distill-llama-8b", "qwen2.5-7b-instruct", "--num_gpus", "config.json"):
        assert name in text


def test_train_sh_names_an_unknown_block_in_one_error_line():
    proc = subprocess.run(["bash", str(ROOT / "train.sh"), "llama4"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: unknown choice 'llama4'")
    env = {k: v for k, v in os.environ.items() if k not in ("ADAPTER", "PAIRS")}
    proc = subprocess.run(["bash", str(ROOT / "train.sh"), "dpo"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: the dpo block needs ADAPTER=")


def test_login_instructions_name_the_current_hub_cli():
    # huggingface_hub 1.x/2.x ships `hf`; `huggingface-cli` is gone
    for name in ("README.md", "train.sh", "models.py"):
        text = (ROOT / name).read_text()
        assert "huggingface-cli" not in text and "hf auth login" in text, name
    assert "hf auth login" in models.GATED_HINT


def test_the_deepspeed_launchers_local_rank_flag_is_accepted_and_ignored(tiny_forecast_dataset, capsys,
                                                                       embedded_model_dir, monkeypatch):
    # deepspeed appends --local_rank=N to every rank's arguments; LOCAL_RANK in the environment rules
    monkeypatch.setenv("LOCAL_RANK", "0")
    args = train_lora.parse_args(["--local_rank=1", "--dpo", "pairs", "--adapter", "sft"])
    assert not hasattr(args, "local_rank") and args.dpo == "pairs"
    resolved = train_lora.run(["--dataset", str(tiny_forecast_dataset), "--dry_run", "--local_rank=0",
                                "--max_length", "2048"])
    assert "local_rank" not in resolved["args"] and "dry run: nothing trained" in capsys.readouterr().out


def test_fsdp_on_a_machine_without_cuda_is_one_clear_error_not_a_quiet_ddp_run(tiny_forecast_dataset, capsys,
                                                                                 monkeypatch):
    import torch
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")            # what `accelerate launch --use_fsdp` sets
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_lora.main(["--dataset", str(tiny_forecast_dataset), "--max_steps", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("Error: FSDP") and "needs CUDA GPUs" in err[0]


def test_4bit_and_8bit_are_allowed_on_a_cpu_when_bitsandbytes_is_installed(tiny_forecast_dataset, monkeypatch):
    import importlib.util
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for flag in ("--load_in_4bit", "--load_in_8bit"):
        args = train_lora.parse_args(["--dataset", str(tiny_forecast_dataset), flag])
        problems = train_lora.validate_args(args)
        if importlib.util.find_spec("bitsandbytes") is None:
            assert any("bitsandbytes" in p for p in problems)
        else:
            assert problems == []
            assert models.quantization_config(flag == "--load_in_8bit", flag == "--load_in_4bit") is not None


# ---------------------------------------------------------------------------------------------
# Real training on the embedded model (CPU, fp32, tiny)
# ---------------------------------------------------------------------------------------------
def test_overfitting_one_small_batch_drives_the_loss_down_and_leaves_base_weights_bit_identical(
        embedded_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    model, tok, spec = models.load_model("smollm2-135m", dtype="fp32")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=list(spec.lora_targets), task_type="CAUSAL_LM"))
    style = get_style("chatml")
    batch = supervision.PaddingCollator(tok.pad_token_id)(
        [supervision.tokenize_example(tok, style, "Be brief.", f"Week {i}", ANSWER, 256) for i in range(2)])
    base_before = {k: v.clone() for k, v in model.named_parameters() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in model.named_parameters() if "lora_" in k}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in base_before.items())
    assert all(not torch.equal(params[k], v) for k, v in lora_before.items() if "lora_B" in k)


RUN_ARGS = ["--max_length", "512", "--max_steps", "4", "--batch_size", "2", "--gradient_accumulation_steps", "1",
            "--learning_rate", "1e-3", "--warmup_ratio", "0", "--log_interval", "1", "--eval_steps", "2",
            "--save_steps", "2", "--dtype", "fp32", "--eval_generate", "2", "--eval_max_new_tokens", "4",
            "--keep_best", "--report_to", "tensorboard", "--seed", "7"]


@pytest.fixture(scope="module")
def trained_run(short_forecast_dataset, embedded_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "adapter"
    result = train_lora.run(["--dataset", str(short_forecast_dataset), "--output_dir", str(out)] + RUN_ARGS)
    return out, result


def test_a_tiny_run_writes_every_artifact_beside_the_adapter(trained_run):
    out, result = trained_run
    for name in ("adapter_config.json", "adapter_model.safetensors", "prompt_style.json", "args.json",
                 "audit.json", "environment.json", "timing.json", "trainer_state.json", "tokenizer_config.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m"
    from prompt import PromptStyle
    assert PromptStyle.load(out).name == "chatml"
    timing = json.loads((out / "timing.json").read_text())
    assert timing["global_step"] == 4 and timing["train_tokens_per_s"] > 0 and timing["host_peak_gib"] > 0
    audit = json.loads((out / "audit.json").read_text())
    assert audit["splits"]["train"]["examples_in"] == 8 and "test" not in audit["splits"]


def test_validation_task_metrics_are_logged_at_each_eval(trained_run):
    out, _ = trained_run
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [h for h in state["log_history"] if "eval_binary_accuracy" in h]
    assert [h["step"] for h in evals] == [2, 4]
    assert all(0 <= h["eval_format_failure_rate"] <= 1 for h in evals)
    assert state["best_model_checkpoint"] is not None


def test_the_adapter_holds_only_trained_lora_weights(trained_run):
    import torch
    from safetensors.torch import load_file
    out, _ = trained_run
    trained = load_file(str(out / "adapter_model.safetensors"))
    assert trained and all("lora_" in k for k in trained)            # the base model is never rewritten
    assert any(torch.count_nonzero(v) for k, v in trained.items() if "lora_B" in k)   # B starts at zero


def test_adapter_reload_gives_identical_logits(trained_run):
    import torch
    from peft import PeftModel
    out, _ = trained_run
    ids = torch.tensor([[1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198]])
    logits = []
    for _ in range(2):
        base, _, _ = models.load_model("smollm2-135m", dtype="fp32")
        model = PeftModel.from_pretrained(base, str(out)).eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    base, _, _ = models.load_model("smollm2-135m", dtype="fp32")
    with torch.no_grad():
        plain = base.eval()(input_ids=ids).logits
    assert torch.equal(logits[0], logits[1]) and not torch.equal(logits[0], plain)


def test_resume_after_an_interrupted_run_reaches_the_same_step_without_repeating_steps(
        trained_run, short_forecast_dataset, tmp_path):
    out, _ = trained_run
    first = {h["step"]: h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"]
             if "loss" in h}
    # the run "killed" right after its step-2 checkpoint: only checkpoint-2 is on disk
    interrupted = tmp_path / "adapter"
    interrupted.mkdir()
    shutil.copytree(out / "checkpoint-2", interrupted / "checkpoint-2")
    train_lora.run(["--dataset", str(short_forecast_dataset), "--output_dir", str(interrupted),
                     "--resume_from_checkpoint", "last"] + RUN_ARGS)
    state = json.loads((interrupted / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert state["global_step"] == 4 and steps == sorted(set(steps)) == [1, 2, 3, 4]
    resumed = {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}
    for step in (3, 4):                         # same data order and RNG: the same losses
        assert resumed[step] == pytest.approx(first[step], rel=1e-4)


def test_only_rank_0_writes_the_adapter_run_files_and_the_merged_model(short_forecast_dataset, embedded_model_dir,
                                                                      tmp_path, monkeypatch):
    """Every rank runs the save path with the same output paths, so a test that only sees the files cannot
    fail: run it in-process as rank 1 (nothing may appear, no base model may load), then as rank 0."""
    out = tmp_path / "adapter"
    args = train_lora.parse_args(["--dataset", str(short_forecast_dataset), "--output_dir", str(out),
                                  "--max_length", "512", "--max_steps", "1", "--gradient_accumulation_steps", "1",
                                  "--evaluation_strategy", "no", "--save_steps", "100", "--dtype", "fp32",
                                  "--report_to", "none", "--merge"])
    spec = models.resolve_model(args.base_model)
    style = get_style(spec.prompt_style)
    train_rows, val_rows, _ = train_lora.prepare_data(args)
    tokenizer = models.load_tokenizer(spec)
    train_feats, val_feats, audit = train_lora.build_supervision(args, tokenizer, style, train_rows, val_rows,
                                                                 spec.name)
    model, tokenizer, spec = train_lora.build_model(args, spec)
    trainer, generator = train_lora.build_trainer(args, model, tokenizer, style, train_feats, val_feats, val_rows,
                                                  "fp32")
    result = trainer.train()
    trainers_own = {p.relative_to(out) for p in out.rglob("*")} if out.exists() else set()

    def save_all():
        train_lora.save_audit(args, audit)
        train_lora.save_outputs(args, trainer, tokenizer, style, spec, {"args": vars(args)}, result, 1.0, generator)
        return train_lora.merge_adapter(args, out)

    def no_second_model(*a, **kw):
        raise AssertionError("rank 1 loaded the base model for --merge")

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(models, "load_model", no_second_model)
    assert save_all() is None
    assert ({p.relative_to(out) for p in out.rglob("*")} if out.exists() else set()) == trainers_own

    monkeypatch.undo()                          # the real load_model for rank 0
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    merged = save_all()
    for name in ("adapter_config.json", "adapter_model.safetensors", "audit.json", "args.json", "timing.json",
                 "prompt_style.json", "environment.json", "trainer_state.json", "merged/config.json",
                 "merged/model.safetensors", "merged/prompt_style.json"):
        assert (out / name).is_file(), name
    assert merged == out / "merged"
    engine = json.loads((out / "timing.json").read_text())["engine"]
    assert engine["world_size"] == 1 and not engine["is_deepspeed_enabled"] and engine["quantization"] is None


def test_eval_examples_takes_an_evenly_spaced_validation_subset(tiny_forecast_dataset):
    args = train_lora.parse_args(["--dataset", str(tiny_forecast_dataset), "--eval_examples", "2"])
    train_rows, val_rows, _ = train_lora.prepare_data(args)
    assert len(train_rows) == 12 and len(val_rows) == 2
    assert val_rows[0]["period"] != val_rows[1]["period"]          # spread over the split, not its first rows


def test_seed_fixes_the_lora_initialisation(tiny_forecast_dataset, embedded_model_dir):
    """--seed covers the LoRA A matrices, drawn before the Trainer seeds anything: two builds with one seed are
    the same adapter, so a run is reproducible (they were not: make demo's losses drifted from step 2 on)."""
    import torch
    from models import resolve_model

    def lora_weights(seed):
        args = train_lora.parse_args(["--dataset", str(tiny_forecast_dataset), "--dtype", "fp32", "--seed", str(seed)])
        model, _, _ = train_lora.build_model(args, resolve_model(args.base_model))
        return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_A" in n])

    first = lora_weights(7)
    assert torch.equal(first, lora_weights(7))
    assert not torch.equal(first, lora_weights(8))
