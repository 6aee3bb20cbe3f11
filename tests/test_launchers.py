"""Every train.sh block through its real launcher, on the CPU, at toy scale.

The same train.sh users run on a GPU box, pointed at the embedded model and a small sample dataset by
its environment overrides (STEPS=2, TOY=1, MODEL, DATASET, NGPU, OUT, EXTRA_ARGS). DeepSpeed (ZeRO-2 on
its CPU accelerator), accelerate, torchrun (DDP over gloo) and bitsandbytes (nf4 / int8 on CPU) really
run; each test asserts from timing.json the engine that ran, from trainer_state.json the steps, and a
finite loss. FSDP cannot run on a CPU: the test asserts the one clear error instead of a quiet DDP run.

Per-block wall, CPU and user times are printed at the end (pytest -s) and written to $LAUNCHER_TIMES if set.
"""
import json
import math
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent        # deepspeed / accelerate / torchrun / python of this venv
TOY = {"STEPS": "2", "TOY": "1", "MODEL": "smollm2-135m"}
TIMES = {}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def report_times():
    yield
    if not TIMES:
        return
    total = {k: round(sum(t[k] for t in TIMES.values()), 1) for k in ("wall_s", "cpu_s", "user_s")}
    print("\nlauncher blocks: wall s, CPU s (user + system) and user s of all its processes")
    for block, t in list(TIMES.items()) + [("total", total)]:
        print(f"  {block:10s} {t['wall_s']:7.1f} {t['cpu_s']:7.1f} {t['user_s']:7.1f}")
    if os.environ.get("LAUNCHER_TIMES"):
        Path(os.environ["LAUNCHER_TIMES"]).write_text(json.dumps({"blocks": TIMES, "total": total}, indent=2))


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory, embedded_model_dir):
    """The offline sample dataset at toy size: 2 tickers, half a year, 1 past week of 2 news items."""
    out = tmp_path_factory.mktemp("launchers") / "sample-toy"
    subprocess.run([sys.executable, "data_pipeline.py", "--source", "sample", "--teacher", "offline",
                    "--out", str(out), "--tickers", "AAPL,MSFT", "--start", "2012-06-03", "--end", "2012-12-30",
                    "--min_past_weeks", "1", "--max_past_weeks", "1", "--max_news_per_week", "2"],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    return out


def train_sh(block, out, dataset, label=None, **overrides):
    """Run `bash train.sh BLOCK` as a user would, with toy-scale overrides; record wall and CPU time."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PORT=str(free_port()), DATASET=str(dataset), OUT=str(out), **TOY)
    env.update(overrides)
    return timed(label or block, ["bash", str(ROOT / "train.sh"), block], env)


def timed(label, command, env):
    """Run a command from the repo root; record its wall time and the CPU time of all its processes."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    TIMES[label] = {"wall_s": round(time.time() - started, 1), "cpu_s": round(user + system, 1),
                    "user_s": round(user, 1)}
    return proc


def check_trained(proc, out, steps=2):
    """Exit 0, the steps in trainer_state.json, a finite loss; returns timing.json's engine record."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    state = json.loads((out / "trainer_state.json").read_text())
    timing = json.loads((out / "timing.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert state["global_step"] == steps == timing["global_step"]
    assert losses and all(math.isfinite(x) for x in losses) and math.isfinite(timing["training_loss"])
    assert (out / "adapter_model.safetensors").is_file()
    return timing["engine"]


def style_of(out):
    return json.loads((out / "prompt_style.json").read_text())["name"]


@pytest.fixture(scope="module")
def llama_run(toy_dataset, tmp_path_factory):
    """`bash train.sh llama` with NGPU=2: the deepspeed launcher, 2 ranks, ZeRO-2, and --merge."""
    out = tmp_path_factory.mktemp("llama") / "adapter"
    proc = train_sh("llama", out, toy_dataset, label="llama x2", NGPU="2", EXTRA_ARGS="--merge")
    return proc, out


# ---------------------------------------------------------------------------------------------
# deepspeed: llama (2 ranks), r1, qwen (1 rank each), each in its own prompt style
# ---------------------------------------------------------------------------------------------
def test_llama_block_trains_under_deepspeed_zero2_on_two_ranks_and_merges(llama_run):
    proc, out = llama_run
    engine = check_trained(proc, out)
    assert engine["is_deepspeed_enabled"] and not engine["is_fsdp_enabled"]
    assert engine["distributed_type"] == "DEEPSPEED" and engine["world_size"] == 2
    assert engine["deepspeed_zero_stage"] == 2 and engine["quantization"] is None
    assert style_of(out) == "llama2"
    assert (out / "merged" / "config.json").is_file() and style_of(out / "merged") == "llama2"
    assert proc.stdout.count("adapter written to") == 1          # one summary: rank 0's


@pytest.fixture(scope="module")
def qwen_run(toy_dataset, tmp_path_factory):
    """`bash train.sh qwen`: the deepspeed launcher, 1 rank; its adapter is also run through inference.py."""
    out = tmp_path_factory.mktemp("qwen") / "adapter"
    return train_sh("qwen", out, toy_dataset), out


def test_r1_block_trains_under_deepspeed_on_one_rank_in_its_own_prompt_style(toy_dataset, tmp_path):
    out = tmp_path / "adapter"
    engine = check_trained(train_sh("r1", out, toy_dataset), out)
    assert engine["is_deepspeed_enabled"] and engine["distributed_type"] == "DEEPSPEED"
    assert engine["world_size"] == 1 and engine["deepspeed_zero_stage"] == 2
    assert style_of(out) == "deepseek-r1"


def test_qwen_block_trains_under_deepspeed_on_one_rank_in_its_own_prompt_style(qwen_run):
    proc, out = qwen_run
    engine = check_trained(proc, out)
    assert engine["is_deepspeed_enabled"] and engine["distributed_type"] == "DEEPSPEED"
    assert engine["world_size"] == 1 and engine["deepspeed_zero_stage"] == 2
    assert style_of(out) == "chatml"


# ---------------------------------------------------------------------------------------------
# accelerate + DeepSpeed plugin, torchrun (DDP)
# ---------------------------------------------------------------------------------------------
def test_multi_block_trains_through_accelerate_launch_with_the_deepspeed_plugin_on_two_processes(
        toy_dataset, tmp_path):
    out = tmp_path / "adapter"
    engine = check_trained(train_sh("multi", out, toy_dataset, NGPU="2"), out)
    assert engine["is_deepspeed_enabled"] and engine["distributed_type"] == "DEEPSPEED"
    assert engine["world_size"] == 2 and engine["deepspeed_zero_stage"] == 2


def test_torchrun_block_trains_plain_ddp_on_two_processes(toy_dataset, tmp_path):
    out = tmp_path / "adapter"
    engine = check_trained(train_sh("torchrun", out, toy_dataset, NGPU="2"), out)
    assert not engine["is_deepspeed_enabled"] and not engine["is_fsdp_enabled"]
    assert engine["distributed_type"] == "MULTI_CPU" and engine["world_size"] == 2   # MULTI_GPU on GPUs


# ---------------------------------------------------------------------------------------------
# bitsandbytes: the colab block (4-bit nf4) and the 8-bit line
# ---------------------------------------------------------------------------------------------
def test_colab_block_trains_real_4bit_nf4_layers(toy_dataset, tmp_path):
    out = tmp_path / "adapter"
    engine = check_trained(train_sh("colab", out, toy_dataset), out)
    quant = engine["quantization"]
    assert quant["method"] == "bitsandbytes" and quant["bits"] == 4 and quant["quant_type"] == "nf4"
    assert quant["layers"].get("Linear4bit", 0) >= 7 * 30          # every targeted projection of 30 layers
    # the preset asks for fp16 (a T4 has no bf16); on a CPU the 4-bit layers compute in bf16 instead
    assert json.loads((out / "args.json").read_text())["args"]["dtype"] == "fp16"
    assert quant["compute_dtype"] == "bfloat16"
    assert not engine["is_deepspeed_enabled"] and engine["world_size"] == 1


def test_int8_block_trains_real_linear8bitlt_layers(toy_dataset, tmp_path):
    out = tmp_path / "adapter"
    engine = check_trained(train_sh("int8", out, toy_dataset), out)
    quant = engine["quantization"]
    assert quant["bits"] == 8 and quant["layers"].get("Linear8bitLt", 0) >= 7 * 30


# ---------------------------------------------------------------------------------------------
# DPO under deepspeed, FSDP's refusal on CPU, and the trained adapter in inference.py
# ---------------------------------------------------------------------------------------------
def dpo_pairs(dataset, path, style_name, n=4):
    """Preference pairs in the adapter's style: the reference answer chosen, its opposite rejected."""
    from datasets import load_from_disk
    from prompt import get_style, split_public_prompt
    style = get_style(style_name)
    rows = load_from_disk(str(dataset))["validation"].to_list()[:n]
    with open(path, "w") as f:
        for row in rows:
            system, user = split_public_prompt(row["prompt"])
            flipped = row["answer"].replace("Up by", "DOWN_BY").replace("Down by", "Up by").replace("DOWN_BY", "Down by")
            f.write(json.dumps({"prompt": style.format_prompt(system, user), "chosen": style.format_answer(
                row["answer"]), "rejected": style.format_answer(flipped)}) + "\n")
    return path


def test_dpo_block_runs_one_step_under_deepspeed_from_the_sft_adapter(llama_run, toy_dataset, tmp_path):
    _, sft = llama_run
    pairs = dpo_pairs(toy_dataset, tmp_path / "pairs.jsonl", style_of(sft))
    out = tmp_path / "dpo"
    engine = check_trained(train_sh("dpo", out, toy_dataset, STEPS="1", ADAPTER=str(sft), PAIRS=str(pairs)),
                           out, steps=1)
    assert engine["is_deepspeed_enabled"] and engine["distributed_type"] == "DEEPSPEED"
    assert json.loads((out / "args.json").read_text())["stage"] == "dpo" and style_of(out) == "llama2"


def test_fsdp_block_on_a_cpu_stops_with_one_clear_error_instead_of_training_ddp(toy_dataset, tmp_path):
    out = tmp_path / "adapter"
    proc = train_sh("fsdp", out, toy_dataset, NGPU="2")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert errors and all("FSDP" in e and "needs CUDA GPUs" in e for e in errors)
    assert not (out / "timing.json").exists() and not (out / "adapter_model.safetensors").exists()


def test_the_launcher_trained_adapter_loads_in_inference_and_generates(qwen_run, toy_dataset, tmp_path):
    # the qwen block's adapter: chatml is the embedded model's own template, so 2 toy steps still give text
    # (the llama2-style toy adapter may answer with EOS at once); the llama run's merged/ is checked above
    _, adapter = qwen_run
    run = tmp_path / "run"
    proc = timed("inference", [sys.executable, "inference.py", "--adapter", str(adapter), "--dataset",
                               str(toy_dataset), "--split", "test", "--limit", "2", "--max_new_tokens", "16",
                               "--out", str(run)], dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["output_tokens"] > 0 and r["output"].strip() for r in rows)
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["prompt_style"] == "chatml" and Path(manifest["adapter"]) == adapter.resolve()
