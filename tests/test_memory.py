"""The memory estimate against what torch actually holds, on a tiny Llama-architecture model (random
weights from a config, nothing downloaded), on CPU:
- the weights term == the parameter bytes after loading and after prepare_model_for_kbit_training;
- the activation term == the bytes saved for backward (torch.autograd.graph.saved_tensors_hooks), ±30 %;
- the logits term == the live bytes a training step adds per token per vocabulary entry.
The step runs under torch.autocast(bf16), as the Trainer runs it on a GPU with --dtype bf16/fp16."""
import pytest

import memory
import models

TARGETS = models.LLAMA_LORA_TARGETS
TINY = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 176,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 1024, "tie_word_embeddings": False, "rms_norm_eps": 1e-5}
SEQ = 128


def tiny_model(arch=TINY, quantized=False, checkpointing=False, tmp_path=None):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(0)
    fields = dict(arch)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    loaded_bytes = None
    if quantized:
        model.save_pretrained(tmp_path)
        quant = models.quantization_config(load_in_4bit=True, compute_dtype="bf16")   # the project's QLoRA settings
        model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quant, device_map={"": "cpu"},
                                                     dtype=torch.bfloat16)
        loaded_bytes = weight_bytes_of(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.config.use_cache = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=list(TARGETS),
                                             task_type="CAUSAL_LM"))
    model.train()
    return model, loaded_bytes


def weight_bytes_of(model):
    """Parameter bytes + the 4-bit quantization state (absmax, nested absmax) the GPU also holds; the LoRA
    parameters peft injected are the adapter term, not weights."""
    total = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        total += p.numel() * p.element_size()
        state = getattr(p, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            if state.nested:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return total


def batch(vocab, micro_batch, seq=SEQ):
    import torch
    ids = torch.randint(0, vocab, (micro_batch, seq), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if micro_batch > 1:
        mask[1:, -seq // 4:] = 0                # padding, as in a length-grouped batch
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def saved_for_backward(model, inputs):
    """Bytes of the distinct storages saved for backward in one forward pass (parameters excluded)."""
    import torch
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**inputs).loss
    loss.backward()
    return sum(seen.values())


def live_bytes_peak(model, inputs):
    """Peak bytes of tensors created by one training step (forward, backward, AdamW step), on top of the
    weights: activations, temporaries, LoRA gradients and the optimizer state. A dispatch mode sees every
    op's output storage; a storage counts until it is freed."""
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveBytes(TorchDispatchMode):
        def __init__(self, existing):
            super().__init__()
            self.existing = {t.untyped_storage()._cdata for t in existing}
            self.live, self.current, self.peak = {}, 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
                self.current -= self.live.pop(key)[1]
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    if storage._cdata not in self.live and storage._cdata not in self.existing:
                        self.live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
                        self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            return out

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tracker = LiveBytes(list(model.parameters()) + list(inputs.values()))
    with tracker:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
    return tracker.peak


def estimated_saved(arch, micro_batch, checkpointing, quantized):
    acts = memory.activation_bytes(arch, "bf16", 8, TARGETS, micro_batch, SEQ, checkpointing, quantized=quantized,
                                   device="cpu")
    _, logits_saved = memory.logits_bytes(arch["vocab_size"], micro_batch * SEQ)
    return acts["saved"] + logits_saved


def test_weights_term_equals_the_parameter_bytes_of_a_bf16_model():
    model, _ = tiny_model()
    base = model.get_base_model()
    assert memory.weight_bytes(TINY, "bf16") == weight_bytes_of(base)
    base_parameters = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)
    assert sum(memory.parameter_split(TINY)) == models.count_parameters(TINY) == base_parameters
    assert memory.lora_parameter_count(TINY, 8, TARGETS) == sum(p.numel() for p in model.parameters()
                                                                if p.requires_grad)


def test_weights_term_equals_the_parameter_bytes_of_a_4bit_model_before_and_after_kbit_preparation(tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes (requirements-gpu.txt) quantizes on CPU too")
    model, loaded = tiny_model(quantized=True, tmp_path=tmp_path)
    # after loading: projections packed nf4 + absmaxes, the rest (embeddings, lm_head, norms) in bf16
    assert loaded == memory.weight_bytes(TINY, "bf16", load_in_4bit=True, prepared=False)
    # prepare_model_for_kbit_training casts every non-4-bit parameter to fp32
    assert weight_bytes_of(model.get_base_model()) == memory.weight_bytes(TINY, "bf16", load_in_4bit=True)
    assert memory.weight_bytes(TINY, "bf16", load_in_4bit=True) > loaded


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-checkpointing", "checkpointing"])
@pytest.mark.parametrize("micro_batch", [1, 2], ids=["batch1", "batch2-padded"])
def test_activation_term_matches_the_bytes_saved_for_backward(checkpointing, micro_batch):
    model, _ = tiny_model(checkpointing=checkpointing)
    measured = saved_for_backward(model, batch(TINY["vocab_size"], micro_batch))
    estimate = estimated_saved(TINY, micro_batch, checkpointing, quantized=False)
    print(f"bf16 batch {micro_batch} checkpointing={checkpointing}: saved {measured} B, estimated {estimate} B "
          f"({estimate / measured - 1:+.1%})")
    assert abs(estimate / measured - 1) <= 0.30


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-checkpointing", "checkpointing"])
def test_activation_term_matches_the_bytes_saved_for_backward_in_4bit(checkpointing, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes (requirements-gpu.txt) quantizes on CPU too")
    model, _ = tiny_model(quantized=True, checkpointing=checkpointing, tmp_path=tmp_path)
    measured = saved_for_backward(model, batch(TINY["vocab_size"], 1))
    estimate = estimated_saved(TINY, 1, checkpointing, quantized=True)
    print(f"4-bit checkpointing={checkpointing}: saved {measured} B, estimated {estimate} B "
          f"({estimate / measured - 1:+.1%})")
    assert abs(estimate / measured - 1) <= 0.30
    # the fp32 residual stream of a kbit-prepared model keeps more than the bf16 model does
    assert measured > saved_for_backward(tiny_model(checkpointing=checkpointing)[0], batch(TINY["vocab_size"], 1))


def test_logits_term_is_the_live_bytes_per_token_per_vocabulary_entry():
    small, large = dict(TINY, vocab_size=1000), dict(TINY, vocab_size=17000)
    peaks = {arch["vocab_size"]: live_bytes_peak(tiny_model(arch)[0], batch(arch["vocab_size"], 1))
             for arch in (small, large)}
    per_entry = (peaks[17000] - peaks[1000]) / (SEQ * 16000)
    print(f"logits: {per_entry:.2f} bytes per token per vocabulary entry measured, "
          f"{memory.LOGIT_BYTES_PER_ENTRY} estimated")
    assert abs(memory.LOGIT_BYTES_PER_ENTRY / per_entry - 1) <= 0.15
    # and the whole step: activations + logits peak + LoRA gradients and AdamW state, within 30 %
    acts = memory.activation_bytes(large, "bf16", 8, TARGETS, 1, SEQ, False, device="cpu")
    logits_peak, _ = memory.logits_bytes(large["vocab_size"], SEQ)
    lora = memory.lora_parameter_count(large, 8, TARGETS)
    step_bytes = acts["saved"] + logits_peak + lora * (memory.ADAPTER_BYTES_PER_PARAM - 4)   # weights existed before
    print(f"whole step: {peaks[17000]} B live at the peak, estimated {step_bytes:.0f} B "
          f"({step_bytes / peaks[17000] - 1:+.1%})")
    assert abs(step_bytes / peaks[17000] - 1) <= 0.30


@pytest.mark.parametrize("quantized, checkpointing", [(False, False), (False, True), (True, False)],
                         ids=["bf16", "bf16-checkpointing", "4bit"])
def test_estimate_holds_for_the_embedded_model_as_train_lora_builds_it(quantized, checkpointing, embedded_model_dir):
    """The real SmolLM2-135M (tied embeddings, 30 layers) through train_lora.build_model: weights and saved bytes."""
    if quantized:
        pytest.importorskip("bitsandbytes", reason="bitsandbytes (requirements-gpu.txt) quantizes on CPU too")
    import train_lora
    flags = ["--base_model", "smollm2-135m", "--dtype", "bf16"] + (["--load_in_4bit"] if quantized else []) \
        + (["--gradient_checkpointing"] if checkpointing else [])
    args = train_lora.parse_args(flags)
    model, _, spec = train_lora.build_model(args, models.resolve_model("smollm2-135m"))
    if checkpointing:                       # as the Trainer turns it on (training_arguments)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    arch = spec.arch_config
    assert weight_bytes_of(model) == memory.weight_bytes(arch, "bf16", load_in_4bit=quantized)
    measured = saved_for_backward(model, batch(arch["vocab_size"], 1, seq=64))
    acts = memory.activation_bytes(arch, "bf16", args.lora_r, spec.lora_targets, 1, 64, checkpointing,
                                   quantized=quantized, lora_dropout=args.lora_dropout, device="cpu")
    estimate = acts["saved"] + memory.logits_bytes(arch["vocab_size"], 64)[1]
    print(f"smollm2-135m {'4-bit' if quantized else 'bf16'} checkpointing={checkpointing}: saved {measured} B, "
          f"estimated {estimate} B ({estimate / measured - 1:+.1%})")
    assert abs(estimate / measured - 1) <= 0.30


def test_target_models_get_the_issue_s_reference_numbers():
    llama = models.MODELS["llama3.1-8b"].arch_config
    # a T4 user (colab-t4: 4-bit, fp16, checkpointing, 2048 tokens) needs 13-15 GiB, not the old 6.4-7.5
    t4 = memory.estimate_memory(llama, "fp16", 8, TARGETS, 1, 2048, True, load_in_4bit=True)
    assert 13 <= t4["total_gib"] <= 15
    # prepare_model_for_kbit_training's fp32 embeddings + lm_head: 1.05 G parameters x 4 bytes
    assert memory.weight_bytes(llama, "fp16", load_in_4bit=True) - memory.weight_bytes(
        llama, "fp16", load_in_4bit=True, prepared=False) == pytest.approx(2 * 1.05e9, rel=0.01)
    # bench/gpu_check.sh's no-checkpointing line: batch 4 of ~3.8k tokens overflows an H200, batch 1 fits
    h200 = 140.4
    assert not memory.verdict(memory.estimate_memory(llama, "bf16", 8, TARGETS, 4, 3840, False)["total_gib"], h200)[0]
    assert memory.verdict(memory.estimate_memory(llama, "bf16", 8, TARGETS, 1, 3840, False)["total_gib"], h200)[0]


def test_preset_table_gives_every_gpu_preset_a_verdict_per_target_model():
    presets = {"t4": dict(load_in_4bit=True, dtype="fp16", gradient_checkpointing=True, max_length=2048,
                          gpu_memory_gib=15.0),
               "tiny-card": dict(dtype="bf16", max_length=4096, gpu_memory_gib=8.0), "cpu": dict(max_length=1024)}
    targets = {k: models.MODELS[k] for k in ("llama3.1-8b", "deepseek-r1-distill-llama-8b", "qwen2.5-7b-instruct")}
    rows = memory.preset_table(presets, targets, r=8)
    assert [(r["preset"], r["model"]) for r in rows] == [(p, m) for p in ("t4", "tiny-card") for m in targets]
    assert all(r["fits"] for r in rows if r["preset"] == "t4")
    assert not any(r["fits"] for r in rows if r["preset"] == "tiny-card")
    table = memory.format_preset_table(rows)
    assert "| t4 | 15.0 | 4-bit, ckpt, 2048 tok x 1 | llama3.1-8b |" in table and "does not fit (short" in table


def test_gpu_check_dry_mode_prints_the_estimates_first_and_fits_its_window(tmp_path):
    """bench/gpu_check.sh's dry parts: argument parsing, the two estimates it prints first, the summary file;
    its GPU steps need a GPU and are skipped by --dry."""
    import json
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    script = root / "bench" / "gpu_check.sh"
    env = dict(os.environ, OUT=str(tmp_path / "bench-out"), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(script), "--dry"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "bench-out" / "gpu_check.json").read_text())
    no_ckpt, ckpt = summary["estimate_no_ckpt"], summary["estimate_ckpt"]
    assert no_ckpt["batch_size"] == 1 and not no_ckpt["gradient_checkpointing"]       # batch 4 would need ~165 GiB
    assert ckpt["batch_size"] == 4 and ckpt["gradient_checkpointing"]
    assert no_ckpt["memory_estimate"]["total_gib"] < 139 and ckpt["memory_estimate"]["total_gib"] < 139   # an H200
    assert "none (dry run)" in summary["gpu"] and not (tmp_path / "bench-out" / "train_no_ckpt.txt").exists()
    assert done.stdout.index("estimate_no_ckpt") < done.stdout.index("gpu_check.json")
    limits = {k: int(v) for k, v in re.findall(r"^(T_[A-Z_]+)=(\d+)", script.read_text(), re.M)}
    assert len(limits) == 5 and sum(limits.values()) == summary["step_limits_s"] < 540
    bad = subprocess.run(["bash", str(script), "--gpu"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: unknown argument --gpu")


def test_dry_run_prints_the_verdict_and_the_per_preset_table(tiny_forecast_dataset, embedded_model_dir, capsys):
    import train_lora
    common = ["--dataset", str(tiny_forecast_dataset), "--dry_run", "--base_model", "llama3.1-8b"]
    resolved = train_lora.run(common + ["--preset", "colab-t4"])
    out = capsys.readouterr().out
    # computed at --max_length (2048 from the preset), not at the tiny dataset's longest example
    assert resolved["memory_estimate"]["tokens"] == 2048 and 13 <= resolved["memory_estimate"]["total_gib"] <= 15
    assert "at 2048 tokens x micro-batch 1:" in out and "-> fits in 15.0 GiB (+" in out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    gpu_presets = [name for name, preset in train_lora.PRESETS.items() if preset.get("gpu_memory_gib")]
    assert {"colab-t4", "l4-24g", "a100-40g", "a100-80g", "h100-80g", "h200-141g"} <= set(gpu_presets)
    for preset in gpu_presets:
        for model in train_lora.TARGET_MODELS:
            assert any(f"| {preset} |" in row and f"| {model} |" in row for row in rows), (preset, model)
    # an explicit flag wins over the preset, and the verdict follows it
    train_lora.run(common + ["--preset", "colab-t4", "--max_length", "4096"])
    assert "-> does not fit in 15.0 GiB (short by" in capsys.readouterr().out
