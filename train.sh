#!/usr/bin/env bash
# Launch lines for LoRA fine-tuning (issue 3). Pick one block; each works unchanged on 1 GPU.
#   bash train.sh llama | r1 | qwen | colab | multi | fsdp | cpu
# GPU extras first: pip install -r requirements-gpu.txt   (deepspeed, bitsandbytes)
# Gated Llama weights: accept the licence on the hub, then `huggingface-cli login`.
set -euo pipefail
cd "$(dirname "$0")"

DATASET=${DATASET:-FinGPT/fingpt-forecaster-dow30-202305-202405}   # or a data_pipeline.py output dir
REMOTE=${REMOTE:---from_remote}                                    # set REMOTE= for a local dataset dir
GPUS=${GPUS:-localhost:0}                                          # deepspeed --include, e.g. localhost:0,1
COMMON="--dataset $DATASET $REMOTE --max_length 4096 --batch_size 1 --gradient_accumulation_steps 16 \
  --learning_rate 5e-5 --num_epochs 5 --warmup_ratio 0.03 --scheduler constant --log_interval 10 \
  --evaluation_strategy steps --eval_steps 50 --save_steps 50 --eval_generate 32 --keep_best \
  --report_to tensorboard"

case "${1:-llama}" in
  llama)   # Llama-3.1-8B base, Llama-2 [INST] style (its chat header tokens are untrained)
    deepspeed --include "$GPUS" train_lora.py --run_name llama3.1-8b-forecaster \
      --base_model llama3.1-8b --ds_config config.json $COMMON ;;
  r1)      # DeepSeek-R1-Distill-Llama-8B: empty <think></think> block trained and prefilled
    deepspeed --include "$GPUS" train_lora.py --run_name r1-distill-llama-8b-forecaster \
      --base_model deepseek-r1-distill-llama-8b --ds_config config.json $COMMON ;;
  qwen)    # Qwen2.5-7B-Instruct, ChatML
    deepspeed --include "$GPUS" train_lora.py --run_name qwen2.5-7b-forecaster \
      --base_model qwen2.5-7b-instruct --ds_config config.json $COMMON ;;
  colab)   # one 16 GB T4: 4-bit QLoRA, fp16, gradient checkpointing, max_length 2048 (no DeepSpeed)
    python train_lora.py --run_name qwen2.5-7b-t4 --base_model "${MODEL:-qwen2.5-7b-instruct}" \
      --preset colab-t4 --dataset "$DATASET" $REMOTE --eval_generate 16 ;;
  multi)   # all local GPUs, DeepSpeed ZeRO-2 through accelerate (or: torchrun --nproc_per_node N train_lora.py ...)
    accelerate launch --use_deepspeed --deepspeed_config_file config.json --num_processes "${NGPU:-2}" \
      train_lora.py --run_name "${MODEL:-llama3.1-8b}-multi" --base_model "${MODEL:-llama3.1-8b}" $COMMON ;;
  fsdp)    # FSDP instead of DeepSpeed (no deepspeed install needed)
    accelerate launch --use_fsdp --fsdp_sharding_strategy FULL_SHARD --num_processes "${NGPU:-2}" \
      train_lora.py --run_name "${MODEL:-llama3.1-8b}-fsdp" --base_model "${MODEL:-llama3.1-8b}" $COMMON ;;
  cpu)     # the embedded model on a CPU (demo scale)
    python train_lora.py --run_name smollm2-demo --base_model smollm2-135m --dataset "${DATASET_DIR:-data/sample-demo}" \
      --preset cpu --max_steps "${STEPS:-30}" --output_dir runs/demo-adapter ;;
  *) echo "Error: unknown choice '$1' (llama | r1 | qwen | colab | multi | fsdp | cpu)" >&2; exit 1 ;;
esac
