"""Closing the loop: a hitl.py export feeds train_lora.py --hitl_data (SFT mix) and --dpo (DPO stage)."""
import json

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file

import hitl
import supervision
import train_lora
from test_hitl import answer, make_dataset, make_run, review, validation_ids

TINY = ["--max_length", "384", "--batch_size", "1", "--gradient_accumulation_steps", "1", "--learning_rate", "5e-3",
        "--warmup_ratio", "0", "--log_interval", "1", "--evaluation_strategy", "no", "--save_steps", "50",
        "--dtype", "fp32", "--report_to", "none", "--seed", "3"]


@pytest.fixture(scope="module")
def export_and_sft(tmp_path_factory, embedded_model_dir):
    """A reviewed pair of validation runs exported, and a 1-step SFT adapter trained with the corrections."""
    root = tmp_path_factory.mktemp("loop")
    data = make_dataset(root)
    ids = validation_ids(data)
    run_a = make_run(root, "run-a", data, {i: answer("Up by 1-2%", positive=f"A on {i}") for i in ids})
    run_b = make_run(root, "run-b", data, {i: answer("Down by 1-2%", positive=f"B on {i}") for i in ids})
    client = TestClient(hitl.create_app(root / "reviews.sqlite", [run_a, run_b]))
    review(client, ids[0], rating_A=5, rating_B=2, preference="A")
    review(client, ids[1], rating_A=2, rating_B=4, preference="B",
           edit_A=answer("Down by 0-1%", positive="Corrected: weak demand."))
    assert hitl.main(["export", "--db", str(root / "reviews.sqlite"), "--out", str(root / "export")]) == 0
    sft = root / "sft-adapter"
    result = train_lora.run(["--dataset", str(data), "--output_dir", str(sft), "--max_steps", "1",
                              "--hitl_data", str(root / "export"), "--hitl_weight", "3"] + TINY)
    return root, data, sft, result


def test_hitl_corrections_are_upsampled_into_the_training_split(export_and_sft):
    root, data, sft, _ = export_and_sft
    exported = json.loads((root / "export" / "export.json").read_text())
    audit = json.loads((sft / "audit.json").read_text())
    corrections = supervision.hitl_rows(root / "export", set())
    assert len(corrections) >= 1 and any("Corrected: weak demand." in r["answer"] for r in corrections)
    assert audit["splits"]["train"]["examples_in"] == 6 + 3 * len(corrections)   # 6 train rows + 3 copies each
    assert exported["counts"]["SFT rows from corrections"] == 1


def test_dpo_stage_changes_the_sft_adapter_and_keeps_its_style_and_base(export_and_sft):
    root, data, sft, _ = export_and_sft
    out = root / "dpo-adapter"
    # with gradient checkpointing (non-reentrant): the LoRA layers must still get gradients
    result = train_lora.run(["--dpo", str(root / "export"), "--adapter", str(sft), "--output_dir", str(out),
                              "--max_steps", "2", "--dataset", str(data), "--gradient_checkpointing"] + TINY)
    assert result["pairs"] >= 1 and result["global_step"] == 2
    before = load_file(str(sft / "adapter_model.safetensors"))
    after = load_file(str(out / "adapter_model.safetensors"))
    assert set(before) == set(after)                                     # the "ref" copy is not saved
    changed = [k for k in before if "lora_B" in k and not (before[k] == after[k]).all()]
    assert changed
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2-135m"
    assert json.loads((out / "prompt_style.json").read_text())["name"] == "chatml"


def test_dpo_stage_uses_the_deepspeed_config_and_non_reentrant_checkpointing_like_the_sft_stage(tmp_path):
    import deepspeed  # noqa: F401  (make setup installs requirements-gpu.txt: a missing engine fails, never skips)
    import dpo_stage
    args = train_lora.parse_args(["--dpo", "pairs", "--adapter", "sft", "--output_dir", str(tmp_path),
                                  "--ds_config", "config.json", "--gradient_checkpointing", "--report_to", "none"])
    config = dpo_stage.dpo_config(args, "fp32")
    assert config.deepspeed == "config.json" and config.hf_deepspeed_config.config["zero_optimization"]["stage"] == 2
    assert config.gradient_checkpointing and config.gradient_checkpointing_kwargs == {"use_reentrant": False}
    sft = train_lora.training_arguments(args, "fp32")
    assert sft.gradient_checkpointing_kwargs == config.gradient_checkpointing_kwargs and sft.deepspeed == config.deepspeed


def test_dpo_without_an_adapter_or_with_an_empty_export_is_one_error(tmp_path, capsys):
    assert train_lora.main(["--dpo", str(tmp_path)]) == 1
    assert "--dpo needs --adapter" in capsys.readouterr().err
