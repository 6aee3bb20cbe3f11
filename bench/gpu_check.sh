#!/usr/bin/env bash
# What only a GPU can show, as one short script for a lent device (one GPU, a 600 s command window):
#   0. the memory estimates of both training lines (memory.py), printed first: no GPU needed;
#   1. LoRA training tokens/s of the Llama-3.1-8B architecture (random weights from the shipped config;
#      throughput does not depend on weight values), ~3k tokens per example, without gradient checkpointing
#      at micro-batch 1 (~49 GiB estimated; batch 4 would need ~165 GiB) and with it at micro-batch 4, each
#      with its peak GPU memory next to the estimate (issue 3 target: >= 12k tokens/s on an H200);
#   2. batched vs one-at-a-time generation for the same architecture (issue 4).
# Needs only torch + transformers + peft (what a bare GPU box has). Every number goes to $OUT (default
# bench-out/) with the GPU name: gpu.txt, one file per step, and gpu_check.json gathering them all.
# Step timeouts add up to 515 s, under the 540 s this script may take of the window.
#   usage: bash bench/gpu_check.sh          # on the GPU machine
#          bash bench/gpu_check.sh --dry    # argument parsing + the estimates only, no GPU step (tests)
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
for arg in "$@"; do
  case $arg in
    --dry) DRY=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "Error: unknown argument $arg (bash bench/gpu_check.sh [--dry])" >&2; exit 1 ;;
  esac
done

# ---- defaults: the workload and each step's time limit (seconds) --------------------------------------
ARCH=llama3.1-8b
SEQ_LEN=3072                 # mean tokens per example (+-25 %), like the public dataset's ~3k
STEPS=3                      # timed optimizer steps per training line (after one warm-up step)
T_VERSIONS=15                # nvidia-smi + library versions
T_ESTIMATE=30                # both estimates (python, no torch)
T_NO_CKPT=150                # 8B build + warm-up + 3 steps of 8 x 3k tokens, no checkpointing
T_CKPT=140                   # the same with checkpointing at micro-batch 4
T_GENERATE=180               # 64 prompts x (3000 in / 500 out), batch 32, and 2 one at a time
TOTAL=$((T_VERSIONS + T_ESTIMATE + T_NO_CKPT + T_CKPT + T_GENERATE))
PY=${PYTHON:-python}
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

run() {  # name, timeout, command...: the output goes to $OUT/name.txt with the exit status
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "exit $?" >> "$OUT/$name.txt"
  tail -4 "$OUT/$name.txt"
}

TRAIN_NO_CKPT=(bench/train_throughput.py --arch "$ARCH" --random_init --seq_len "$SEQ_LEN" --steps "$STEPS"
               --only ours --batch_size 1)
TRAIN_CKPT=(bench/train_throughput.py --arch "$ARCH" --random_init --seq_len "$SEQ_LEN" --steps "$STEPS"
            --only ours --batch_size 4 --gradient_checkpointing)

echo "gpu_check: step limits add up to ${TOTAL}s; output in $OUT/"
if [ "$DRY" = 1 ]; then
  echo "name, driver_version, memory.total [MiB]" > "$OUT/gpu.txt"
  echo "none (dry run), -, -" >> "$OUT/gpu.txt"
else
  timeout "$T_VERSIONS" nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
  timeout "$T_VERSIONS" "$PY" -c "import torch, transformers, peft
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__,
      'peft', peft.__version__)" >> "$OUT/gpu.txt" 2>&1
fi
run estimate_no_ckpt "$T_ESTIMATE" "$PY" "${TRAIN_NO_CKPT[@]}" --estimate_only --json "$OUT/estimate_no_ckpt.json"
run estimate_ckpt "$T_ESTIMATE" "$PY" "${TRAIN_CKPT[@]}" --estimate_only --json "$OUT/estimate_ckpt.json"
if [ "$DRY" = 0 ]; then
  run train_no_ckpt "$T_NO_CKPT" "$PY" "${TRAIN_NO_CKPT[@]}" --json "$OUT/train_no_ckpt.json"
  run train_ckpt "$T_CKPT" "$PY" "${TRAIN_CKPT[@]}" --json "$OUT/train_ckpt.json"
  run generate "$T_GENERATE" "$PY" bench/eval_throughput.py --gpu --model "$ARCH" --n 64 --batch_size 32 --single_n 2
fi

# every number in one file, with the GPU name (stdlib only)
"$PY" - "$OUT" "$TOTAL" "$DRY" <<'EOF'
import json, sys
from pathlib import Path
out, total, dry = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
gpu = out.joinpath("gpu.txt").read_text().splitlines()
summary = {"gpu": gpu[1] if len(gpu) > 1 else None, "versions": gpu[2] if len(gpu) > 2 else None, "dry": dry,
           "step_limits_s": total}
for path in sorted(out.glob("*.json")):
    if path.name != "gpu_check.json":
        summary[path.stem] = json.loads(path.read_text())
if out.joinpath("generate.txt").exists():
    summary["generate"] = out.joinpath("generate.txt").read_text().splitlines()[-6:]
out.joinpath("gpu_check.json").write_text(json.dumps(summary, indent=2))
print(f"gpu_check: {out}/gpu_check.json ({summary['gpu']})")
EOF
cat "$OUT/gpu.txt"
