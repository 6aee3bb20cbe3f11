#!/usr/bin/env bash
# What only a GPU can show, as one short script for the device tool (one H200, ~15 min of device time):
#   1. LoRA training tokens/s of the Llama-3.1-8B architecture (random weights from the shipped config;
#      throughput does not depend on weight values), ~3k tokens per example, without and with
#      gradient checkpointing (issue 3 target: >= 12k tokens/s without checkpointing on an H200);
#   2. batched vs one-at-a-time generation for the same architecture (issue 4).
# Needs only torch + transformers + peft (preinstalled there). Results go to $OUT (or bench-out/);
# copy the numbers into BENCHMARKS.md with the date and `nvidia-smi` line.
#   usage (device tool): bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import torch, transformers, peft; print(torch.__version__, torch.version.cuda, transformers.__version__, peft.__version__)" \
  >> "$OUT/gpu.txt" 2>&1
run() {  # name, timeout, command...
  local name=$1 limit=$2; shift 2
  echo "== $name"; timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; echo "exit $?" >> "$OUT/$name.txt"
  tail -6 "$OUT/$name.txt"
}
run train_no_ckpt 200 python bench/train_throughput.py --arch llama3.1-8b --random_init --seq_len 3072 \
  --steps 3 --only ours --json "$OUT/train_no_ckpt.json"
run train_ckpt 200 python bench/train_throughput.py --arch llama3.1-8b --random_init --seq_len 3072 \
  --steps 3 --only ours --gradient_checkpointing --json "$OUT/train_ckpt.json"
run generate 240 python bench/eval_throughput.py --gpu --n 64 --batch_size 32 --single_n 2
cat "$OUT/gpu.txt"
