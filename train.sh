#!/usr/bin/env bash
# Launch lines for LoRA fine-tuning: the file you run on a GPU box. Pick one block:
#   bash train.sh llama | r1 | qwen | multi | torchrun | colab | int8 | dpo | fsdp | cpu
# GPU extras first, after torch: pip install --no-build-isolation -r requirements-gpu.txt   (deepspeed, bitsandbytes)
# Gated Llama weights: accept the licence on the hub, then `hf auth login`.
#
# Environment overrides (`make test` runs every block through them, at toy scale, on a CPU):
#   NGPU=N         ranks: deepspeed --num_gpus N (default 1), accelerate / torchrun processes (default 2)
#   MODEL=NAME     base model instead of the block's (registry name, hub id or local folder)
#   PROMPT_STYLE=S prompt style instead of the block's (llama2, deepseek-r1, chatml, ...)
#   DATASET=PATH   a data_pipeline.py output dir (then no --from_remote) instead of the public hub dataset
#   REMOTE=        force (--from_remote) or drop (empty) the hub download of DATASET
#   STEPS=N        stop after N optimizer steps, evaluating and saving at step N
#   TOY=1          toy scale: --max_length 768, no gradient accumulation, eval on 2 examples x 16 new tokens,
#                  OMP_NUM_THREADS=1 per rank unless set
#   OUT=DIR        output folder (default runs/<run name>)
#   PORT=N         rendezvous port of the launchers (default 29500)
#   EXTRA_ARGS=".." appended last, so any train_lora.py flag there wins over the block's
#   ADAPTER=DIR PAIRS=DIR  the `dpo` block: the SFT adapter and the `hitl.py export` folder
# e.g.  NGPU=2 STEPS=2 TOY=1 MODEL=smollm2-135m DATASET=data/sample-demo bash train.sh llama
set -euo pipefail
{ # one compound command: bash reads it whole before running, so editing train.sh during a run is safe
cd "$(dirname "$0")"

CHOICE=${1:-llama}
DATASET=${DATASET:-FinGPT/fingpt-forecaster-dow30-202305-202405}   # or a data_pipeline.py output dir
if [ -e "$DATASET" ]; then REMOTE=${REMOTE-}; else REMOTE=${REMOTE---from_remote}; fi
PORT=${PORT:-29500}
PYTHON=${PYTHON:-python}
# upstream's recipe (FinGPT-Forecaster train.sh), for the 8B-class models
LONG="--max_length 4096 --batch_size 1 --gradient_accumulation_steps 16 --learning_rate 5e-5 --num_epochs 5 \
  --warmup_ratio 0.03 --scheduler constant --log_interval 10 --evaluation_strategy steps --eval_steps 50 \
  --save_steps 50 --eval_generate 32 --keep_best --report_to tensorboard"
# what every block ends with: data, then the overrides (later flags win)
TAIL="--dataset $DATASET $REMOTE"
[ -n "${STEPS:-}" ] && TAIL="$TAIL --max_steps $STEPS --eval_steps $STEPS --save_steps $STEPS"
if [ "${TOY:-0}" = 1 ]; then   # one thread per rank: ranks x threads must not oversubscribe a small CPU
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  TAIL="$TAIL --max_length 768 --gradient_accumulation_steps 1 --log_interval 1 --eval_examples 2 \
    --eval_generate 2 --eval_max_new_tokens 16"
fi
[ -n "${OUT:-}" ] && TAIL="$TAIL --output_dir $OUT"
TAIL="$TAIL ${EXTRA_ARGS:-}"

model() { MODEL=${MODEL:-$1}; STYLE=${PROMPT_STYLE:-$2}; NAME="$MODEL-$CHOICE"; NAME=${NAME//\//-}; }
deepspeed_run() {   # one node, NGPU ranks, ZeRO-2 from config.json (deepspeed appends --local_rank=N)
  deepspeed --num_gpus "${NGPU:-1}" --master_port "$PORT" train_lora.py --run_name "$NAME" \
    --base_model "$MODEL" --prompt_style "$STYLE" --ds_config config.json "$@"
}

case "$CHOICE" in
  llama)    # Llama-3.1-8B base, Llama-2 [INST] style (its chat header tokens are untrained)
    model llama3.1-8b llama2
    deepspeed_run $LONG $TAIL ;;
  r1)       # DeepSeek-R1-Distill-Llama-8B: empty <think></think> block trained and prefilled
    model deepseek-r1-distill-llama-8b deepseek-r1
    deepspeed_run $LONG $TAIL ;;
  qwen)     # Qwen2.5-7B-Instruct, ChatML
    model qwen2.5-7b-instruct chatml
    deepspeed_run $LONG $TAIL ;;
  multi)    # all local GPUs, DeepSpeed ZeRO-2 through accelerate
    model llama3.1-8b llama2
    accelerate launch --use_deepspeed --deepspeed_config_file config.json --num_processes "${NGPU:-2}" \
      --main_process_port "$PORT" train_lora.py --run_name "$NAME" --base_model "$MODEL" \
      --prompt_style "$STYLE" $LONG $TAIL ;;
  torchrun) # plain DDP, one process per GPU (NCCL; gloo on a CPU), no DeepSpeed install needed
    model llama3.1-8b llama2
    torchrun --nproc_per_node "${NGPU:-2}" --master_port "$PORT" train_lora.py --run_name "$NAME" \
      --base_model "$MODEL" --prompt_style "$STYLE" $LONG $TAIL ;;
  colab)    # one 16 GB T4: 4-bit nf4 QLoRA, fp16, gradient checkpointing, max_length 2048 (no DeepSpeed)
    model qwen2.5-7b-instruct chatml
    $PYTHON train_lora.py --run_name "$NAME" --base_model "$MODEL" --prompt_style "$STYLE" \
      --preset colab-t4 --eval_generate 16 $TAIL ;;
  int8)     # upstream's and the assignment's setting: 8-bit base (bitsandbytes Linear8bitLt) + LoRA, one GPU
    model llama3.1-8b llama2
    $PYTHON train_lora.py --run_name "$NAME" --base_model "$MODEL" --prompt_style "$STYLE" --load_in_8bit \
      $LONG $TAIL ;;
  dpo)      # DPO on reviewed preference pairs (hitl.py export) from an SFT adapter, DeepSpeed ZeRO-2
    [ -n "${ADAPTER:-}" ] && [ -n "${PAIRS:-}" ] || {
      echo "Error: the dpo block needs ADAPTER=<SFT adapter dir> and PAIRS=<hitl.py export dir>" >&2; exit 1; }
    NAME=$(basename "$ADAPTER")-dpo
    deepspeed --num_gpus "${NGPU:-1}" --master_port "$PORT" train_lora.py --run_name "$NAME" \
      --dpo "$PAIRS" --adapter "$ADAPTER" --ds_config config.json --batch_size 1 \
      --gradient_accumulation_steps 8 --learning_rate 5e-6 --num_epochs 1 --log_interval 1 \
      --report_to tensorboard $TAIL ;;
  fsdp)     # FSDP instead of DeepSpeed: CUDA GPUs only (on a CPU train_lora.py stops with an error)
    model llama3.1-8b llama2
    accelerate launch --use_fsdp --fsdp_sharding_strategy FULL_SHARD --num_processes "${NGPU:-2}" \
      --main_process_port "$PORT" train_lora.py --run_name "$NAME" --base_model "$MODEL" \
      --prompt_style "$STYLE" $LONG $TAIL ;;
  cpu)      # the embedded model on a CPU (demo scale)
    $PYTHON train_lora.py --run_name smollm2-demo --base_model smollm2-135m --dataset "${DATASET_DIR:-data/sample-demo}" \
      --preset cpu --max_steps "${STEPS:-30}" --output_dir "${OUT:-runs/demo-adapter}" ${EXTRA_ARGS:-} ;;
  *) echo "Error: unknown choice '$CHOICE' (llama | r1 | qwen | multi | torchrun | colab | int8 | dpo | fsdp | cpu)" >&2
     exit 1 ;;
esac
exit
}
