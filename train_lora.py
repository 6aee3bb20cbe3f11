"""Dataset + base model -> LoRA adapter dir (transformers Trainer + peft; DeepSpeed/accelerate ready).

    python train_lora.py --base_model smollm2-135m --dataset data/sample-demo --max_length 1024 \
        --max_steps 30 --output_dir runs/demo-adapter                       # CPU, embedded model
    deepspeed --include localhost:0 train_lora.py --base_model llama3.1-8b \
        --dataset FinGPT/fingpt-forecaster-dow30-202305-202405 --from_remote --ds_config config.json

Supervision is right by construction: the prompt and the answer are tokenized separately and
concatenated, so labels are -100 on exactly the prompt (and, in batches, padding) positions, chosen by
position: the final EOS stays supervised even when pad == EOS. Over-long examples are trimmed (oldest
news weeks first) or dropped, never silently: a supervision audit is printed and saved first.
Evaluation uses the validation split only; the test split is never read.

Outputs in --output_dir: the adapter (base_model_name_or_path = registry name or hub id), tokenizer,
prompt_style.json, args.json, audit.json, environment.json, timing.json, trainer_state.json,
checkpoints (resume with --resume_from_checkpoint last), and merged/ with --merge.
Stages are functions (prepare_data -> build_model -> build_trainer -> train -> save_outputs) so a
data-mixing step (human corrections) and a DPO stage can slot in after prepare_data / train.
"""
import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import tracking
from dpo_stage import run_dpo
from errors import ForecasterError, check_args, cli
from generation import HFGenerator
from memory import PRESETS, TARGET_MODELS, estimate_memory, format_estimate, format_preset_table, preset_table
from models import (MODELS, ModelError, default_dtype, environment_info, load_model, load_tokenizer, process_rank,
                    resolve_model, training_engine)
from prompt import PROMPT_STYLES, get_style
from supervision import (MIN_ANSWER_TOKENS, OVERLONG, PaddingCollator, build_supervision, format_audit,
                         prepare_data, row_parts)
from utils import score_pair, summarize_pairs

# ---------------------------------------------------------------------------------------------
# Defaults (flags mirror these one to one)
# ---------------------------------------------------------------------------------------------
RUN_NAME = "forecaster-lora"
BASE_MODEL = "smollm2-135m"            # embedded: runs offline on CPU; the three 8B-class models in README
DATASET = "data/sample-demo"           # `make demo` builds it; the public one: FinGPT/fingpt-forecaster-dow30-202305-202405
OUTPUT_DIR = None                      # None = runs/<run_name>
MAX_LENGTH = 4096                      # upstream; ~3k tokens per public example
BATCH_SIZE = 1                         # per device micro-batch (upstream)
GRADIENT_ACCUMULATION_STEPS = 16       # upstream: effective batch 16
LEARNING_RATE = 5e-5                   # upstream
NUM_EPOCHS = 5                         # upstream train.sh
MAX_STEPS = -1                         # >0 overrides epochs
WARMUP_RATIO = 0.03                    # fraction of total steps (transformers 5: warmup_steps as a float)
SCHEDULER = "constant"                 # with warmup -> constant_with_warmup (what upstream meant)
WEIGHT_DECAY = 0.0
LOG_INTERVAL = 10                      # optimizer steps between loss logs
EVALUATION_STRATEGY = "steps"
EVAL_STEPS = 50                        # optimizer steps
SAVE_STEPS = 50                        # optimizer steps; checkpoints make runs resumable
SAVE_TOTAL_LIMIT = 3
VALIDATION_WEEKS = 2                   # datasets without a validation split: hold out their last N train weeks
LORA_R = 8                             # upstream LoRA: r=8, alpha=16, dropout 0.1, all 7 projections
LORA_ALPHA = 16
LORA_DROPOUT = 0.1
DTYPE = None                           # None = bf16 on bf16 hardware, fp16 on older CUDA, fp32 otherwise
GROUP_BY_LENGTH = True                 # batches of similar length: padding waste <= 5 % at --batch_size > 1
EVAL_GENERATE = 0                      # validation prompts generated at each eval for accuracy/MSE (0 = off)
EVAL_MAX_NEW_TOKENS = 512
SEED = 42
EVAL_EXAMPLES = 0                      # 0 = the whole validation split
HITL_WEIGHT = 1                        # copies of each human correction in the training mix
DPO_BETA = 0.1                         # TRL's default
REPORT_TO = "auto"                     # auto = TensorBoard, plus W&B when WANDB_API_KEY is set (env or .env)
                                       # or WANDB_MODE=offline; never prompts (tracking.resolve_report_to)
WANDB_PROJECT = None                   # None = $WANDB_PROJECT, else tracking.PROJECT
WANDB_LOG_MODEL = False                # adapter folder as a W&B artifact at the end


def build_parser(suppress_defaults=False):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                argument_default=argparse.SUPPRESS if suppress_defaults else None)

    def add(flag, default, **kw):
        if suppress_defaults:
            kw.pop("default", None)
            p.add_argument(flag, **kw)
        else:
            p.add_argument(flag, default=default, **kw)

    def add_bool(flag, default, help):
        add(flag, default, action=argparse.BooleanOptionalAction, help=help)

    add("--run_name", RUN_NAME, help="name of the run (TensorBoard/W&B; default output dir runs/<run_name>)")
    add("--base_model", BASE_MODEL, help="registry name (smollm2-135m, llama3.1-8b, deepseek-r1-distill-llama-8b, "
        "qwen2.5-7b-instruct), hub id or local model folder")
    add("--prompt_style", None, choices=list(PROMPT_STYLES), help="override the model's prompt style")
    add("--dataset", DATASET, help="save_to_disk folder, .jsonl/.parquet file or folder, or hub id")
    add_bool("--from_remote", False, "load --dataset from the Hugging Face hub")
    add("--cache_dir", None, help="hub cache folder for models and datasets")
    add("--output_dir", OUTPUT_DIR, help="adapter folder (default runs/<run_name>)")
    add("--preset", None, choices=list(PRESETS), help="hardware preset; explicit flags still win")
    add("--max_length", MAX_LENGTH, type=int, help="tokens per example (prompt + answer)")
    add("--overlong", OVERLONG, choices=["trim", "drop"], help="examples over --max_length: trim the oldest "
        "news weeks of the prompt, or drop the example (upstream)")
    add("--batch_size", BATCH_SIZE, type=int, help="examples per device per micro-batch")
    add("--gradient_accumulation_steps", GRADIENT_ACCUMULATION_STEPS, type=int,
        help="micro-batches per optimizer step")
    add("--learning_rate", LEARNING_RATE, type=float, help="peak learning rate")
    add("--num_epochs", NUM_EPOCHS, type=float, help="passes over the training split")
    add("--max_steps", MAX_STEPS, type=int, help="optimizer steps; > 0 overrides --num_epochs")
    add("--warmup_ratio", WARMUP_RATIO, type=float, help="warmup as a fraction of total optimizer steps [0, 1)")
    add("--scheduler", SCHEDULER, choices=["constant", "linear", "cosine"],
        help="learning-rate schedule after warmup")
    add("--weight_decay", WEIGHT_DECAY, type=float, help="AdamW weight decay")
    add("--log_interval", LOG_INTERVAL, type=int, help="optimizer steps between loss logs")
    add("--evaluation_strategy", EVALUATION_STRATEGY, choices=["steps", "epoch", "no"],
        help="when to evaluate on the validation split")
    add("--eval_steps", EVAL_STEPS, type=int, help="optimizer steps between evaluations")
    add("--save_steps", SAVE_STEPS, type=int, help="optimizer steps between checkpoints")
    add("--save_total_limit", SAVE_TOTAL_LIMIT, type=int, help="checkpoints kept (the best one is kept too)")
    add("--validation_weeks", VALIDATION_WEEKS, type=int,
        help="weeks held out from the end of train when the dataset has no validation split (0 = no eval)")
    add("--lora_r", LORA_R, type=int, help="LoRA rank")
    add("--lora_alpha", LORA_ALPHA, type=int, help="LoRA scaling alpha")
    add("--lora_dropout", LORA_DROPOUT, type=float, help="LoRA dropout probability")
    add("--target_modules", None, help="comma-separated module names (default: the model's 7 projections)")
    add("--dtype", DTYPE, choices=["bf16", "fp16", "fp32"], help="compute dtype (default: best for this hardware)")
    add_bool("--load_in_8bit", False, "load the base model in 8-bit (bitsandbytes, CUDA)")
    add_bool("--load_in_4bit", False, "load the base model in 4-bit nf4 (QLoRA; bitsandbytes, CUDA)")
    add_bool("--gradient_checkpointing", False, "recompute activations: less memory, ~30 %% slower")
    add_bool("--group_by_length", GROUP_BY_LENGTH, "batch examples of similar length (less padding)")
    add("--ds_config", None, help="DeepSpeed config JSON (e.g. config.json); needs deepspeed")
    add("--resume_from_checkpoint", None, help="checkpoint folder, or 'last' for the newest in --output_dir")
    add("--seed", SEED, type=int, help="seed for LoRA init and data order")
    add("--report_to", REPORT_TO, help="auto (TensorBoard, + W&B with WANDB_API_KEY or WANDB_MODE=offline), "
        "tensorboard, wandb, none, or a comma-separated list")
    add("--wandb_project", WANDB_PROJECT, help="W&B project (default $WANDB_PROJECT, else fingpt-forecaster)")
    add_bool("--wandb_log_model", WANDB_LOG_MODEL, "log the adapter folder to W&B as a model artifact")
    add("--eval_generate", EVAL_GENERATE, type=int,
        help="validation prompts generated at each eval to log binary accuracy / MSE / format failures")
    add("--eval_max_new_tokens", EVAL_MAX_NEW_TOKENS, type=int, help="tokens generated per eval prompt")
    add("--eval_examples", EVAL_EXAMPLES, type=int, help="validation examples used for eval loss (0 = all); "
        "an evenly spaced subset keeps CPU evaluations short")
    add("--hitl_data", None, help="human-in-the-loop export folder (hitl.py export --out DIR): its SFT "
        "corrections are mixed into the training split")
    add("--hitl_weight", HITL_WEIGHT, type=int, help="copies of each HITL correction in the training mix (upsampling)")
    add("--dpo", None, help="HITL export folder: run a DPO stage on its preference pairs instead of SFT "
        "(needs --adapter; the reference model is that adapter, frozen)")
    add("--adapter", None, help="with --dpo: the SFT adapter folder to start from")
    add("--dpo_beta", DPO_BETA, type=float, help="DPO KL strength (TRL beta)")
    add_bool("--keep_best", False, "load the best checkpoint at the end (by validation accuracy with "
             "--eval_generate, else validation loss)")
    add_bool("--merge", False, "also write a merged model to <output_dir>/merged")
    add_bool("--dry_run", False, "print configuration, supervision audit and memory estimate; no training")
    # The deepspeed launcher appends --local_rank=N to every rank's arguments. Accepted and ignored:
    # the LOCAL_RANK environment variable (set by deepspeed, torchrun and accelerate alike) rules.
    add("--local_rank", None, type=int, help=argparse.SUPPRESS)
    return p


def parse_args(argv=None):
    """Parsed args with the preset applied under explicitly given flags."""
    args = build_parser().parse_args(argv)
    del args.local_rank                         # LOCAL_RANK in the environment rules (see build_parser)
    explicit = set(vars(build_parser(suppress_defaults=True).parse_args(argv)))
    if args.preset:
        for key, value in PRESETS[args.preset].items():
            if key not in explicit:
                setattr(args, key, value)
    if args.output_dir is None:
        args.output_dir = str(Path("runs") / args.run_name)
    return args


class TrainError(ForecasterError, ValueError):
    """A training run that cannot start or go on as asked: one `Error:` line."""


def validate_args(args):
    """Every user mistake at once, before anything expensive."""
    problems = []
    positive = ("max_length", "batch_size", "gradient_accumulation_steps", "log_interval", "eval_steps",
                "save_steps", "lora_r", "lora_alpha")
    problems += [f"--{k} must be > 0 (got {getattr(args, k)})" for k in positive if getattr(args, k) <= 0]
    if not 0 <= args.warmup_ratio < 1:
        problems.append(f"--warmup_ratio must be in [0, 1) (got {args.warmup_ratio})")
    if not 0 <= args.lora_dropout < 1:
        problems.append(f"--lora_dropout must be in [0, 1) (got {args.lora_dropout})")
    if args.learning_rate <= 0:
        problems.append(f"--learning_rate must be > 0 (got {args.learning_rate})")
    if args.max_steps <= 0 and args.num_epochs <= 0:
        problems.append("set --num_epochs > 0 or --max_steps > 0")
    if args.load_in_8bit and args.load_in_4bit:
        problems.append("--load_in_8bit and --load_in_4bit exclude each other")
    if args.max_length <= MIN_ANSWER_TOKENS * 2:
        problems.append(f"--max_length {args.max_length} leaves no room for a prompt and an answer")
    if args.keep_best and args.evaluation_strategy == "no":
        problems.append("--keep_best needs evaluation (--evaluation_strategy steps|epoch)")
    if args.keep_best and args.evaluation_strategy == "steps" and args.save_steps % args.eval_steps:
        problems.append(f"--keep_best needs --save_steps ({args.save_steps}) to be a multiple of "
                        f"--eval_steps ({args.eval_steps})")
    reporters = [r.strip() for r in args.report_to.split(",") if r.strip()]
    unknown = [r for r in reporters if r not in ("auto", "tensorboard", "wandb", "none")]
    if unknown:
        problems.append(f"--report_to: unknown {', '.join(unknown)} (auto, tensorboard, wandb, none)")
    if args.wandb_log_model and "wandb" not in tracking.reporters(tracking.resolve_report_to(args.report_to)[0]):
        problems.append("--wandb_log_model needs W&B logging: WANDB_API_KEY (environment or .env) or "
                        "WANDB_MODE=offline, and --report_to auto or wandb")
    import importlib.util
    if not args.dry_run:
        if "wandb" in reporters:                # never a login prompt: a key or WANDB_MODE=offline, else Error
            problems += tracking.wandb_problems("--report_to wandb")
        if "tensorboard" in reporters and importlib.util.find_spec("tensorboard") is None \
                and importlib.util.find_spec("tensorboardX") is None:
            problems.append("--report_to tensorboard needs `pip install tensorboard`")
        if args.ds_config and importlib.util.find_spec("deepspeed") is None:
            problems.append("--ds_config needs deepspeed: pip install --no-build-isolation -r requirements-gpu.txt "
                            "(after torch)")
        if (args.load_in_8bit or args.load_in_4bit) and importlib.util.find_spec("bitsandbytes") is None:
            problems.append("--load_in_8bit/--load_in_4bit need bitsandbytes: pip install bitsandbytes "
                            "(it runs on CUDA and, slower, on CPU)")
        if args.resume_from_checkpoint and args.resume_from_checkpoint != "last" \
                and not Path(args.resume_from_checkpoint).is_dir():
            problems.append(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no such folder")
    if args.eval_examples < 0:
        problems.append(f"--eval_examples must be >= 0 (got {args.eval_examples})")
    if args.hitl_weight < 1:
        problems.append(f"--hitl_weight must be >= 1 (got {args.hitl_weight})")
    if args.hitl_data and not Path(args.hitl_data).is_dir():
        problems.append(f"--hitl_data {args.hitl_data}: no such folder (hitl.py export --out DIR)")
    if args.dpo and not args.adapter:
        problems.append("--dpo needs --adapter SFT_DIR (the adapter to improve; it is also the DPO reference)")
    if args.adapter and not args.dpo:
        problems.append("--adapter is only used with --dpo")
    if args.dpo and args.hitl_data:
        problems.append("--dpo and --hitl_data are separate stages: run the SFT with --hitl_data first")
    if args.ds_config and not Path(args.ds_config).is_file():
        problems.append(f"--ds_config {args.ds_config}: no such file (the repo ships config.json)")
    if fsdp_requested():
        import torch
        if not torch.cuda.is_available():
            # accelerate turns FSDP on only for GPU states: on a CPU it would quietly train plain DDP
            problems.append("FSDP (accelerate launch --use_fsdp) needs CUDA GPUs; this machine has none. On CPU "
                            "use the DeepSpeed blocks (bash train.sh llama) or torchrun (bash train.sh torchrun)")
        if args.ds_config:
            problems.append("--ds_config and FSDP (accelerate launch --use_fsdp) exclude each other; pick one")
    return problems


def fsdp_requested():
    """True when launched by `accelerate launch --use_fsdp` (it tells the ranks through the environment)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


# ---------------------------------------------------------------------------------------------
# Model, trainer, callbacks
# ---------------------------------------------------------------------------------------------
def build_model(args, spec):
    """Base model + LoRA (peft). Adapter config records the registry name / hub id as the base."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed
    model, tokenizer, spec = load_model(args.base_model, dtype=args.dtype, load_in_8bit=args.load_in_8bit,
                                        load_in_4bit=args.load_in_4bit, cache_dir=args.cache_dir,
                                        prompt_style=args.prompt_style)
    if args.load_in_8bit or args.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    model.config.use_cache = False              # no KV cache while training (and required with checkpointing)
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=list(target_modules(args, spec)), bias="none", task_type="CAUSAL_LM")
    set_seed(args.seed)                         # LoRA A is drawn here, before the Trainer seeds: --seed covers it
    model = get_peft_model(model, lora)
    model.peft_config["default"].base_model_name_or_path = spec.name if spec.name in MODELS else spec.hub_id
    return model, tokenizer, spec


def target_modules(args, spec):
    if args.target_modules:
        return tuple(t.strip() for t in args.target_modules.split(",") if t.strip())
    return tuple(spec.lora_targets)


class GenerationEvalCallback:
    """At each evaluation, generate answers for N validation rows with generation.HFGenerator (the generator,
    prompt trimming, stop rule and greedy settings inference.py uses, so the same checkpoint gives the same
    texts there) and log binary accuracy, MSE and format-failure rate (utils.calc_metrics) as eval_* metrics,
    so --keep_best can select the checkpoint by validation accuracy. Never sees the test split.
    Each evaluation's generations (id, prompt excerpt, output, parsed direction, truth) are kept in
    `last_generations` (the W&B table) and saved to <output_dir>/eval_generations/step-N.jsonl."""

    def __init__(self, tokenizer, style, rows, max_new_tokens=EVAL_MAX_NEW_TOKENS, batch_size=8):
        self.tokenizer, self.style = tokenizer, get_style(style)
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.rows = rows
        self.references = [r["answer"] for r in rows]
        self.labels = [r["label"] for r in rows]
        self.ids = [r.get("id") for r in rows]
        self.excerpts = [tracking.prompt_excerpt(row_parts(r)[1]) for r in rows]
        self.trainer = None                     # set after the Trainer is built, to log through it
        self.history = []
        self.last_generations = []

    def generate(self, model):
        """One answer per row, in row order (batched as inference.py --batch_size batch_size batches them)."""
        generator = HFGenerator(model, self.tokenizer, self.style, self.max_new_tokens, p_up=False)
        return [result[0] for result in generator.generate_all(self.rows, self.batch_size)]

    def task_metrics(self, model):
        answers = self.generate(model)
        pairs = [score_pair(a, g, label) for a, g, label in zip(answers, self.references, self.labels)]
        m = summarize_pairs(pairs)              # = utils.calc_metrics, keeping the per-answer records
        self.last_generations = [
            {"id": i, "prompt_excerpt": excerpt, "output": a, "direction": p["direction"], "label": label,
             "correct": p["correct"], "format_ok": p["format_ok"]}
            for i, excerpt, a, label, p in zip(self.ids, self.excerpts, answers, self.labels, pairs)]
        return {"eval_binary_accuracy": m["binary_accuracy"], "eval_mse": m.get("mse"),
                "eval_format_failure_rate": m["format_failures"] / max(1, m["n"]), "eval_generated": m["n"]}

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        extra = self.task_metrics(model)
        extra = {k: v for k, v in extra.items() if v is not None}
        if metrics is not None:
            metrics.update(extra)               # before Trainer picks the best checkpoint
        self.history.append(dict(extra, step=state.global_step))
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / "eval_generations"
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"step-{state.global_step}.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(dict(r, step=state.global_step)) + "\n" for r in self.last_generations)
        if self.trainer is not None:
            self.trainer.log(extra)             # TensorBoard / W&B
        return control


def scheduler_name(args):
    """Upstream's 'constant' with warmup meant constant after a linear warmup."""
    if args.scheduler == "constant" and args.warmup_ratio > 0:
        return "constant_with_warmup"
    return args.scheduler


def training_arguments(args, dtype):
    import torch
    from transformers import TrainingArguments
    cuda = torch.cuda.is_available()
    evaluate = args.evaluation_strategy != "no"
    reporters = tracking.reporters(tracking.resolve_report_to(args.report_to)[0]) or "none"
    best_metric = "binary_accuracy" if args.eval_generate > 0 else "loss"
    return TrainingArguments(
        output_dir=args.output_dir, run_name=args.run_name, seed=args.seed, data_seed=args.seed,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        num_train_epochs=args.num_epochs, max_steps=args.max_steps, weight_decay=args.weight_decay,
        warmup_steps=float(args.warmup_ratio) if args.warmup_ratio > 0 else 0,
        lr_scheduler_type=scheduler_name(args),
        logging_steps=args.log_interval, logging_first_step=True,
        eval_strategy=args.evaluation_strategy, eval_steps=args.eval_steps if evaluate else None,
        save_strategy=args.evaluation_strategy if args.keep_best else "steps", save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        load_best_model_at_end=args.keep_best, metric_for_best_model=best_metric if args.keep_best else None,
        greater_is_better=(best_metric != "loss") if args.keep_best else None,
        # use_cpu: without CUDA the Trainer (and DeepSpeed under it) must be told it runs on the CPU, else
        # DeepSpeed stops with "Your setup doesn't support bf16/gpu"; launchers still give it several ranks
        use_cpu=not cuda, bf16=cuda and dtype == "bf16", fp16=cuda and dtype == "fp16",
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
        train_sampling_strategy="group_by_length" if args.group_by_length and args.batch_size > 1 else "random",
        length_column_name="length", remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding", deepspeed=args.ds_config, report_to=reporters,
        dataloader_num_workers=0, optim="adamw_torch")


def build_trainer(args, model, tokenizer, style, train_feats, val_feats, val_rows, dtype):
    from datasets import Dataset
    from transformers import Trainer
    keep = ["input_ids", "attention_mask", "labels", "length"]
    train_ds = Dataset.from_list([{k: f[k] for k in keep} for f in train_feats])
    eval_ds = Dataset.from_list([{k: f[k] for k in keep} for f in val_feats]) if val_feats else None
    callbacks = []
    generator = None
    if args.eval_generate > 0 and val_rows and args.evaluation_strategy != "no":
        generator = GenerationEvalCallback(tokenizer, style, val_rows[:args.eval_generate], args.eval_max_new_tokens,
                                           batch_size=eval_batch_size(args))
        callbacks.append(_as_trainer_callback(generator))
    callbacks += tracking.training_callbacks(args, generator)   # W&B: throughput, peak memory, generations table
    trainer = Trainer(model=model, args=training_arguments(args, dtype), train_dataset=train_ds,
                      eval_dataset=eval_ds, processing_class=tokenizer,
                      data_collator=PaddingCollator(tokenizer.pad_token_id,
                                                    pad_to_multiple_of=8 if args.batch_size > 1 else None),
                      callbacks=callbacks)
    if generator is not None:
        generator.trainer = trainer
    return trainer, generator


def eval_batch_size(args):
    """Prompts per generate call in the eval callback: 4 micro-batches (no gradients, so it fits)."""
    return max(1, args.batch_size * 4)


def _as_trainer_callback(obj):
    """A TrainerCallback delegating on_evaluate (keeps the generation logic a plain class)."""
    from transformers import TrainerCallback

    class _Delegate(TrainerCallback):
        def on_evaluate(self, *a, **kw):
            return obj.on_evaluate(*a, **kw)
    return _Delegate()


def peak_memory():
    import torch
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20     # KiB -> GiB on Linux
    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"host_peak_gib": round(host, 2), "gpu_peak_gib": round(gpu, 2) if gpu is not None else None}


def resolve_checkpoint(args):
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint != "last":
        return args.resume_from_checkpoint
    from transformers.trainer_utils import get_last_checkpoint
    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if last is None:
        raise TrainError(f"--resume_from_checkpoint last: no checkpoint-* folder in {args.output_dir}")
    return last


def save_json(path, data):
    Path(path).write_text(json.dumps(data, indent=2, default=str))


def save_audit(args, audit):
    """audit.json before training, so a run that crashes still shows what it trained on (rank 0 only)."""
    if process_rank() == 0:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        save_json(Path(args.output_dir) / "audit.json", audit)


def merge_adapter(args, out):
    """Base (full precision, not quantized) + adapter -> merged model in out/merged.
    Rank 0 only: the other ranks would load a second base model for nothing and write the same files."""
    from peft import PeftModel
    if process_rank() != 0:
        return None
    base, tokenizer, _ = load_model(args.base_model, dtype=args.dtype if args.dtype != "fp32" else None,
                                    cache_dir=args.cache_dir, prompt_style=args.prompt_style)
    merged = PeftModel.from_pretrained(base, out).merge_and_unload()
    target = Path(out) / "merged"
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
    get_style(json.loads((Path(out) / "prompt_style.json").read_text())["name"]).save(target) \
        if (Path(out) / "prompt_style.json").exists() else None
    return target


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def dry_run_tokenizer(spec, cache_dir):
    """The model's tokenizer if available offline, else the embedded one as a stand-in (one line)."""
    try:
        if not spec.is_embedded:
            from transformers import AutoTokenizer
            AutoTokenizer.from_pretrained(spec.hub_id, cache_dir=cache_dir, local_files_only=True)
        return load_tokenizer(spec, cache_dir), spec.name
    except (OSError, ModelError, ValueError):
        print(f"note: the {spec.hub_id} tokenizer is not available offline; auditing with the embedded "
              f"tokenizer and the {spec.prompt_style} template (token counts approximate)")
        return load_tokenizer("smollm2-135m", cache_dir), f"smollm2-135m (stand-in for {spec.hub_id})"


def save_outputs(args, trainer, tokenizer, style, spec, resolved, result, train_wall, generator):
    """Adapter, tokenizer and run files, written by rank 0 only (every rank would write the same paths)."""
    out = Path(args.output_dir)
    writer = process_rank() == 0
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        trainer.save_model(str(out))            # collective (ZeRO-3/FSDP gather shards); the Trainer writes on rank 0
    elif writer:
        trainer.save_model(str(out))            # adapter + tokenizer (processing_class)
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    timing = {"train_wall_s": round(train_wall, 1), "global_step": result.global_step,
              "train_tokens_seen": tokens, "train_tokens_per_s": tokens / train_wall if train_wall else 0.0,
              "training_loss": result.training_loss, "engine": training_engine(trainer)} | peak_memory()
    if generator is not None:
        timing["eval_generate_history"] = generator.history
    if writer:
        trainer.save_state()                    # trainer_state.json
        style.save(out)
        save_json(out / "args.json", resolved)
        save_json(out / "environment.json", environment_info())
        save_json(out / "timing.json", timing)
    return {"output_dir": str(out), "timing": timing}



def resolve(args, spec, style, dtype):
    """The run's resolved configuration (args.json), with the GPU memory estimate at --max_length (not at
    this dataset's longest example: a batch of the longest must fit, whatever the data)."""
    memory = None
    if spec.arch_config and "hidden_size" in spec.arch_config:
        memory = estimate_memory(spec.arch_config, dtype, args.lora_r, target_modules(args, spec),
                                 args.batch_size, args.max_length, args.gradient_checkpointing,
                                 args.load_in_8bit, args.load_in_4bit, args.lora_dropout)
    return {"args": vars(args), "model": spec.to_dict(), "dtype": dtype, "prompt_style": style.name,
            "scheduler": scheduler_name(args), "memory_estimate": memory}


def dry_run(args, spec, resolved):
    """--dry_run: print the resolved configuration, the memory estimate and the per-preset verdicts; train
    nothing. Returns the resolved configuration."""
    print("Resolved configuration:\n" + json.dumps({k: v for k, v in resolved.items() if k != "model"} |
                                                    {"model": {k: v for k, v in spec.to_dict().items()
                                                               if k != "arch_config"}}, indent=2, default=str))
    memory = resolved["memory_estimate"]
    if memory:
        print(f"GPU memory estimate for {spec.name} at {args.max_length} tokens x micro-batch {args.batch_size}: "
              + format_estimate(memory, getattr(args, "gpu_memory_gib", None)))
    targets = {k: MODELS[k] for k in TARGET_MODELS}
    print(f"Memory verdict per GPU preset (LoRA r={args.lora_r}; README 'Memory estimate'):\n"
          + format_preset_table(preset_table(PRESETS, targets, args.lora_r, lora_dropout=args.lora_dropout)))
    print("dry run: nothing trained")
    return resolved


def train(args, spec, style, dtype, train_feats, val_feats, val_rows, audit, resolved, started):
    """Build the model and Trainer, train, save; returns {"output_dir", "timing"[, "merged"]}."""
    out = Path(args.output_dir)
    save_audit(args, audit)
    tracking.start_training_run(args, resolved, audit)          # W&B run (if among --report_to), before the Trainer
    model, tokenizer, spec = build_model(args, spec)
    model.print_trainable_parameters()
    trainer, generator = build_trainer(args, model, tokenizer, style, train_feats, val_feats, val_rows, dtype)
    train_started = time.time()
    result = trainer.train(resume_from_checkpoint=resolve_checkpoint(args))
    train_wall = time.time() - train_started
    outputs = save_outputs(args, trainer, tokenizer, style, spec, resolved, result, train_wall, generator)
    if args.merge:
        merged = merge_adapter(args, out)
        outputs["merged"] = str(merged) if merged else None
    tracking.finish_training_run(args, outputs)                 # totals, --wandb_log_model artifact, wandb_run.json
    engine = outputs["timing"]["engine"]
    if process_rank() == 0:
        print(f"adapter written to {out} in {(time.time() - started) / 60:.1f} min: {result.global_step} steps, "
              f"final train loss {result.training_loss:.4f}, {outputs['timing']['train_tokens_per_s']:.0f} tokens/s "
              f"({engine['distributed_type']}, {engine['world_size']} rank(s))")
    return outputs


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def run(argv=None):
    """Parse, check, audit the supervision, then train (or dry-run, or run the DPO stage). Returns what the
    stage returns (outputs / the resolved configuration); raises a ForecasterError on a user mistake."""
    started = time.time()
    args = parse_args(argv)
    args.report_to, report_note = tracking.resolve_report_to(args.report_to)   # auto -> tensorboard[,wandb]
    check_args(validate_args(args))
    if report_note and tracking.is_main_process():
        print(f"note: {report_note}")
    if args.dpo:
        return run_dpo(args)
    spec = resolve_model(args.base_model, args.prompt_style)
    style = get_style(spec.prompt_style)
    dtype = args.dtype or default_dtype()
    train_rows, val_rows, note = prepare_data(args)
    if note:
        print(f"note: {note}")
    if args.evaluation_strategy != "no" and not val_rows:
        raise TrainError("no validation examples: pass a dataset with a validation split, --validation_weeks N, "
                         "or --evaluation_strategy no")
    if args.dry_run:
        tokenizer, tokenizer_name = dry_run_tokenizer(spec, args.cache_dir)
    else:
        tokenizer, tokenizer_name = load_tokenizer(spec, args.cache_dir), spec.name
    train_feats, val_feats, audit = build_supervision(args, tokenizer, style, train_rows, val_rows, tokenizer_name)
    print(format_audit(audit))
    if not train_feats:
        raise TrainError(f"every training example was dropped (see the audit); raise --max_length "
                         f"({args.max_length})")
    if args.evaluation_strategy != "no" and not val_feats:
        raise TrainError(f"every validation example was dropped (see the audit); raise --max_length "
                         f"({args.max_length}) or pass --evaluation_strategy no")
    resolved = resolve(args, spec, style, dtype)
    if args.dry_run:
        return dry_run(args, spec, resolved)
    return train(args, spec, style, dtype, train_feats, val_feats, val_rows, audit, resolved, started)


@cli
def main(argv=None):
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
