"""models.py: the registry, name resolution, dtype choice, loading and environment info."""
import json

import pytest

import models
from prompt import PROMPT_STYLES


def test_registry_has_the_three_assignment_models_and_the_embedded_default():
    assert models.DEFAULT_MODEL == "smollm2-135m" and models.MODELS["smollm2-135m"].is_embedded
    hubs = {s.hub_id for s in models.MODELS.values()}
    assert {"meta-llama/Llama-3.1-8B", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "Qwen/Qwen2.5-7B-Instruct"} <= hubs
    for spec in models.MODELS.values():
        assert spec.prompt_style in PROMPT_STYLES
        assert len(spec.knowledge_cutoff) == 7 and spec.knowledge_cutoff[4] == "-"
        assert spec.lora_targets and spec.arch_config["model_type"] in ("llama", "qwen2")


def test_base_llama_is_not_trained_on_instruct_header_tokens_and_r1_prefills_an_empty_think_block():
    assert models.MODELS["llama3.1-8b"].prompt_style in ("llama2", "plain")
    r1 = PROMPT_STYLES[models.MODELS["deepseek-r1-distill-llama-8b"].prompt_style]
    assert r1.format_prompt("S", "U").endswith("<think>\n\n</think>\n\n")
    assert models.MODELS["qwen2.5-7b-instruct"].prompt_style == "chatml"


@pytest.mark.parametrize("name", list(models.MODELS))
def test_shipped_architecture_builds_offline_with_the_expected_parameter_count(name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    arch = dict(models.MODELS[name].arch_config)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    with torch.device("meta"):                  # shapes only: an 8B model costs nothing here
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == models.count_parameters(models.MODELS[name].arch_config)


def test_eight_billion_shaped_models_really_are_that_size():
    assert 7.9e9 < models.count_parameters(models.MODELS["llama3.1-8b"].arch_config) < 8.1e9
    assert 7.5e9 < models.count_parameters(models.MODELS["qwen2.5-7b-instruct"].arch_config) < 7.7e9
    # FACTS: LoRA r=8 on all 7 projections of the embedded model = 2.44 M trainable parameters
    assert models.lora_parameters(models.MODELS["smollm2-135m"].arch_config, 8) == 2_442_240


def test_resolve_model_accepts_registry_names_their_hub_ids_and_unknown_hub_ids():
    assert models.resolve_model("llama3.1-8b").hub_id == "meta-llama/Llama-3.1-8B"
    assert models.resolve_model("qwen/qwen2.5-7b-instruct").name == "qwen2.5-7b-instruct"
    other = models.resolve_model("SomeOrg/SomeBaseModel")
    assert other.hub_id == "SomeOrg/SomeBaseModel" and other.prompt_style == "llama2"
    assert models.resolve_model("SomeOrg/SomeBaseModel", prompt_style="plain").prompt_style == "plain"
    assert models.resolve_model("qwen2.5-7b-instruct", prompt_style="llama2").prompt_style == "llama2"


def test_unknown_names_and_styles_fail_with_a_clear_message():
    with pytest.raises(models.ModelError, match="registry name"):
        models.resolve_model("not-a-model")
    with pytest.raises(models.ModelError, match="prompt style"):
        models.resolve_model("smollm2-135m", prompt_style="nope")


def test_prompt_style_is_guessed_from_a_chat_template():
    assert models.guess_prompt_style("...<|im_start|>assistant...") == "chatml"
    assert models.guess_prompt_style("...<｜Assistant｜>...") == "deepseek-r1"
    assert models.guess_prompt_style("<|start_header_id|>user<|end_header_id|>") == "llama3"
    assert models.guess_prompt_style(None) == "llama2"


def test_local_model_folder_gets_its_style_from_its_chat_template(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "chat_template.jinja").write_text("{{ '<|im_start|>' }}")
    spec = models.resolve_model(str(tmp_path))
    assert spec.prompt_style == "chatml" and not spec.is_embedded


def test_4bit_loading_on_a_cpu_gives_real_nf4_layers_computing_in_bf16_instead_of_fp16(embedded_model_dir,
                                                                                        monkeypatch):
    import bitsandbytes as bnb
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, _, _ = models.load_model("smollm2-135m", dtype="fp16", load_in_4bit=True)   # the T4 preset's dtype
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 7 * 30 and all(m.weight.device.type == "cpu" for m in layers)
    assert model.config.quantization_config.bnb_4bit_quant_type == "nf4"
    assert model.config.quantization_config.bnb_4bit_compute_dtype == torch.bfloat16


def test_quantized_loading_without_bitsandbytes_fails_with_a_clear_error(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(models.ModelError, match="requirements-gpu.txt"):
        models.quantization_config(load_in_8bit=True)


def test_default_dtype_follows_the_hardware(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: True)
    assert models.default_dtype() == "bf16"
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: False)
    assert models.default_dtype() == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert models.default_dtype() == "fp16"     # a T4


def fake_cuda_card(monkeypatch, name, major, minor):
    """Only the CUDA queries are replaced; torch's own is_bf16_supported runs on top of them. A pre-Ampere card
    can still create bf16 tensors (emulation), which is what made the old default say bf16 on a T4."""
    import types

    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(name=name, major=major, minor=minor))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize("card, major, minor, expected", [
    ("Tesla T4", 7, 5, "fp16"), ("Tesla V100-SXM2-16GB", 7, 0, "fp16"),
    ("NVIDIA A100-SXM4-40GB", 8, 0, "bf16"), ("NVIDIA L4", 8, 9, "bf16"), ("NVIDIA H100 80GB HBM3", 9, 0, "bf16")])
def test_default_dtype_is_fp16_on_cards_that_only_emulate_bf16(monkeypatch, card, major, minor, expected):
    import torch
    fake_cuda_card(monkeypatch, card, major, minor)
    assert torch.cuda.is_bf16_supported()               # torch's default counts emulation: True even on a T4
    assert models.default_dtype() == expected
    assert models.cuda_bf16_native() == (expected == "bf16")


def test_embedded_model_loads_under_its_registry_name_never_a_cache_path(embedded_model_dir):
    model, tokenizer, spec = models.load_model("smollm2-135m", dtype="fp32")
    assert spec.name == "smollm2-135m" and model.config._name_or_path == "smollm2-135m"
    assert tokenizer.pad_token is not None and tokenizer.eos_token == "<|im_end|>"
    assert (embedded_model_dir / "model.safetensors").exists()
    # the converted folder resolves back to the registry entry (adapters must not record the path)
    assert models.resolve_model(str(embedded_model_dir)).name == "smollm2-135m"


def test_environment_info_names_hardware_and_versions():
    info = models.environment_info()
    for key in ("gpu", "cuda", "driver", "torch", "transformers", "peft", "cpu", "ram_gib", "os", "python"):
        assert key in info
    assert info["torch"] and info["transformers"] and info["peft"]
